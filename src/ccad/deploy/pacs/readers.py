"""The readers' findings, live: ``dicom listen --findings-port PORT`` takes the radiologists' final reports from
the RIS (HL7 v2 ``ORU^R01`` over MLLP, python-hl7's asyncio streams), joins each study's finding with the answer
ccad gave it, and counts the outcome: ``/metrics`` then has the live sensitivity, specificity and PPV (their
Wilson 95% lower bounds, ``ccad_live_lower95``) beside the levels the site validated, for the alert rules.

A report is read as ``ccad validate --truth`` reads one (:mod:`ccad.evaluation.findings`: only MSH, ORC, OBR, OBX
and ZDS are kept, PID and every other segment dropped unparsed; final or corrected, with a coded finding; the
accession number or Study Instance UID). Each message is acknowledged ``AA`` once read, whether it counts or not
(a preliminary report, a study ccad did not answer: counted in ``ccad_dicom_events_total``); a block that is not
HL7 (or is over :data:`MAX_REPORT_BYTES`, or not MLLP-framed) gets ``AR`` and its connection is closed. A
corrected report replaces the study's earlier outcome. A connection that says nothing for :data:`IDLE_TIMEOUT_S`
is closed, and at most :data:`MAX_CONNECTIONS` are served at once (one more is closed at once, counted as
refused). Nothing of a report is logged or kept: the join is on pseudonyms.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Collection

from ccad.evaluation.findings import COVID_CODES, Report, folded, hl7_messages, hl7_report
from ccad.io.files import pseudonym

log = logging.getLogger("ccad.dicom")

#: The largest report read (a radiologist's report with its text: a few KB).
MAX_REPORT_BYTES = 2**20
IDLE_TIMEOUT_S = 60.0
MAX_CONNECTIONS = 8
#: An acknowledgement for a block that is not an HL7 message (it has no control ID to name).
REJECTED = "MSH|^~\\&|CCAD|CCAD|||||ACK|CCAD|P|2.5.1\rMSA|AR|\r"


class FindingsReceiver:
    """An MLLP server on ``host:port`` (0: any free port, then :attr:`port`) whose reports go to ``monitor``
    (:meth:`ccad.deploy.live_metrics.LiveMetrics.finding_on`) and are counted in ``stats``. The constructor
    stores; :meth:`start` listens (its own thread and event loop); :meth:`stop` ends it."""

    def __init__(self, host: str, port: int, monitor, stats, codes: Collection[str] | None = None):
        self.host, self.port, self.monitor, self.stats = host, port, monitor, stats
        self.codes = folded(COVID_CODES | {monitor.positive_class} if codes is None else codes)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._server = None
        self._writers: set = set()  # the open connections, closed by :meth:`stop`

    def start(self) -> "FindingsReceiver":
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="ccad-findings", daemon=True)
        self._thread.start()
        if not self._started.wait(30):
            raise TimeoutError("the readers' findings port did not open within 30 s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        """Close the server and every connection, end the tasks, then the loop (no task left pending)."""
        if self._loop is None or self._thread is None or not self._thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
        except Exception as e:  # the loop is stopped below whatever happened
            log.warning("findings: stopping (%s)", type(e).__name__)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _shutdown(self) -> None:
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _serve(self) -> None:
        from hl7.mllp import start_hl7_server

        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                start_hl7_server(self._client, self.host, self.port, limit=MAX_REPORT_BYTES)
            )
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as e:  # a port in use: said by start
            self._error = e
            self._loop.close()
            return
        finally:
            self._started.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    async def _client(self, reader, writer) -> None:
        """One connection: a message, its acknowledgement, until the peer stops (or misbehaves). A block over
        the limit or not MLLP-framed is answered AR (an engine does not resend a rejected message) and the
        connection closed; silence or a peer that does not read its acknowledgements ends it."""
        from hl7.mllp import InvalidBlockError

        if len(self._writers) >= MAX_CONNECTIONS:
            self.stats.add("findings_refused")
            writer.transport.abort()
            return
        self._writers.add(writer)
        try:
            while True:
                try:
                    block = await asyncio.wait_for(reader.readblock(), IDLE_TIMEOUT_S)
                    answer = self.take(block)
                except (ValueError, InvalidBlockError):  # InvalidBlockError: not a ValueError in every version
                    self.stats.add("findings_refused")
                    answer = REJECTED
                writer.writeblock(answer.encode("utf-8"))
                await asyncio.wait_for(writer.drain(), IDLE_TIMEOUT_S)
                if answer is REJECTED:
                    return
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.CancelledError, OSError):
            return  # silence, a dropped connection, a peer that does not read, the listener stopping
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    def take(self, block: bytes) -> str:
        """The acknowledgement of one message (``\\r``-separated): ``AA`` once read, the outcome counted when it is
        a final report with a coded finding of a study this listener answered; ``AR`` when it is not HL7."""
        import hl7

        messages = list(hl7_messages(block.decode("utf-8", errors="replace")))
        try:
            message = hl7.parse(messages[0]) if len(messages) == 1 else None
            control = str(message.segment("MSH")(10)).strip() if message is not None else ""
            report = hl7_report(message, self.codes) if control else None
        except Exception:  # python-hl7 raises what its splitting meets; an MSH too short
            report = None
        if report is None:
            self.stats.add("findings_refused")
            return REJECTED
        if not isinstance(report, Report):
            self.stats.add("findings_left_out")  # not final, no coded finding, not a report
        else:
            keys = [pseudonym(value) for value in (report.accession, report.study) if value]
            outcome = self.monitor.finding_on(keys, report.positive)
            self.stats.add("findings_joined" if outcome else "findings_unmatched")
        try:
            return str(message.create_ack("AA", application="CCAD", facility="CCAD"))
        except Exception:  # an MSH too short to answer
            return REJECTED
