"""Layer 8 (beside studies), deploy: a trained model put where it is used.

:mod:`~ccad.deploy.export` (``ccad export``: the bundle), :mod:`~ccad.deploy.web` (``ccad serve``: web
tool and REST API), :mod:`~ccad.deploy.scale` (``ccad predict --engine ray``). Serving, the listener and Ray
scoring are adapters over :class:`ccad.screening.Screener` and never import TensorFlow. May import
:mod:`ccad.training` and below; never :mod:`ccad.studies`.
"""
