"""``ccad dicom listen``: a DICOM Storage SCP (pynetdicom) that scores chest X-rays and sends the results
back (C-STORE or STOW-RS) into the same study, in three rooms with the spool as the hand-off:

1. **Received** (:mod:`.scp`): each C-STORE admitted, written to the spool's inbox atomically and queued for
   scoring before success is answered; refused with a DICOM failure status otherwise.
2. **Scored** (:mod:`.worker`): worker threads score through the
   :class:`~ccad.screening.service.ScreeningService` and write the structured report and heatmap capture (and
   the FHIR report) into the outbox; an image that cannot be scored gets a report that says why, or stays in
   ``spool/failed/`` with its reason.
3. **Delivered** (:mod:`.delivery`): sender threads send the outbox to ``--send-to`` (and ``--fhir``), with
   retries; each file leaves the spool only once the destination has accepted it.

A restarted listener picks up both folders. :class:`Listener` builds the three, the monitor and its metrics
endpoint, and starts and stops them. Logs name images by a short hash of their SOP Instance UID: no patient or
study field is ever logged.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ccad._meta import __version__
from ccad.deploy.pacs.delivery import Delivery, Lane
from ccad.deploy.pacs.dicomweb import LOOPBACK
from ccad.deploy.pacs.readers import FindingsReceiver
from ccad.deploy.pacs.results import Algorithm
from ccad.deploy.pacs.scp import StoreScp, instance_key, transfer_syntaxes
from ccad.deploy.pacs.settings import Destination, ListenerSettings
from ccad.deploy.pacs.spool import Spool
from ccad.deploy.pacs.studies import StudyGatherer
from ccad.deploy.pacs.worker import MAX_ABANDONED, ScoringWorker
from ccad.screening import ScreeningService

__all__ = ["Destination", "Lane", "Listener", "ListenerSettings", "Stats", "instance_key", "transfer_syntaxes"]

log = logging.getLogger("ccad.dicom")


@dataclass
class Stats:
    received: int = 0
    refused_busy: int = 0
    refused_malformed: int = 0
    refused_too_large: int = 0
    scored: int = 0
    not_scored: int = 0
    failed: int = 0
    refused_incomplete: int = 0
    sent: int = 0
    send_failures: int = 0
    fhir_failures: int = 0
    hl7_failures: int = 0
    studies_answered: int = 0
    findings_joined: int = 0
    findings_unmatched: int = 0
    findings_left_out: int = 0
    findings_refused: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    #: ``ccad_dicom_events_total{event}``, the same counts for Prometheus (set by the listener's start).
    counter: Any = field(default=None, repr=False)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)
        if self.counter is not None:
            self.counter.labels(name).inc(n)


class Listener:
    """The SCP, its scoring workers and its senders over one spool. The constructor stores (a ``screener`` may
    be given, else :meth:`start` loads ``settings.model``); :meth:`start` returns once it listens; :meth:`stop`
    ends it (what is in the spool stays there for the next start)."""

    def __init__(self, settings: ListenerSettings, screener=None):
        self.settings, self.screener = settings, screener
        self.spool = Spool(settings.spool)
        self.stats = Stats()
        #: Received images waiting to be scored: the hand-off from the SCP to the workers.
        self.queue: queue.Queue[Path] = queue.Queue(maxsize=settings.queue_size)
        self._stop = threading.Event()
        self.scp = StoreScp(settings, self.spool, self.queue, self.stats)
        self.delivery = Delivery(settings, self.spool, self.stats, self._stop)
        self.worker: ScoringWorker | None = None
        self.service = self.monitor = self.algorithm = None  # made by start, with the screener
        self.studies: StudyGatherer | None = None  # per study (not per_image): answers each study once
        self.findings: FindingsReceiver | None = None  # with findings_port: the readers' reports, live
        #: Called with an image's key once it has its results (or is set aside): ``ccad dicom pull`` records it.
        self.on_done = None
        self._spool_lock: int | None = None  # the spool's lock, held from start to stop
        self._metrics_server = None
        self._resumer: threading.Thread | None = None

    def start(self, scp: bool = True) -> "Listener":
        """Start scoring and sending, and (``scp``) the Storage SCP; ``ccad dicom pull`` feeds :meth:`take`
        instead."""
        self.settings.check()  # before anything is created: settings that cannot work are refused at start
        self.spool.create()
        self._spool_lock = self.spool.lock()  # one listener or pull a spool
        try:
            return self._start(scp)
        except BaseException:  # a port in use, a model that does not load: nothing is left held
            self.stop()
            raise

    def _start(self, scp: bool) -> "Listener":
        self._load_screener()
        self._start_monitoring()
        # decoding threads for the workers, and room for MAX_ABANDONED timed-out decodes still running
        self.service = ScreeningService(self.screener, self.settings.workers + MAX_ABANDONED, wait_s=0.0).start()
        self.worker = ScoringWorker(
            self.settings,
            self.spool,
            self.queue,
            self.stats,
            self.service,
            self.monitor,
            self.algorithm,
            self._stop,
            self._done,
            self.delivery.wake,
        )
        self.worker.start()
        if not self.settings.per_image and not self.settings.shadow:
            self.studies = StudyGatherer(
                self.settings,
                self.spool,
                self.worker.studies,
                self.algorithm,
                self.stats,
                self._stop,
                self.delivery.wake,
            ).start()
        if scp:
            self.scp.start()
        if not self.settings.shadow:  # a silent go-live sends nothing, not even what an earlier run left
            self.delivery.start()
        self._resumer = threading.Thread(target=self._resume, name="ccad-dicom-resume", daemon=True)
        self._resumer.start()
        self._log_start(scp)
        return self

    def stop(self) -> None:
        self._stop.set()
        self.scp.stop()
        self.delivery.stop()
        for part in (self.worker, self.studies):
            if part is not None:
                part.stop()
        if self._resumer is not None:
            self._resumer.join(timeout=30)
        if self.service is not None:
            self.service.close()
        if self.findings is not None:
            self.findings.stop()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        if self._spool_lock is not None:
            os.close(self._spool_lock)
            self._spool_lock = None

    def serve_forever(self) -> None:
        """Run until interrupted or sent SIGTERM (what is in the spool stays for the next start)."""
        import signal

        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        self.start()
        try:
            while not self._stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            log.info("stopping: %s", self.stats)
        finally:
            self.stop()

    def admission(self, data: bytes, size: int | None = None):
        """:meth:`StoreScp.admission <.scp.StoreScp.admission>`: (status, data set) of a data set as received."""
        return self.scp.admission(data, size)

    def take(self, key: str, data: bytes, timeout_s: float | None = None) -> Path | None:
        """:meth:`StoreScp.take <.scp.StoreScp.take>`: one instance fetched by ``ccad dicom pull``."""
        return self.scp.take(key, data, timeout_s)

    def idle(self) -> bool:
        """Nothing waits to be scored or sent."""
        delivery = self.delivery
        return (  # each stage before the next: what moves on while one is looked at is seen in the next
            self.queue.unfinished_tasks == 0
            and not self.spool.pending_inbox()
            and not (self.studies is not None and self.studies.pending())
            and (self.settings.shadow or not self.spool.pending_outbox())  # shadow: nothing is sent
            # reports nobody will send are not waited for
            and not (delivery.fhir is not None and self.spool.pending_fhir())
            and not (delivery.hl7 is not None and self.spool.pending_hl7())
        )

    def flush_studies(self) -> int:
        """Answer every study that waits, without waiting for its window (``ccad dicom pull`` at its end)."""
        return self.studies.flush() if self.studies is not None else 0

    # -- inside -----------------------------------------------------------------------------------
    def _load_screener(self) -> None:
        """The screener (unless one was given) and the algorithm the results name."""
        if self.screener is None:
            from ccad.screening import Intake, Screener, one_blas_thread

            one_blas_thread()
            self.screener = Screener.load(
                self.settings.model,
                variant="int8" if self.settings.int8 else "float",
                threads=self.settings.threads,
                intake=Intake(max_pixels=self.settings.max_pixels),
            )
        card = self.screener.card
        self.algorithm = Algorithm(
            "ccad",
            (card.versions or {}).get("ccad") or __version__,
            card.sha256[card.models[self.screener.variant]],
            self.screener.variant,
            self.screener.decision.describe(self.screener.positive_class),
            self.screener.positive_class,
            self.screener.decision.threshold,
        )

    def _start_monitoring(self) -> None:
        """The monitor (metrics, drift, result log) and, with ``metrics_port``, its HTTP endpoint."""
        from prometheus_client import Counter, Gauge, start_http_server

        from ccad.deploy.live_metrics import LiveMetrics, validated_of

        self.monitor = LiveMetrics.for_screener(
            self.screener, "dicom", self.settings.result_log, window=self.settings.drift_window
        )
        registry = self.monitor.registry
        self.stats.counter = Counter(
            "ccad_dicom_events",
            "C-STOREs received or refused, images scored, results sent",
            ("event",),
            registry=registry,
        )
        Gauge("ccad_queue_depth", "Received images waiting to be scored", registry=registry).set_function(
            self.queue.qsize
        )
        self.monitor.validated_levels(**validated_of(self.settings))
        if self.settings.findings_port is not None:
            self._start_findings()
        if self.settings.metrics_port is not None:
            self._metrics_server, _ = start_http_server(
                self.settings.metrics_port, self.settings.host, registry=registry
            )
            if self.settings.host not in LOOPBACK:
                log.warning(
                    "metrics on %s:%d answer anyone who can reach that address, without a key (counts, scores "
                    "and drift, no patient data); to restrict them, listen on 127.0.0.1 and scrape through a proxy",
                    self.settings.host,
                    self.settings.metrics_port,
                )

    def _start_findings(self) -> None:
        """The readers' findings port (:mod:`.readers`), said in the log with the port it got."""
        host = self.settings.host
        self.findings = FindingsReceiver(host, self.settings.findings_port, self.monitor, self.stats).start()
        log.info("readers' final reports (HL7 ORU^R01 over MLLP) taken on %s:%d", host, self.findings.port)
        if host not in LOOPBACK:
            log.warning(
                "the findings port on %s:%d takes reports from anyone who can reach it: forged ones would move the "
                "live measures; let only the RIS reach it (a firewall rule)",
                host,
                self.findings.port,
            )

    def _log_start(self, scp: bool) -> None:
        destination = self.settings.send_to
        where = (
            f"{destination.ae_title}@{destination.host}:{destination.port}"
            if isinstance(destination, Destination)
            else "a DICOMweb service (STOW-RS)"
        )
        if self.settings.shadow:
            where = "nowhere (shadow mode: scored and logged, nothing sent)"
        log.info(
            "%s; results to %s; model %s (%s); spool %s",
            f"listening as {self.settings.ae_title} on {self.settings.host}:{self.settings.port}" if scp else "pulling",
            where,
            self.settings.model,
            self.screener.variant,
            self.settings.spool,
        )

    def _resume(self) -> None:
        """Queue what a previous run left in the inbox (waiting for room, as a sender would)."""
        for path in self.spool.pending_inbox():
            while not self._stop.is_set():
                try:
                    self.queue.put(path, timeout=0.5)
                    break
                except queue.Full:
                    continue
        self.delivery.wake()

    def _done(self, key: str) -> None:
        if self.on_done is not None:
            try:
                self.on_done(key)
            except Exception as e:  # e.g. a full disk under pulled.txt: the image is re-done on the next pull
                log.error("image %s: could not record it as done (%s)", key, type(e).__name__)
