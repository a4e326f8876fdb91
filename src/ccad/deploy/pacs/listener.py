"""``ccad dicom listen``: a DICOM Storage SCP (pynetdicom) that scores chest X-rays and sends the results
back (C-STORE) into the same study.

The path of an image:

1. **Received.** The C-STORE handler decodes the data set (a malformed one is answered 0xC210, "cannot
   understand"; one without a valid SOP Class, SOP Instance, Study or Series Instance UID 0xA900), writes
   the file to the spool's inbox atomically and answers success at once. When the
   scoring queue is full it answers 0xA700 ("out of resources") and keeps nothing: the sender keeps the
   image and may retry.
2. **Scored** by a bounded pool of worker threads with the bundle's ONNX model, through the same
   preprocessing, decision rule, out-of-distribution guard and severity head as ``ccad predict``. An
   image that is not a frontal chest radiograph (:func:`.results.not_scored_reason`), or whose pixels
   cannot be decoded, is not scored; its report says why. Every image answered success ends as a result
   in the outbox, or, when no result at all can be made, in the spool's ``failed/`` folder with its reason:
   none is dropped. The structured report and the capture are built (highdicom, pure Python: half of an
   image's work) in a separate process, so that the GIL they hold does not stall receiving, scoring and
   sending; if that process dies they are built in the worker thread instead.
3. **Delivered.** The structured report and the heatmap capture are written to the outbox, then sent to
   ``--send-to`` by ``send_associations`` sender threads (the *lanes*), each over its own association kept
   open while results keep coming (released after a second with nothing to send, or when the destination
   closes it). An image's results always take the same lane, in order; a PACS stores each instance in
   tens of milliseconds (its database commits), so lanes in parallel keep it busy. Sockets are opened
   with ``TCP_NODELAY``: a C-STORE is a small command PDU and then the data, which Nagle's algorithm would
   otherwise hold back for the peer's delayed ACK (40 ms on Linux). A destination that is down or
   refuses them is retried with
   exponential backoff (1 s doubling to ``retry_max_s``); each file leaves the spool only once the
   destination has accepted it. A restarted listener picks up both folders.

Logs name images by a short hash of their SOP Instance UID: no patient or study field is ever logged.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import queue
import socket
import threading
import time
import zlib
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any

from ccad import __version__
from ccad.deploy.pacs.dicomweb import PREFIX as WEB_PREFIX
from ccad.deploy.pacs.dicomweb import WebDestination
from ccad.deploy.pacs.results import (
    ACCEPTED_SOP_CLASSES,
    Algorithm,
    heatmap_capture,
    missing_identifiers,
    not_scored_reason,
    result_source,
    structured_report,
)
from ccad.deploy.pacs.spool import Spool
from ccad.errors import ConfigError
from ccad.io.images import MAX_PIXELS as DEFAULT_MAX_PIXELS

log = logging.getLogger("ccad.dicom")

SUCCESS, OUT_OF_RESOURCES, DOES_NOT_MATCH, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xA900, 0xC210
#: The largest P-DATA PDU the listener accepts (it advertises this; pynetdicom holds one PDU in memory).
MAX_PDU_BYTES = 256 * 2**10
#: C-STORE statuses after which the destination has the object (success and the warnings).
STORED = {0x0000, 0xB000, 0xB006, 0xB007}
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
VERIFICATION = "1.2.840.10008.1.1"


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
    """The model, where results go and the spool; every other setting by its name."""

    model: Path
    send_to: "Destination | WebDestination"
    spool: Path = Path("ccad-spool")
    _: KW_ONLY
    ae_title: str = "CCAD"
    host: str = "127.0.0.1"
    port: int = 11112
    int8: bool = False
    workers: int = 1
    queue_size: int = 32
    retry_max_s: float = 60.0
    #: Sender threads, each with its own association to a DIMSE ``send_to`` (DICOMweb and FHIR: one).
    send_associations: int = 2
    #: Build the results in a separate process (False: in the worker threads).
    result_process: bool = True
    #: How long reading, decoding and scoring one image may take; past it the image is set aside in
    #: ``spool/failed/`` with the reason and the next is scored.
    score_timeout_s: float = 120.0
    threads: int = 2
    max_pixels: int | None = None
    max_dataset_bytes: int = 256 * 2**20
    #: Prometheus metrics on this port of ``host`` (None: none), a result log, the drift window.
    metrics_port: int | None = None
    result_log: Path | None = None
    drift_window: int = 200
    #: DICOMweb destinations: a credentials file and a certificate authority (:mod:`.dicomweb`).
    dicomweb_auth: Path | None = None
    ca_file: Path | None = None
    #: A FHIR DiagnosticReport an image (:mod:`.fhir`): PUT to this base URL (with the spool's retries), or
    #: written into this folder; None: none. ``fhir_patient_system``: name the patient by this identifier system.
    fhir: str | None = None
    fhir_patient_system: str | None = None

    def check(self) -> "ListenerSettings":
        if not 0 < len(self.ae_title) <= 16:
            raise ConfigError(f"`ae_title` takes 1-16 characters, got {self.ae_title!r}")
        if self.workers < 1 or self.queue_size < 1 or self.send_associations < 1 or self.retry_max_s <= 0:
            raise ConfigError(
                "`workers`, `queue_size` and `send_associations` must be at least 1 and `retry_max_s` positive"
            )
        if self.max_dataset_bytes < 2**20:
            raise ConfigError("`max_dataset_bytes` must be at least 1 MB")
        if self.score_timeout_s <= 0:
            raise ConfigError(f"`score_timeout_s` must be positive, got {self.score_timeout_s}")
        if self.metrics_port is not None and not 0 < self.metrics_port < 65536:
            raise ConfigError(f"`metrics_port` must be a port number, got {self.metrics_port}")
        if self.drift_window < 20:
            raise ConfigError(f"`drift_window` must be at least 20 images, got {self.drift_window}")
        if self.fhir and "://" in self.fhir:  # a URL (a mistyped scheme must not become a folder)
            from ccad.deploy.pacs.dicomweb import check_url

            check_url(self.fhir, f"`fhir` {self.fhir}")
        return self


def transfer_syntaxes() -> list[str]:
    """The transfer syntaxes the listener accepts: those of :data:`ccad.io.dicom.SYNTAXES` that an installed
    decoder decodes (a syntax it cannot decode is not negotiated: the modality falls back to another)."""
    from ccad.io.dicom import supported_syntaxes

    return supported_syntaxes()


def _reason(error: Exception) -> str:
    """An intake error's reason without the name it was given ("the data set: ...")."""
    return str(error).split(": ", 1)[-1]


