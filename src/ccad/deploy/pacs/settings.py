"""The DICOM listener's settings (``ccad dicom listen`` and ``ccad dicom pull``): where results go, and one typed
class checked at start rather than on the first image."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from pathlib import Path

from ccad.deploy.live_metrics import (
    check_drift_window,
    drift_window_option,
    result_log_option,
    validated_of,
    validated_option,
)
from ccad.deploy.pacs.dicomweb import PREFIX as WEB_PREFIX
from ccad.deploy.pacs.dicomweb import WebDestination
from ccad.errors import ConfigError
from ccad.options import option


@dataclass(frozen=True)
class Destination:
    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "Destination | WebDestination":
        """``AET@HOST:PORT``, or a DICOMweb base URL ``dicomweb+https://HOST/PATH``."""
        if text.startswith(WEB_PREFIX):
            return WebDestination.parse(text)
        try:
            ae_title, address = text.split("@", 1)
            host, port = address.rsplit(":", 1)
            destination = cls(ae_title, host, int(port))
        except ValueError:
            raise ConfigError(f"`send_to` must be AET@HOST:PORT, got {text!r}") from None
        if not 0 < len(ae_title) <= 16 or not 0 < destination.port < 65536:
            raise ConfigError(f"`send_to` {text!r}: the AE title takes 1-16 characters and the port 1-65535")
        return destination


