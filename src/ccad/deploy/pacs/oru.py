"""A triage flag where the worklist reads it: an HL7 v2.5.1 ``ORU^R01`` to the RIS over MLLP (``--hl7
HOST:PORT``), built and read with python-hl7 (its escaping, its parser, its asyncio MLLP streams).

    text = oru_message(source, algorithm, prediction, reason, key)     # the message, as the spool keeps it
    send_oru(Hl7Destination("ris.example.org", 2575), text)             # None once the RIS acknowledged AA

The message names the order, not the patient: ORC/OBR carry the study's accession number (the filler order
number the RIS knows the order by) and OBX the Study Instance UID; no PID segment is sent and no patient field
is copied (the RIS has the patient of the order). OBR-5 is the priority: ``S`` (stat) when the result is the
positive class (COVID-19 suspected), else ``R``; OBR-25 ``P`` (preliminary: a screening aid, not a read). The
OBX segments: the screening result (abnormal flag ``A`` when suspected), p(positive class), the threshold, the
model (name, version, sha256, variant), the guard's flag, and "not for diagnosis"; for an image that was not
scored only why. The message control ID (MSH-10) is derived from the image and the model, as the DICOM
results' UIDs are: a resend of the same result carries the same ID, and a RIS that has it already can drop it.

An ``AA`` (or ``CA``) acknowledgement whose MSA-2 is the message's control ID delivers the message; an ``AE``,
an ``AR``, another ID, a dropped connection or no answer within the timeout leaves it in the spool, retried
with the listener's backoff. Only the acknowledgement code is logged, never its text.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ccad.deploy.pacs.results import Algorithm
from ccad.errors import ConfigError

CODE_SYSTEM = "99CCAD"  # ccad's own concepts, as in the SR and the FHIR report
NOT_FOR_DIAGNOSIS = "Research screening aid, not for diagnosis: read the image."
#: The most an acknowledgement may take (bytes), and how long the RIS has to answer.
MAX_ACK_BYTES = 64 * 2**10
ACK_TIMEOUT_S = 30.0
DELIVERED = {"AA", "CA"}


@dataclass(frozen=True)
class Hl7Destination:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "Hl7Destination":
        """``HOST:PORT`` of the RIS's MLLP listener."""
        host, _, port = text.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"`hl7` must be HOST:PORT, got {text!r}")
        return cls(host, int(port))


def control_id(key: str, algorithm: Algorithm) -> str:
    """MSH-10 (at most 20 characters) of the result of image ``key`` by this model: the same on a resend."""
    name = "\n".join([key, algorithm.model_sha256, algorithm.variant, "oru"])
    return "CCAD" + hashlib.sha256(name.encode()).hexdigest()[:16].upper()


def oru_message(source, algorithm: Algorithm, prediction: Any, reason: str | None, key: str, now=None) -> str:
    """The ``ORU^R01`` text (each segment ended by ``\\r``) of one image's result: ``source`` is the image's
    :func:`~ccad.deploy.pacs.results.result_source` (its accession number and UIDs), ``prediction`` its
    :class:`~ccad.screening.records.Prediction` or None with ``reason``."""
    import hl7

    when = (now or datetime.now(timezone.utc)).strftime("%Y%m%d%H%M%S+0000")
    header = (
        f"MSH|^~\\&|CCAD|CCAD|RIS|RIS|{when}||ORU^R01^ORU_R01|{control_id(key, algorithm)}|P|2.5.1|||AL|NE||"
        "UNICODE UTF-8"
    )
    hl7.parse(header)  # the header the rest is written under parses
    accession = escape(str(source.AccessionNumber or ""))
    suspected = prediction is not None and prediction.predicted_class == algorithm.positive_class
    segments = [
        header,
        f"ORC|RE||{accession}||CM",
        f"OBR|1||{accession}|CCADCXR^COVID-19 chest X-ray screening^{CODE_SYSTEM}|{'S' if suspected else 'R'}"
        f"|||||||||||||||||{when}||OT|P",
    ]
    values = _observations(source, algorithm, prediction, reason, suspected)
    for i, (kind, code, meaning, value, flag) in enumerate(values, 1):
        segments.append(f"OBX|{i}|{kind}|{code}^{meaning}^{CODE_SYSTEM}||{escape(value)}|||{flag}|||P|||{when}")
    return "".join(segment + "\r" for segment in segments)  # every segment ends in a carriage return


