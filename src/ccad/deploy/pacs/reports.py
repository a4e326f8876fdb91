"""The reports for the hospital record beside the DICOM results, where the settings name them: the FHIR report
(``--fhir``) and the HL7 message (``--hl7``), for an image (:mod:`.worker`) or a study (:mod:`.studies`)."""

from __future__ import annotations

import logging
from typing import Callable

log = logging.getLogger("ccad.dicom")


def put_reports(settings, stats, subject: str, makers: dict[str, Callable[[], None]]) -> None:
    """Run each maker (``{"fhir": ..., "hl7": ...}``) whose setting is on. One that fails is counted
    (``fhir_failures``, ``hl7_failures``) and logged under ``subject`` (``image KEY``, ``study KEY``), and the
    others still run: the DICOM results are in the outbox already, so the image (or study) is not lost."""
    for name, make in makers.items():
        if not getattr(settings, name):
            continue
        try:
            make()
        except Exception as e:
            stats.add(f"{name}_failures")
            log.error("%s: its %s report could not be made (%s)", subject, name.upper(), type(e).__name__)
