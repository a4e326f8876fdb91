"""Room 1 of the listener: the Storage SCP. An association is accepted for the chest X-ray SOP classes in the
transfer syntaxes an installed decoder decodes; each C-STORE is admitted (:meth:`StoreScp.admission`), written
to the spool's inbox atomically and queued for scoring before success is answered.

- A data set over ``max_dataset_bytes``, or one that would inflate past the pixel limit, or whose compressed
  pixel data say more pixels than its header: 0xA700 ("out of resources"); one that cannot be decoded 0xC210
  ("cannot understand"); one without a valid SOP Class, SOP Instance, Study or Series Instance UID 0xA900.
- When the scoring queue is full: 0xA700, and nothing is kept (the sender keeps the image and may retry).

The data set is parsed once here; the spool (bytes on disk) hands it to the scoring worker, which parses it once
more, and the limits are checked once on either side (the element walk and the codestream here, the frame size
there).
"""

from __future__ import annotations

import hashlib
import logging
import queue
import socket
import threading
from pathlib import Path

from ccad.deploy.pacs.results import ACCEPTED_SOP_CLASSES, missing_identifiers
from ccad.deploy.pacs.settings import ListenerSettings
from ccad.deploy.pacs.spool import Spool
from ccad.errors import ImageReadError, ImageTooLargeError
from ccad.io.images import MAX_PIXELS as DEFAULT_MAX_PIXELS

log = logging.getLogger("ccad.dicom")

SUCCESS, OUT_OF_RESOURCES, DOES_NOT_MATCH, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xA900, 0xC210
#: The largest P-DATA PDU the listener accepts (it advertises this; pynetdicom holds one PDU in memory).
MAX_PDU_BYTES = 256 * 2**10
VERIFICATION = "1.2.840.10008.1.1"


def transfer_syntaxes() -> list[str]:
    """The transfer syntaxes the listener accepts: those of :data:`ccad.io.dicom.SYNTAXES` that an installed
    decoder decodes (a syntax it cannot decode is not negotiated: the modality falls back to another)."""
    from ccad.io.dicom import supported_syntaxes

    return supported_syntaxes()


def instance_key(sop_instance_uid: str) -> str:
    """How logs and spool files name an image: a hash of its UID, which says nothing of the patient."""
    return hashlib.sha256(sop_instance_uid.encode()).hexdigest()[:16]


def no_delay(event) -> None:
    """pynetdicom's ``EVT_CONN_OPEN`` handler: send each PDU at once (``TCP_NODELAY``), as DCMTK does."""
    try:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError):  # not a TCP socket (or already closed): nothing to tune
        pass


def reason(error: Exception) -> str:
    """An intake error's reason without the name it was given ("the data set: ...")."""
    return str(error).split(": ", 1)[-1]


class StoreScp:
    """The SCP over ``spool`` and the scoring ``queue``: the constructor stores; :meth:`start` listens
    (``serve``) or only prepares admission (``ccad dicom pull`` admits through :meth:`admission`)."""

    def __init__(self, settings: ListenerSettings, spool: Spool, queue: "queue.Queue[Path]", stats):
        self.settings, self.spool, self.queue, self.stats = settings, spool, queue, stats
        self._admit = threading.Lock()  # the queue's room is checked and taken at once
        self._server = None

    def start(self) -> "StoreScp":
        from pynetdicom import AE, _config, evt

        logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # its INFO lines can carry identifiers
        _config.STORE_RECV_CHUNKED_DATASET = True  # received data sets go to a temporary file, not memory
        ae = AE(ae_title=self.settings.ae_title)
        syntaxes = transfer_syntaxes()
        for sop_class in ACCEPTED_SOP_CLASSES:
            ae.add_supported_context(sop_class, syntaxes)
        ae.add_supported_context(VERIFICATION)  # C-ECHO: pynetdicom answers it (0x0000)
        ae.maximum_pdu_size = MAX_PDU_BYTES  # each PDU is held whole while it arrives: never unbounded
        self._server = ae.start_server(
            (self.settings.host, self.settings.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self.on_store), (evt.EVT_CONN_OPEN, no_delay)],
        )
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def admission(self, data: bytes, size: int | None = None):
        """(status, data set) of a data set as received: SUCCESS and the parsed data set, or a refusal and None
        (the module's docstring lists them). The C-STORE handler and ``ccad dicom pull`` both admit through it."""
        from ccad.io.dicomfile import check_codestream_header, check_data_set, read_data_set

        size = len(data) if size is None else size
        if size > self.settings.max_dataset_bytes:
            self.stats.add("refused_too_large")
            log.warning(
                "refused a data set of %d MB, over the limit of %d MB: status 0xA700",
                size // 2**20,
                self.settings.max_dataset_bytes // 2**20,
            )
            return OUT_OF_RESOURCES, None
        max_pixels = self.settings.max_pixels or DEFAULT_MAX_PIXELS
        try:
            check_data_set(data, "the data set", max_pixels)  # a decompression bomb, a stream that does not inflate
            ds = read_data_set(data, "the data set")
            missing = missing_identifiers(ds)
            if not missing:  # the codestream's own header (a pixel bomb), before any decoder allocates
                check_codestream_header(ds, "the data set", max_pixels)
        except ImageTooLargeError as e:
            self.stats.add("refused_too_large")
            log.warning("refused a data set: %s: status 0xA700", reason(e))
            return OUT_OF_RESOURCES, None
        except ImageReadError as e:
            self.stats.add("refused_malformed")
            log.warning("refused a data set: %s: status 0xC210", reason(e))
            return CANNOT_UNDERSTAND, None
        except Exception as e:  # pydicom raises many types for a malformed data set
            self.stats.add("refused_malformed")
            log.warning("refused a data set that cannot be decoded (%s): status 0xC210", type(e).__name__)
            return CANNOT_UNDERSTAND, None
        if missing:  # a result must name the study, series and instance it belongs to
            self.stats.add("refused_incomplete")
            log.warning("refused a data set without a valid %s (Type 1): status 0xA900", ", ".join(missing))
            return DOES_NOT_MATCH, None
        return SUCCESS, ds

    def on_store(self, event) -> int:
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
            if self.queue.full():
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
            self.queue.put_nowait(path)
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
        self.queue.put(path, timeout=timeout_s)
        self.stats.add("received")
        return path