#: HL7 v2's escape sequences for its delimiters (2.10.4). Only these are escaped: the message is UTF-8 (MSH-18),
#: so every other character is sent as it is. python-hl7's own ``escape`` also turns non-ASCII into ``\X..\``
#: hex, which its ``unescape`` reads back wrong (a Cyrillic letter came back as two other characters).
_ESCAPES = {"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\"}


def escape(value: str) -> str:
    """``value`` with HL7's delimiters escaped, every other character kept (``\\r`` and ``\\n`` as spaces)."""
    text = "".join(_ESCAPES.get(c, c) for c in value)
    return text.replace("\r", " ").replace("\n", " ")


def _observations(source, algorithm: Algorithm, prediction, reason: str | None, suspected: bool) -> list[tuple]:
    """(value type, code, meaning, value, abnormal flag) of each OBX."""
    model = f"{algorithm.name} {algorithm.version}, model sha256 {algorithm.model_sha256}, {algorithm.variant}"
    out = [("ST", "STUDYUID", "Study Instance UID", str(source.StudyInstanceUID), "")]
    if prediction is None:
        out.append(("ST", "NOTSCORED", "Not scored", f"not scored: {reason}", ""))
    else:
        positive = algorithm.positive_class
        shown = "COVID-19 suspected" if suspected else f"{prediction.predicted_class} (COVID-19 not suspected)"
        out += [
            ("ST", "RESULT", "Screening result", shown, "A" if suspected else "N"),
            ("NM", "PPOS", f"Probability of {positive}", f"{prediction.probabilities[positive]:.4f}", ""),
        ]
        if algorithm.threshold is not None:
            out.append(("NM", "THRESHOLD", "Decision threshold", f"{algorithm.threshold:.4f}", ""))
        if prediction.in_distribution is False:
            out.append(("ST", "OOD", "Not like the images the model was built for", "flagged", "A"))
    out += [("ST", "MODEL", "Algorithm", model, ""), ("ST", "NOTE", "Note", NOT_FOR_DIAGNOSIS, "")]
    return out


def send_oru(destination: Hl7Destination, text: str, timeout_s: float = ACK_TIMEOUT_S) -> str | None:
    """Send one message over MLLP and read its acknowledgement: None when the RIS accepted it (``AA``/``CA``
    naming its control ID), else why not (``AE``, ``AR``, no answer, the connection dropped...), in words
    without the acknowledgement's text."""
    import hl7

    expected = str(hl7.parse(text)["MSH.F10"])
    try:
        ack = asyncio.run(asyncio.wait_for(_exchange(destination, text), timeout_s))
    except asyncio.TimeoutError:
        return f"no acknowledgement within {timeout_s:g} s"
    except (OSError, EOFError, asyncio.IncompleteReadError) as e:
        return f"the connection failed ({type(e).__name__})"
    except Exception as e:  # an acknowledgement that is not HL7, too long, not MLLP-framed
        return f"an unreadable acknowledgement ({type(e).__name__})"
    try:
        code, acknowledged = str(ack["MSA.F1"]), str(ack["MSA.F2"])
    except (KeyError, IndexError):
        return "an acknowledgement without an MSA segment"
    if code not in DELIVERED:
        return f"acknowledged {code[:2]}"
    if acknowledged != expected:
        return "acknowledged another message control ID"
    return None


async def _exchange(destination: Hl7Destination, text: str):
    from hl7.mllp import open_hl7_connection

    reader, writer = await open_hl7_connection(
        destination.host, destination.port, limit=MAX_ACK_BYTES, encoding="utf-8"
    )
    try:
        writer.writeblock(text.encode("utf-8"))
        await writer.drain()
        return await reader.readmessage()
    finally:
        writer.close()
        try:
            await writer.wait_closed()  # closed inside the loop, before asyncio.run ends it
        except (OSError, asyncio.CancelledError):
            pass
