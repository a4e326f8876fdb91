"""Room 3 of the listener: delivery. The structured reports and captures in the spool's outbox go to
``--send-to`` by ``send_associations`` sender threads (the *lanes*), each over its own association kept open
while results keep coming (released after a second with nothing to send, or when the destination closes it);
the FHIR reports go to ``--fhir URL`` on lane 0.

An image's results always take the same lane, in order; a PACS stores each instance in tens of milliseconds
(its database commits), so lanes in parallel keep it busy. Sockets are opened with ``TCP_NODELAY``: a C-STORE is
a small command PDU and then the data, which Nagle's algorithm would otherwise hold back for the peer's delayed
ACK (40 ms on Linux). A destination that is down or refuses them is retried with exponential backoff (1 s
doubling to ``retry_max_s``); each file leaves the spool only once the destination has accepted it.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ccad.deploy.pacs.dicomweb import WebDestination
from ccad.deploy.pacs.scp import no_delay
from ccad.deploy.pacs.settings import Destination, ListenerSettings
from ccad.deploy.pacs.spool import Spool

log = logging.getLogger("ccad.dicom")

#: C-STORE statuses after which the destination has the object (success and the warnings).
STORED = {0x0000, 0xB000, 0xB006, 0xB007}
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


@dataclass
class _Retry:
    attempts: int = 0
    due: float = 0.0


@dataclass
class Lane:
    """One sender thread's share of the outbox: lane ``index`` of ``count`` sends the results of the images
    whose key falls to it (both objects of an image, in order), and lane 0 the FHIR reports and the HL7
    messages; it holds its own association and retry times."""

    index: int = 0
    count: int = 1
    wake: threading.Event = field(default_factory=threading.Event)
    retries: dict[Path, _Retry] = field(default_factory=dict)
    assoc: Any = None

    def owns(self, path: Path) -> bool:
        if path.suffix in (".json", ".hl7"):
            return self.index == 0
        return zlib.crc32(Spool.image_key(path).encode()) % self.count == self.index


def _waits_for_its_report(path: Path) -> bool:
    """A FHIR Task (``KEY.task.json``) is sent once its report (``KEY.json``, which it names) has left the spool:
    a server that checks references would refuse it before."""
    return path.name.endswith(".task.json") and path.with_name(path.name.removesuffix(".task.json") + ".json").exists()


class Delivery:
    """The senders of one spool's outbox. The constructor stores; :meth:`start` connects the DICOMweb client
    and the FHIR poster where the settings name them and starts a thread a lane; ``stopping`` (the listener's)
    ends them, :meth:`stop` waits for them."""

    def __init__(self, settings: ListenerSettings, spool: Spool, stats, stopping: threading.Event):
        self.settings, self.spool, self.stats, self._stop = settings, spool, stats, stopping
        self.lanes: list[Lane] = []
        self.web = None  # the DICOMweb client (STOW-RS), when send_to is a DICOMweb URL
        self.fhir = None  # the FHIR poster, when --fhir is a URL
        self.hl7 = None  # the RIS's MLLP listener, when --hl7 is set
        self._threads: list[threading.Thread] = []

    def start(self) -> "Delivery":
        self._connect()
        count = self.settings.send_associations if isinstance(self.settings.send_to, Destination) else 1
        self.lanes = [Lane(i, count) for i in range(count)]
        for lane in self.lanes:
            thread = threading.Thread(
                target=self._send_loop, args=(lane,), name=f"ccad-dicom-sender-{lane.index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return self

    def wake(self) -> None:
        """Something new is in the outbox."""
        for lane in self.lanes:
            lane.wake.set()

    def stop(self) -> None:
        self.wake()
        for thread in self._threads:
            thread.join(timeout=30)

    def _connect(self) -> None:
        """The DICOMweb client (STOW-RS results), the FHIR poster and the RIS, where the settings name them."""
        if isinstance(self.settings.send_to, WebDestination):
            from ccad.deploy.pacs.dicomweb import client, session

            http = session(self.settings.dicomweb_auth, self.settings.ca_file, redirects=False)
            self.web = client(self.settings.send_to.url, http)
        if self.settings.fhir and self.settings.fhir.startswith(("http://", "https://")):
            from ccad.deploy.pacs.fhir import FhirPoster

            self.fhir = FhirPoster(self.settings.fhir, str(self.settings.ca_file) if self.settings.ca_file else None)
        if self.settings.hl7:
            from ccad.deploy.pacs.oru import Hl7Destination

            self.hl7 = Hl7Destination.parse(self.settings.hl7)

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
        waiting = self.spool.pending_outbox() + self.spool.pending_fhir() + self.spool.pending_hl7()
        pending = [p for p in waiting if lane.owns(p) and not _waits_for_its_report(p)]
        due = [p for p in pending if lane.retries.get(p, _Retry()).due <= now]
        if due:
            self.send(due, lane)
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

    def send(self, paths: list[Path], lane: Lane) -> None:
        reports = {".json": (self.fhir, self._send_fhir, "FHIR reports", "--fhir URL")}
        reports[".hl7"] = (self.hl7, self._send_hl7, "HL7 messages", "--hl7 HOST:PORT")
        for suffix, (target, sender, what, flag) in reports.items():
            files = [p for p in paths if p.suffix == suffix]
            if files and target is None:  # left by a run that had a destination: kept until one runs again
                for path in files:
                    lane.retries[path] = _Retry(attempts=1, due=time.monotonic() + 3600)
                log.warning("%d %s wait in the spool, and no %s is set to send them", len(files), what, flag)
            elif files:
                sender(files, lane)
        paths = [p for p in paths if p.suffix == ".dcm"]
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
                why = stow(self.web, pydicom.dcmread(path))
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
                problem = self.fhir.put(json.loads(path.read_text()))
            except Exception as e:  # OSError, a bad status line, bad JSON...: this report waits, the thread goes on
                self._failed(path, type(e).__name__, lane)
                continue
            if problem is None:
                self._delivered(path, lane)
            else:
                self._failed(path, problem, lane)

    def _send_hl7(self, paths: list[Path], lane: Lane) -> None:
        """One ORU^R01 at a time over MLLP (:func:`.oru.send_oru`): delivered on ``AA``, else retried."""
        from ccad.deploy.pacs.oru import send_oru

        for path in paths:
            if self._stop.is_set():
                break
            try:
                why = send_oru(self.hl7, path.read_bytes().decode("utf-8"))
            except Exception as e:  # a file that cannot be read, or anything the exchange raises
                why = type(e).__name__
            if why is None:
                self._delivered(path, lane)
            else:
                self._failed(path, why, lane)

    def _send_dimse(self, paths: list[Path], lane: Lane) -> None:
        assoc = self._association(lane)
        if assoc is None:
            for path in paths:
                self._failed(path, "the destination is not reachable", lane)
            return
        for path in paths:
            if self._stop.is_set():
                break
            try:
                status = assoc.send_c_store(path)  # sent from the file as written: not parsed again
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
