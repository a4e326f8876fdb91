"""Layer 8 (beside studies and bundles), deploy: the runtime adapters, where a bundle is used.

:mod:`~ccad.deploy.web` (``ccad serve``: web tool and REST API), :mod:`~ccad.deploy.pacs` (``ccad dicom
listen|pull``: DICOM, DICOMweb, FHIR), :mod:`~ccad.deploy.scale` (``ccad predict --engine ray``),
:mod:`~ccad.deploy.live_metrics` (what a running server exposes), :mod:`~ccad.deploy.logs`,
:mod:`~ccad.deploy.http`. All are adapters over :class:`ccad.screening.ScreeningService` (Ray's tasks over the
screener's reader and steps) and never import TensorFlow. Making a bundle is :mod:`ccad.bundles`. May import
:mod:`ccad.training` and below; never :mod:`ccad.studies` or :mod:`ccad.bundles`.
"""