@dataclass
class ListenerSettings:
    """The model, where results go and the spool; every other setting by its name. The fields with a help text
    are ``ccad dicom listen``'s flags (``dicom pull`` takes those of them that a pull needs)."""

    model: Path
    send_to: "Destination | WebDestination"
    spool: Path = Path("ccad-spool")
    _: KW_ONLY
    ae_title: str = option("CCAD", "the listener's AE title")
    host: str = option("127.0.0.1", "the address it listens on (and serves metrics on)")
    port: int = option(11112, "the DICOM port")
    int8: bool = option(False, "score with the bundle's INT8 model")
    workers: int = option(1, "scoring threads")
    queue_size: int = option(
        32,
        "images waiting to be scored before C-STORE is answered 0xA700 (out of resources), or before pull waits",
    )
    retry_max_s: float = option(60.0, "longest wait between delivery attempts")
    #: Sender threads, each with its own association to a DIMSE ``send_to`` (DICOMweb and FHIR: one).
    send_associations: int = option(
        2, "associations results are sent over at once to a C-STORE --send-to (a DICOMweb one takes one)"
    )
    #: Build the results in a separate process (False: in the worker threads).
    result_process: bool = True
    score_timeout_s: float = option(
        120.0,
        "seconds reading and scoring one image may take; past it the image is set aside in the spool's failed/ "
        "folder with the reason, and the next is scored",
        flag="--score-timeout",
        metavar="S",
    )
    threads: int = 2
    max_pixels: int | None = None
    max_dataset_bytes: int = option(
        256 * 2**20,
        "refuse (0xA700) a data set larger than this as received; a deflated one is also refused when it would "
        "inflate past the pixel limit",
        flag="--max-dataset-mb",
        unit=2**20,
    )
    metrics_port: int | None = option(None, "serve Prometheus metrics on this port of --host")
    result_log: Path | None = result_log_option()
    drift_window: int = drift_window_option()
    dicomweb_auth: Path | None = option(
        None,
        "DICOMweb credentials: 'bearer TOKEN' or 'USER:PASSWORD' on the first line (or CCAD_DICOMWEB_TOKEN / "
        "CCAD_DICOMWEB_USER and _PASSWORD)",
        metavar="FILE",
    )
    ca_file: Path | None = option(None, "certificate authority for https (TLS is always verified)", metavar="PEM")
    #: A FHIR DiagnosticReport an image or study, and its worklist Task (:mod:`.fhir`): PUT to this base URL (with
    #: the spool's retries), or written into this folder; None: none.
    fhir: str | None = option(
        None,
        "a FHIR R4 DiagnosticReport an image (or study) and a Task with its reading priority (stat when COVID-19 "
        "is suspected): PUT to this FHIR base URL (token from CCAD_FHIR_TOKEN), or written into this folder",
        metavar="URL|DIR",
    )
    hl7: str | None = option(
        None,
        "send an HL7 v2.5.1 ORU^R01 an image to the RIS's MLLP listener at HOST:PORT (the accession number, the "
        "result, p(COVID), the threshold, the model; priority S when COVID-19 is suspected), retried until "
        "acknowledged AA",
        metavar="HOST:PORT",
    )
    #: One result per study (the default): its images gathered until none has arrived for this long.
    study_window_s: float = option(
        30.0,
        "answer per study: gather a study's images until none has arrived for this many seconds, then send one "
        "study-level SR (and FHIR report and HL7 message) referencing every image (default: 30)",
        flag="--study-window",
        metavar="S",
    )
    #: A result per image instead: an SR, a FHIR report and an HL7 message each.
    per_image: bool = option(False, "answer per image (an SR, FHIR report and HL7 message an image), not per study")
    #: How long an answered study's outcomes stay in the spool (``studies/``) for a late image to re-open it.
    study_keep_days: float = option(
        7.0,
        "keep an answered study's outcomes and copied attributes in the spool this long, so that a late image "
        "re-opens it (default: 7)",
        metavar="DAYS",
    )
    #: A silent go-live: every image scored and logged (the result log, the metrics), nothing sent anywhere.
    shadow: bool = option(False, "score and log every image, send nothing (no DICOM, HL7 or FHIR result)")
    #: The readers' final reports (HL7 v2 ORU^R01 over MLLP) on this port: the live measures in /metrics.
    findings_port: int | None = option(
        None,
        "take the readers' final reports (HL7 v2 ORU^R01 over MLLP, from the RIS) on this port: each study's "
        "finding joined with ccad's answer gives the live sensitivity, specificity and PPV in the metrics",
        metavar="PORT",
    )
    validated_sensitivity: float | None = validated_option("sensitivity")
    validated_specificity: float | None = validated_option("specificity")
    fhir_patient_system: str | None = option(
        None,
        "name the patient in the FHIR report by its Patient ID under this identifier system (default: no patient "
        "reference)",
        metavar="URI",
    )

    def check(self) -> "ListenerSettings":
        if not 0 < len(self.ae_title) <= 16:
            raise ConfigError(f"`ae_title` takes 1-16 characters, got {self.ae_title!r}")
        if self.workers < 1 or self.queue_size < 1 or self.send_associations < 1 or self.retry_max_s <= 0:
            raise ConfigError(
                "`workers`, `queue_size` and `send_associations` must be at least 1 and `retry_max_s` positive"
            )
        if self.max_dataset_bytes < 2**20:
            raise ConfigError("`max_dataset_bytes` must be at least 1 MB")
        if not 0 <= self.study_window_s <= 86400:
            raise ConfigError(f"`study_window_s` must be 0 to 86400 seconds, got {self.study_window_s}")
        if not 0 < self.study_keep_days <= 3650:
            raise ConfigError(f"`study_keep_days` must be over 0 and at most 3650, got {self.study_keep_days}")
        if self.score_timeout_s <= 0:
            raise ConfigError(f"`score_timeout_s` must be positive, got {self.score_timeout_s}")
        if not 0 <= self.port < 65536:  # 0: any free port
            raise ConfigError(f"`port` must be a port number, got {self.port}")
        if self.metrics_port is not None and not 0 < self.metrics_port < 65536:
            raise ConfigError(f"`metrics_port` must be a port number, got {self.metrics_port}")
        if self.findings_port is not None and not 0 <= self.findings_port < 65536:  # 0: any free port (logged)
            raise ConfigError(f"`findings_port` must be a port number, got {self.findings_port}")
        validated_of(self)
        check_drift_window(self.drift_window)
        if self.hl7:
            from ccad.deploy.pacs.oru import Hl7Destination

            Hl7Destination.parse(self.hl7)
        if self.fhir and "://" in self.fhir:  # a URL (a mistyped scheme must not become a folder)
            from ccad.deploy.pacs.dicomweb import check_url

            check_url(self.fhir, f"`fhir` {self.fhir}")
        return self