def instance_key(sop_instance_uid: str) -> str:
    """How logs and spool files name an image: a hash of its UID, which says nothing of the patient."""
    return hashlib.sha256(sop_instance_uid.encode()).hexdigest()[:16]


#: Timed-out scoring threads that may run on (each burns a core until its work ends).
MAX_ABANDONED = 2


class ScoringTimeout(Exception):
    """An image whose reading and scoring passed ``score_timeout_s``."""


@dataclass
class _Retry:
    attempts: int = 0
    due: float = 0.0


@dataclass
class Lane:
    """One sender thread's share of the outbox: lane ``index`` of ``count`` sends the results of the images
    whose key falls to it (both objects of an image, in order), and lane 0 the FHIR reports; it holds its own
    association and retry times."""

    index: int = 0
    count: int = 1
    wake: threading.Event = field(default_factory=threading.Event)
    retries: dict[Path, _Retry] = field(default_factory=dict)
    assoc: Any = None

    def owns(self, path: Path) -> bool:
        if path.suffix == ".json":
            return self.index == 0
        return zlib.crc32(Spool.image_key(path).encode()) % self.count == self.index


def no_delay(event) -> None:
    """pynetdicom's ``EVT_CONN_OPEN`` handler: send each PDU at once (``TCP_NODELAY``), as DCMTK does."""
    try:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError):  # not a TCP socket (or already closed): nothing to tune
        pass


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
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    #: ``ccad_dicom_events_total{event}``, the same counts for Prometheus (set by the listener's start).
    counter: Any = field(default=None, repr=False)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)
        if self.counter is not None:
            self.counter.labels(name).inc(n)


def _builder_start(parent: int) -> None:
    """The result process's start: it dies with the listener (``parent``), even one killed with SIGKILL, and
    its log records and warnings go through the same filter as the listener's."""
    from ccad.deploy.logs import configure_logging

    die_with_parent(parent)
    configure_logging(logging.WARNING)
    import highdicom  # noqa: F401  (imported once, before the first image)


def die_with_parent(parent: int) -> None:
    """Have the kernel kill this process when the thread that started it ends (Linux ``PR_SET_PDEATHSIG``; the
    listener starts it from the thread that calls :meth:`Listener.start`): a listener killed with SIGKILL
    leaves no result process behind, and with it goes multiprocessing's resource tracker, which waits for its
    last user. When the parent is already gone, exit."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _portable(prediction):
    """``prediction`` with only what a result needs (no pooled features, no model-input pictures): what is
    sent to the result process."""
    if prediction is None:
        return None
    from dataclasses import replace

    from ccad.screening.records import Pictures

    pictures = prediction.pictures
    if pictures is not None:
        pictures = Pictures(None, None, pictures.original, pictures.original_heatmap, pictures.lung_outline)
    return replace(prediction, pictures=pictures, pooled=None, raw_probabilities=None)


def result_objects(key: str, source, algorithm: Algorithm, prediction, reason: str | None) -> list:
    """The SR (and, for a scored image, the capture) of ``source`` (:func:`.results.result_source`); when they
    cannot be built, an SR saying so."""
    try:
        objects = [structured_report(source, algorithm, prediction, reason)]
        if prediction is not None:
            objects.append(heatmap_capture(source, algorithm, prediction))
        return objects
    except Exception as e:
        log.warning(
            "image %s: its result could not be built (%s); sending a report that says so", key, type(e).__name__
        )
        return [
            structured_report(
                source, algorithm, None, f"scored, but the result could not be built ({type(e).__name__})"
            )
        ]


def build_results(spool: Path, key: str, source, algorithm: Algorithm, prediction, reason: str | None) -> list[Path]:
    """Build the results of one image and write them into the outbox of ``spool`` (in the result process)."""
    return Spool(spool).put_results(key, result_objects(key, source, algorithm, prediction, reason))


class Listener:
    """The SCP, its scoring pool and its sender. :meth:`start` returns once it listens; :meth:`stop`
    ends it (what is in the spool stays there for the next start)."""

    def __init__(self, settings: ListenerSettings, screener=None):
        self.settings = settings
        self.spool = Spool(settings.spool)
        self.screener = screener
        self.stats = Stats()
        self._queue: queue.Queue[Path] = queue.Queue(maxsize=settings.queue_size)
        self._admit = threading.Lock()
        self._stop = threading.Event()
        self._lanes: list[Lane] = []  # the sender threads' shares of the outbox (made by start)
        self._threads: list[threading.Thread] = []
        self._server = None
        self._builder = None  # the result-building process pool (started by start)
        self._web = self._fhir = None  # the DICOMweb client and the FHIR poster, when configured
        self._spool_lock: int | None = None  # the spool's lock, held from start to stop
        self._abandoned: list[threading.Thread] = []  # scoring threads past their deadline, still running
        #: Called with an image's key once it has its results (or is set aside): ``ccad dicom pull`` records it.
        self.on_done = None

    def start(self, scp: bool = True) -> "Listener":
        """Start scoring and sending, and (``scp``) the Storage SCP; ``ccad dicom pull`` feeds
        :meth:`take` instead."""
        self.settings.check()  # before anything is created: settings that cannot work are refused at start
        self.spool.create()
        self._spool_lock = self.spool.lock()  # one listener or pull a spool
        try:
            return self._start(scp)
        except BaseException:  # a port in use, a model that does not load: nothing is left held
            self.stop()
            raise

    def _start(self, scp: bool) -> "Listener":
        from pynetdicom import AE, _config, evt

        logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # its INFO lines can carry identifiers
        _config.STORE_RECV_CHUNKED_DATASET = True  # received data sets go to a temporary file, not memory
        self._load_screener()
        self._start_monitoring()
        self._start_builder()
        ae = AE(ae_title=self.settings.ae_title)
        syntaxes = transfer_syntaxes()
        for sop_class in ACCEPTED_SOP_CLASSES:
            ae.add_supported_context(sop_class, syntaxes)
        ae.add_supported_context(VERIFICATION)  # C-ECHO: pynetdicom answers it (0x0000)
        ae.maximum_pdu_size = MAX_PDU_BYTES  # each PDU is held whole while it arrives: never unbounded
        self._ae = ae
        if scp:
            self._server = ae.start_server(
                (self.settings.host, self.settings.port),
                block=False,
                evt_handlers=[(evt.EVT_C_STORE, self._on_store), (evt.EVT_CONN_OPEN, no_delay)],
            )
        self._connect_outputs()
        for i in range(self.settings.workers):
            self._spawn(self._work, f"ccad-dicom-worker-{i}")
        lanes = self.settings.send_associations if isinstance(self.settings.send_to, Destination) else 1
        self._lanes = [Lane(i, lanes) for i in range(lanes)]
        for lane in self._lanes:
            self._spawn(lambda lane=lane: self._send_loop(lane), f"ccad-dicom-sender-{lane.index}")
        self._spawn(self._resume, "ccad-dicom-resume")
        self._log_start(scp)
        return self

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

    def _start_builder(self) -> None:
        """The process that builds results (spawned, not forked: the listener has threads), warmed up so the
        first image does not wait for its imports."""
        if not self.settings.result_process:
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self._builder = ProcessPoolExecutor(
            1, multiprocessing.get_context("spawn"), initializer=_builder_start, initargs=(os.getpid(),)
        )
        self._builder.submit(int).result()

    def _connect_outputs(self) -> None:
        """The DICOMweb client (STOW-RS results) and the FHIR poster, where the settings name them."""
        if isinstance(self.settings.send_to, WebDestination):
            from ccad.deploy.pacs.dicomweb import client, session

            http = session(self.settings.dicomweb_auth, self.settings.ca_file, redirects=False)
            self._web = client(self.settings.send_to.url, http)
        if self.settings.fhir and self.settings.fhir.startswith(("http://", "https://")):
            from ccad.deploy.pacs.fhir import FhirPoster

            self._fhir = FhirPoster(self.settings.fhir, str(self.settings.ca_file) if self.settings.ca_file else None)

    def _log_start(self, scp: bool) -> None:
        destination = self.settings.send_to
        where = (
            f"{destination.ae_title}@{destination.host}:{destination.port}"
            if isinstance(destination, Destination)
            else "a DICOMweb service (STOW-RS)"
        )
        log.info(
            "%s; results to %s; model %s (%s); spool %s",
            f"listening as {self.settings.ae_title} on {self.settings.host}:{self.settings.port}" if scp else "pulling",
            where,
            self.settings.model,
            self.screener.variant,
            self.settings.spool,
        )

    def _start_monitoring(self) -> None:
        """The monitor (metrics, drift, result log) and, with ``metrics_port``, its HTTP endpoint."""
        from prometheus_client import Counter, Gauge, start_http_server

        from ccad.deploy.monitoring import Monitor

        self.monitor = Monitor.for_screener(
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
            self._queue.qsize
        )
        if self.settings.metrics_port is not None:
            self._metrics_server, _ = start_http_server(
                self.settings.metrics_port, self.settings.host, registry=registry
            )
            if self.settings.host not in ("127.0.0.1", "localhost", "::1"):
                log.warning(
                    "metrics on %s:%d answer anyone who can reach that address, without a key (counts, scores "
                    "and drift, no patient data); to restrict them, listen on 127.0.0.1 and scrape through a proxy",
                    self.settings.host,
                    self.settings.metrics_port,
                )

    def _spawn(self, target, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _wake_senders(self) -> None:
        for lane in self._lanes:
            lane.wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake_senders()
        if self._server is not None:
            self._server.shutdown()
        for thread in self._threads:
            thread.join(timeout=30)
        if getattr(self, "_metrics_server", None) is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        if self._builder is not None:
            self._builder.shutdown()
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

    # 1. received ------------------------------------------------------------------------------------

    def admission(self, data: bytes, size: int | None = None):
        """(status, header) of a data set as received: refused (0xA700) over ``max_dataset_bytes`` or when a
        deflated stream would inflate past the pixel limit (the bounded inflater), (0xC210) when it cannot be
        decoded, (0xA900) without a valid SOP Class, SOP Instance, Study or Series Instance UID; else SUCCESS and
        its header (no pixels). The listener's C-STORE handler and ``ccad dicom pull`` both admit through it."""
        from ccad.errors import ImageReadError, ImageTooLargeError
        from ccad.io.images import check_data_set

        size = len(data) if size is None else size
        if size > self.settings.max_dataset_bytes:
            self.stats.add("refused_too_large")
            log.warning(
                "refused a data set of %d MB, over the limit of %d MB: status 0xA700",
                size // 2**20,
                self.settings.max_dataset_bytes // 2**20,
            )
            return OUT_OF_RESOURCES, None
        try:
            check_data_set(data, "the data set", self.settings.max_pixels or DEFAULT_MAX_PIXELS)
        except ImageReadError as e:  # a decompression bomb, or a stream that does not inflate
            bomb = isinstance(e, ImageTooLargeError)
            self.stats.add("refused_too_large" if bomb else "refused_malformed")
            status = OUT_OF_RESOURCES if bomb else CANNOT_UNDERSTAND
            log.warning("refused a data set: %s: status 0x%04X", _reason(e), status)
            return status, None
        try:
            import pydicom

            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
            missing = missing_identifiers(ds)
        except Exception as e:  # pydicom raises many types for a malformed data set
            self.stats.add("refused_malformed")
            log.warning("refused a data set that cannot be decoded (%s): status 0xC210", type(e).__name__)
            return CANNOT_UNDERSTAND, None
        if missing:  # a result must name the study, series and instance it belongs to
            self.stats.add("refused_incomplete")
            log.warning("refused a data set without a valid %s (Type 1): status 0xA900", ", ".join(missing))
            return DOES_NOT_MATCH, None
        status = self._check_codestream(data)
        return (SUCCESS, ds) if status == SUCCESS else (status, None)

    def _check_codestream(self, data: bytes) -> int:
        """0xA700 for compressed pixel data whose codestream says more pixels than the header (a pixel bomb),
        0xC210 for one that does not match its header; checked on the codestream's own header, before any
        decoder allocates (:func:`ccad.io.dicom.check_codestream`)."""
        import pydicom

        from ccad.errors import ImageReadError, ImageTooLargeError
        from ccad.io.dicom import check_codestream

        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
            if "PixelData" not in ds or "Rows" not in ds:
                return SUCCESS  # not scored, and reported so; nothing is decoded
            check_codestream(ds, self.settings.max_pixels or DEFAULT_MAX_PIXELS)
        except ImageTooLargeError as e:
            self.stats.add("refused_too_large")
            log.warning("refused a data set: %s: status 0xA700", e)
            return OUT_OF_RESOURCES
        except ImageReadError as e:
            self.stats.add("refused_malformed")
            log.warning("refused a data set: %s: status 0xC210", e)
            return CANNOT_UNDERSTAND
        except Exception as e:  # pixel data whose structure pydicom cannot walk
            self.stats.add("refused_malformed")
            log.warning("refused a data set whose pixel data cannot be read (%s): status 0xC210", type(e).__name__)
            return CANNOT_UNDERSTAND
        return SUCCESS

    def _on_store(self, event) -> int:
        """Admit one C-STORE. pynetdicom has written the data set to a temporary file as it arrived
        (``STORE_RECV_CHUNKED_DATASET``: memory stays bounded whatever its size); :meth:`admission` checks it
        before anything decodes it."""
        try:
            received = Path(event.dataset_path)
            size = received.stat().st_size
            data = received.read_bytes() if size <= self.settings.max_dataset_bytes else b""
        except OSError as e:
            log.error("cannot read a received data set (%s): status 0xA700", e.strerror)
            return OUT_OF_RESOURCES
        status, ds = self.admission(data, size)
        if status != SUCCESS:
            return status
        key = instance_key(str(ds.SOPInstanceUID))
        with self._admit:
            if self._queue.full():
                self.stats.add("refused_busy")
                log.warning(
                    "image %s refused: the scoring queue is full (%d): status 0xA700", key, self.settings.queue_size
                )
                return OUT_OF_RESOURCES
            try:
                path = self.spool.receive(key, data)
            except OSError as e:
                log.error("image %s refused: cannot write the spool (%s): status 0xA700", key, e.strerror)
                return OUT_OF_RESOURCES
            self._queue.put_nowait(path)
        self.stats.add("received")
        log.info("image %s received", key)
        return SUCCESS

    def take(self, key: str, data: bytes, timeout_s: float | None = None) -> Path | None:
        """Admit, spool and queue one instance fetched by ``ccad dicom pull`` (blocking while the queue is full:
        what is pulled is bounded by ``queue_size``); None when :meth:`admission` refuses it."""
        status, _ = self.admission(data)
        if status != SUCCESS:
            return None
        path = self.spool.receive(key, data)
        self._queue.put(path, timeout=timeout_s)
        self.stats.add("received")
        return path

    def idle(self) -> bool:
        """Nothing waits to be scored or sent."""
        return (
            self._queue.unfinished_tasks == 0
            and not self.spool.pending_inbox()
            and not self.spool.pending_outbox()
            and not (self._fhir is not None and self.spool.pending_fhir())  # reports nobody will send: not waited for
        )

    def _resume(self) -> None:
        """Queue what a previous run left in the inbox (waiting for room, as a sender would)."""
        for path in self.spool.pending_inbox():
            while not self._stop.is_set():
                try:
                    self._queue.put(path, timeout=0.5)
                    break
                except queue.Full:
                    continue
        self._wake_senders()

    # 2. scored --------------------------------------------------------------------------------------

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                path = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                if path.exists():
                    self._process(path)
            finally:
                self._queue.task_done()

    def _process(self, path: Path) -> None:
        """Score one received image and store its results; whatever fails, the image either gets a result
        (a report of why it was not scored, at least) or stays in ``spool/failed/`` with its reason: also one
        whose reading and scoring passes ``score_timeout_s`` (:meth:`_score_in_time`)."""
        key = path.stem
        try:
            ds, prediction, reason = self._score_in_time(key, path.read_bytes())
            self._put_results(key, ds, prediction, reason)
            if self.settings.fhir:
                try:
                    self._fhir_report(key, ds, prediction, reason)
                except Exception as e:  # the DICOM results are in the outbox already: the image is not lost
                    self.stats.add("fhir_failures")
                    log.error("image %s: its FHIR report could not be made (%s)", key, type(e).__name__)
        except Exception as e:  # a bad image must never stop the listener, nor vanish
            self.stats.add("failed")
            why = str(e) if isinstance(e, ScoringTimeout) else f"no result could be made ({type(e).__name__})"
            try:
                self.spool.set_aside(path, why)
            except FileNotFoundError:  # queued twice (a resume): the other handling took it
                return
            log.error("image %s: %s; kept in the spool's failed folder", key, why)
            self._done(key)
            return
        path.unlink(missing_ok=True)
        self._done(key)
        if prediction is None:
            self.stats.add("not_scored")
            log.info("image %s not scored: %s", key, reason)
        else:
            self.stats.add("scored")
            try:
                self.monitor.observe(prediction, identity=str(ds.SOPInstanceUID))
            except Exception as e:  # monitoring must never stop scoring
                log.error("image %s: monitoring failed (%s)", key, type(e).__name__)
            log.info(
                "image %s scored: %s (%.3f)%s",
                key,
                prediction.predicted_class,
                prediction.probabilities[prediction.predicted_class],
                "" if prediction.in_distribution is not False else ", flagged: not a frontal chest X-ray",
            )
        self._wake_senders()

    def _score_in_time(self, key: str, data: bytes):
        """(data set, prediction, reason not scored) of one image, from a thread of its own given
        ``score_timeout_s``: past it :class:`ScoringTimeout`, and the worker goes on to the next image (the
        thread, which cannot be stopped, finishes on its own and its result is dropped). With
        :data:`MAX_ABANDONED` such threads still running, the worker waits for the oldest to end before it
        scores again: received images then wait in the queue, and a full queue answers 0xA700."""
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["value"] = self._score(key, data)
            except BaseException as e:  # handed to the worker, which sets the image aside
                box["error"] = e

        self._abandoned = [t for t in self._abandoned if t.is_alive()]
        while len(self._abandoned) >= MAX_ABANDONED:  # they burn the CPU: no more work until one ends
            self._abandoned.pop(0).join()
        thread = threading.Thread(target=work, name=f"ccad-dicom-score-{key}", daemon=True)
        thread.start()
        thread.join(self.settings.score_timeout_s)
        if thread.is_alive():
            self._abandoned.append(thread)
            raise ScoringTimeout(f"reading and scoring took longer than {self.settings.score_timeout_s:g} s")
        if "error" in box:
            raise box["error"]
        return box["value"]

    def _score(self, key: str, data: bytes):
        """(data set, prediction, reason not scored) of one image: the admission rule, then the screener."""
        import pydicom

        from ccad.errors import CcadError
        from ccad.screening import Upload

        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        reason, prediction = not_scored_reason(ds), None
        if reason is None:
            try:
                upload = Upload(key, data, "the image")
                prediction = self.screener.score([key], [self.screener.read(upload)], with_heatmaps=True)[0]
            except CcadError as e:
                reason = f"not readable: {_reason(e)}"
        return ds, prediction, reason

    def _done(self, key: str) -> None:
        if self.on_done is not None:
            try:
                self.on_done(key)
            except Exception as e:  # e.g. a full disk under pulled.txt: the image is re-done on the next pull
                log.error("image %s: could not record it as done (%s)", key, type(e).__name__)

    def _fhir_report(self, key: str, ds, prediction, reason: str | None) -> None:
        """The FHIR DiagnosticReport: into the spool for sending, or into the ``fhir`` folder."""
        import json

        from ccad.deploy.pacs.fhir import diagnostic_report

        report = diagnostic_report(ds, self.algorithm, prediction, reason, self.settings.fhir_patient_system)
        if self._fhir is not None:
            self.spool.put_fhir(key, report)
        else:
            from ccad.io.files import atomic_path

            folder = Path(self.settings.fhir)
            folder.mkdir(parents=True, exist_ok=True)
            with atomic_path(folder / f"{key}.json") as tmp:  # readable by the listener's user only
                tmp.write_text(json.dumps(report, indent=1))
                os.chmod(tmp, 0o600)

    def _put_results(self, key: str, ds, prediction, reason: str | None) -> None:
        """The image's results into the outbox: built by the result process, or here when there is none (or it
        died: then here from now on)."""
        source = result_source(ds)
        if self._builder is not None:
            from concurrent.futures.process import BrokenProcessPool

            try:
                self._builder.submit(
                    build_results, self.spool.root, key, source, self.algorithm, _portable(prediction), reason
                ).result()
                return
            except BrokenProcessPool:
                log.error("the result process ended; results are built in the worker threads from now on")
                self._builder = None
        build_results(self.spool.root, key, source, self.algorithm, prediction, reason)

    # 3. delivered -----------------------------------------------------------------------------------

    def _send_loop(self, lane: Lane) -> None:
        """The lane's thread: send what is due, wait for more; no error ends it (what was not sent waits)."""
        try:
            while not self._stop.is_set():
                try:
                    self._send_due(lane)
                except Exception as e:  # e.g. a spool folder unreadable for a moment: try again in a second
                    log.error("sender %d: %s; trying again", lane.index, type(e).__name__)
                    self._stop.wait(1.0)
        finally:
            self._release(lane)

    def _send_due(self, lane: Lane) -> None:
        now = time.monotonic()
        pending = [p for p in self.spool.pending_outbox() + self.spool.pending_fhir() if lane.owns(p)]
        due = [p for p in pending if lane.retries.get(p, _Retry()).due <= now]
        if due:
            self._send(due, lane)
            return
        waits = [lane.retries[p].due - now for p in pending if p in lane.retries]
        if not lane.wake.wait(timeout=min(waits + [1.0])) and not pending:
            self._release(lane)  # a second with nothing to send: let the destination go
        lane.wake.clear()

    def _association(self, lane: Lane):
        """The lane's open association to the destination, opened when there is none (None when it cannot be)."""
        from pynetdicom import AE, evt

        if lane.assoc is not None and lane.assoc.is_established:
            return lane.assoc
        destination = self.settings.send_to
        ae = AE(ae_title=self.settings.ae_title)
        ae.add_requested_context(COMPREHENSIVE_SR)
        ae.add_requested_context(SECONDARY_CAPTURE)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        handlers = [(evt.EVT_CONN_OPEN, no_delay)]
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title, evt_handlers=handlers)
        lane.assoc = assoc if assoc.is_established else None
        return lane.assoc

    @staticmethod
    def _release(lane: Lane) -> None:
        if lane.assoc is not None and lane.assoc.is_established:
            lane.assoc.release()
        lane.assoc = None

    def _send(self, paths: list[Path], lane: Lane) -> None:
        reports = [p for p in paths if p.suffix == ".json"]
        if reports and self._fhir is None:  # left by a run with --fhir URL: kept until one runs again
            for path in reports:
                lane.retries[path] = _Retry(attempts=1, due=time.monotonic() + 3600)
            log.warning("%d FHIR reports wait in the spool, and no --fhir URL is set to send them", len(reports))
        elif reports:
            self._send_fhir(reports, lane)
        paths = [p for p in paths if p.suffix != ".json"]
        if not paths:
            return
        if isinstance(self.settings.send_to, WebDestination):
            return self._send_web(paths, lane)
        self._send_dimse(paths, lane)

    def _delivered(self, path: Path, lane: Lane) -> None:
        path.unlink(missing_ok=True)
        lane.retries.pop(path, None)
        self.stats.add("sent")
        log.info("result %s delivered", path.stem)

    def _send_web(self, paths: list[Path], lane: Lane) -> None:
        """STOW-RS, one instance a request (a refusal is that instance's alone)."""
        import pydicom

        from ccad.deploy.pacs.dicomweb import stow

        for path in paths:
            if self._stop.is_set():
                break
            try:
                why = stow(self._web, pydicom.dcmread(path))
            except Exception as e:  # anything the client or the file raises: this file waits, the thread goes on
                why = type(e).__name__
            if why is None:
                self._delivered(path, lane)
            else:
                self._failed(path, why, lane)

    def _send_fhir(self, paths: list[Path], lane: Lane) -> None:
        import json

        for path in paths:
            if self._stop.is_set():
                break
            try:
                problem = self._fhir.put(json.loads(path.read_text()))
            except Exception as e:  # OSError, a bad status line, bad JSON...: this report waits, the thread goes on
                self._failed(path, type(e).__name__, lane)
                continue
            if problem is None:
                self._delivered(path, lane)
            else:
                self._failed(path, problem, lane)

    def _send_dimse(self, paths: list[Path], lane: Lane) -> None:
        import pydicom

        assoc = self._association(lane)
        if assoc is None:
            for path in paths:
                self._failed(path, "the destination is not reachable", lane)
            return
        for path in paths:
            if self._stop.is_set():
                break
            try:
                status = assoc.send_c_store(pydicom.dcmread(path))
            except Exception as e:
                self._failed(path, type(e).__name__, lane)
                if not assoc.is_established:
                    break
                continue
            code = int(getattr(status, "Status", -1)) if status else -1
            if code in STORED:
                self._delivered(path, lane)
            else:
                self._failed(path, f"status 0x{code:04X}" if code >= 0 else "no response", lane)
                if not assoc.is_established:
                    break
        for path in [p for p in lane.retries if not p.exists()]:
            lane.retries.pop(path, None)

    def _failed(self, path: Path, why: str, lane: Lane) -> None:
        retry = lane.retries.setdefault(path, _Retry())
        delay = min(self.settings.retry_max_s, 2.0**retry.attempts)
        retry.attempts += 1
        retry.due = time.monotonic() + delay
        self.stats.add("send_failures")
        log.warning("result %s not delivered (%s); retry %d in %.0f s", path.stem, why, retry.attempts, delay)
