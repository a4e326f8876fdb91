"""The readers' findings a silent go-live is judged against (``ccad validate --results LOG --truth FILE``,
:mod:`ccad.evaluation.shadow`): a CSV, the readers' final reports as HL7 v2 ``ORU^R01`` messages, or FHIR R4
``DiagnosticReport`` s. Each gives, for the result log's field it is keyed on (``accession`` or ``study``), the
pseudonym of each key (:func:`ccad.io.files.pseudonym`, as the log's) -> whether the readers found COVID-19.

    truth = read_truth("reports.hl7")          # Truth(field="accession", findings={...}, skipped={...})

The format is told by the content (after a byte order mark and whitespace): ``MSH`` (or ``FHS``/``BHS``, a batch)
or MLLP's start byte ``\\x0b``: HL7; ``{``: FHIR JSON; anything else: a CSV. At most :data:`MAX_TRUTH_BYTES`
are read. An error names the file and never quotes it (it may hold patient data).

CSV: a ``finding`` column (a class name: positive when it is the positive class) and an ``accession_number`` or
``study_instance_uid`` column.

HL7 (python-hl7): messages MLLP-framed (``\\x0b ... \\x1c\\r``) or one after another, segments ended by ``\\r``
or ``\\n``. Only MSH, ORC, OBR, OBX and ZDS are kept; every other segment (PID and every patient or visit one) is
dropped before a message is parsed. One report a message, of its first OBR: counted only when final or
corrected (OBR-25 ``F`` or ``C``). The accession number is OBR-18 (IHE radiology's place), else OBR-3 (the filler
order number), else ORC-3; the Study Instance UID is OBX-5 of an OBX whose OBX-3 is ``113014`` (DICOM's "Study
Instance UID") or ``STUDYUID``, else ZDS-1. The finding is positive when a coded OBX (value type CE, CWE or CNE)
has as the code (first component) of an OBX-5 repetition one of the COVID-19 codes; negative when the report has
coded values but none of them; a report without a coded value has no finding and is left out.

FHIR (fhir.resources, R4B models): one ``DiagnosticReport``, a ``Bundle`` of them, or NDJSON (one resource a line,
a bulk export). Only the elements read (status, code, identifier, basedOn, imagingStudy, conclusionCode) are
validated and read: never ``subject``, ``contained``, the narrative or an attachment; other resources in a Bundle
(a Patient) are counted, not read. Counted only when ``status`` is final, amended, corrected or appended. The
accession number is an ``identifier`` (or a ``basedOn`` reference's) typed ``ACSN`` (v2-0203); the Study
Instance UID an ``imagingStudy`` identifier of system ``urn:dicom:uid`` (without its ``urn:oid:``). The finding
is from ``conclusionCode`` (any coding's code one of the COVID-19 codes); none: no finding, left out.

The COVID-19 codes (compared without case): SNOMED CT 840539006, ICD-10 U07.1 and U07.2, ``COVID-19``, and the
positive class's name, unless given. Reports are keyed on the field more of them carry (the accession number on
a tie); a report without it is left out. A later report with the same key replaces an earlier one (a
correction). Every report left out is counted, by why (:data:`SKIPS`).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from ccad._meta import DEFAULT_POSITIVE
from ccad.errors import DataError
from ccad.io.files import pseudonym

#: The CSV's key columns, and the result log's field each is joined on.
KEYS = {"accession_number": "accession", "study_instance_uid": "study"}
#: The largest file of findings read (tens of bytes a study in a CSV, a few kB a report).
MAX_TRUTH_BYTES = 64 * 2**20
#: SNOMED CT's COVID-19, ICD-10's U07.1 (virus identified) and U07.2 (not identified), and the name.
COVID_CODES = frozenset({"840539006", "U07.1", "U07.2", "COVID-19"})
#: Why a report is left out, in the order shown.
SKIPS = ("not_final", "no_coded_finding", "no_key", "replaced", "invalid", "not_a_report")
HL7_FINAL = frozenset({"F", "C"})
HL7_CODED = frozenset({"CE", "CWE", "CNE"})
HL7_STUDY_UID = frozenset({"113014", "STUDYUID"})
#: The only segments an HL7 message keeps: PID, PV1, NK1 and the rest are dropped unparsed.
HL7_SEGMENTS = frozenset({"MSH", "ORC", "OBR", "OBX", "ZDS"})
FHIR_FINAL = frozenset({"final", "amended", "corrected", "appended"})
FHIR_READ = ("resourceType", "status", "code", "identifier", "basedOn", "imagingStudy", "conclusionCode")
ACSN_SYSTEM = "http://terminology.hl7.org/CodeSystem/v2-0203"
DICOM_UID = "urn:dicom:uid"
_BOM = b"\xef\xbb\xbf"


class Truth(NamedTuple):
    field: str  # the result log's field the findings are keyed on: "accession" or "study"
    findings: dict[str, bool]  # pseudonym of each key -> whether the readers found COVID-19
    skipped: dict[str, int] | None  # reports left out, by why (SKIPS); None for a CSV


@dataclass(frozen=True)
class Report:
    """One counted report: its accession number and Study Instance UID ("" when it has none), its finding."""

    accession: str
    study: str
    positive: bool


def read_truth(
    path: str | os.PathLike, positive: str = DEFAULT_POSITIVE, codes: Collection[str] | None = None
) -> Truth:
    """The findings in ``path`` (a CSV, HL7 v2 messages or FHIR JSON, told by content); ``codes`` are those of
    COVID-19 in reports (default: :data:`COVID_CODES` and ``positive``)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_TRUTH_BYTES + 1)
    except OSError as e:
        raise DataError(f"{path}: cannot read the readers' findings ({e.strerror})") from None
    if len(data) > MAX_TRUTH_BYTES:
        raise DataError(f"{path}: over {MAX_TRUTH_BYTES // 2**20} MB; not a file of findings")
    text = data.decode("utf-8-sig", errors="replace")
    head = data.removeprefix(_BOM).lstrip(b" \t\r\n")
    wanted = COVID_CODES | {positive} if codes is None else codes
    if head.startswith((b"MSH", b"FHS", b"BHS", b"\x0b")):
        return keyed(path, hl7_reports(text, wanted))
    if head.startswith(b"{"):
        return keyed(path, fhir_reports(path, text, wanted))
    return read_csv(path, text, positive)


def read_csv(path: Path, text: str, positive: str) -> Truth:
    """A CSV's findings: ``finding`` is ``positive`` or not, keyed on ``accession_number`` or
    ``study_instance_uid`` (the first of them in :data:`KEYS` that it has)."""
    rows = csv.DictReader(io.StringIO(text))
    key = next((k for k in KEYS if k in (rows.fieldnames or [])), None)
    if key is None or "finding" not in (rows.fieldnames or []):
        raise DataError(
            f"{path}: needs a 'finding' column and an 'accession_number' or 'study_instance_uid' one "
            "(or HL7 v2 or FHIR reports)"
        )
    truth = {pseudonym(r[key].strip()): r["finding"].strip() == positive for r in rows if (r.get(key) or "").strip()}
    if not truth:
        raise DataError(f"{path}: no findings")
    return Truth(KEYS[key], truth, None)


def keyed(path: Path, outcomes: Iterable[Report | str]) -> Truth:
    """The findings of reports (a :class:`Report`, or why one was left out), keyed on the field more of them
    carry, the accession number on a tie; a later report replaces an earlier one with the same key."""
    skipped, reports = Counter(), []
    for outcome in outcomes:
        if isinstance(outcome, Report):
            reports.append(outcome)
        else:
            skipped[outcome] += 1
    carried = {f: sum(bool(getattr(r, f)) for r in reports) for f in ("accession", "study")}
    field = "accession" if carried["accession"] >= carried["study"] else "study"
    findings: dict[str, bool] = {}
    for report in reports:
        if getattr(report, field):
            findings[pseudonym(getattr(report, field))] = report.positive
    skipped["no_key"] = len(reports) - carried[field]
    skipped["replaced"] = carried[field] - len(findings)
    counts = {why: skipped[why] for why in SKIPS}
    if not findings:
        raise DataError(f"{path}: no final report with a coded finding and a key (left out: {left_out(counts)})")
    return Truth(field, findings, counts)


def left_out(skipped: dict[str, int]) -> str:
    """The reports left out, in words: "2 not final, 1 no key" ("none")."""
    return ", ".join(f"{n} {why.replace('_', ' ')}" for why, n in skipped.items() if n) or "none"


def folded(codes: Collection[str]) -> frozenset[str]:
    """The codes as compared: without case or surrounding spaces."""
    return frozenset(c.strip().casefold() for c in codes if c.strip())


def _uid(value: str) -> str:
    value = value.strip()
    return value[len("urn:oid:") :] if value.startswith("urn:oid:") else value


# HL7 v2


def hl7_messages(text: str) -> Iterator[str]:
    """Each message's text (segments ended by ``\\r``), MLLP framing and batch segments gone, and only the
    segments read (:data:`HL7_SEGMENTS`): a patient segment never leaves this function."""
    for end in ("\x0b", "\x1c", "\r\n", "\n"):
        text = text.replace(end, "\r")
    message: list[str] = []
    for segment in text.split("\r"):
        segment = segment.strip()
        if segment.startswith("MSH"):
            if message:
                yield "\r".join(message) + "\r"
            message = [segment]
        elif message and segment[:3] in HL7_SEGMENTS and segment[3:4] == message[0][3:4]:
            message.append(segment)
    if message:
        yield "\r".join(message) + "\r"


def hl7_reports(text: str, codes: Collection[str] = COVID_CODES) -> Iterator[Report | str]:
    """Each message's :class:`Report`, or why it was left out; ``codes``: those of COVID-19."""
    import hl7

    codes = folded(codes)
    for text_of_one in hl7_messages(text):
        try:
            message = hl7.parse(text_of_one)
        except Exception:  # python-hl7 raises what its splitting meets: an unreadable message is one left out
            yield "invalid"
            continue
        yield hl7_report(message, codes)


def _segments(message: Any, name: str) -> list:
    try:
        return list(message.segments(name))
    except KeyError:
        return []


def _value(segment: Any, field: int, component: int = 1, repetition: int = 1) -> str:
    """One component of one repetition of a field, unescaped; "" when it is not there."""
    try:
        return str(segment.extract_field(1, field, repetition, component, 1)).strip()
    except (IndexError, KeyError, TypeError):
        return ""


def _repetitions(segment: Any, field: int) -> int:
    return len(segment(field)) if field < len(segment) else 0


def hl7_report(message: Any, codes: Collection[str]) -> Report | str:
    """The :class:`Report` of one parsed ``ORU^R01`` (its first OBR), or why it is left out; ``codes``: those of
    COVID-19, as :func:`folded` gives them."""
    obr = next(iter(_segments(message, "OBR")), None)
    if obr is None:
        return "not_a_report"
    if _value(obr, 25).upper() not in HL7_FINAL:
        return "not_final"
    observations = _segments(message, "OBX")
    coded = [
        _value(obx, 5, 1, r).casefold()
        for obx in observations
        if _value(obx, 2).upper() in HL7_CODED
        for r in range(1, _repetitions(obx, 5) + 1)
    ]
    if not any(coded):
        return "no_coded_finding"
    orc = next(iter(_segments(message, "ORC")), None)
    accession = _value(obr, 18) or _value(obr, 3) or (_value(orc, 3) if orc is not None else "")
    study = next((_value(obx, 5) for obx in observations if _value(obx, 3) in HL7_STUDY_UID), "")
    study = study or next((_value(zds, 1) for zds in _segments(message, "ZDS")), "")
    return Report(accession, _uid(study), any(code in codes for code in coded))


# FHIR R4


def fhir_reports(path: Path, text: str, codes: Collection[str] = COVID_CODES) -> Iterator[Report | str]:
    """Each resource's :class:`Report`, or why it was left out, of one resource, a Bundle or NDJSON; ``codes``:
    those of COVID-19."""
    codes = folded(codes)
    try:
        documents = [json.loads(text)]
    except ValueError:
        documents = []
        for line in filter(None, (line.strip() for line in text.splitlines())):
            try:
                documents.append(json.loads(line))
            except ValueError:
                documents.append(None)
    if not any(isinstance(d, dict) and d.get("resourceType") for d in documents):
        raise DataError(f"{path}: not FHIR JSON (a DiagnosticReport, a Bundle of them, or NDJSON of them)")
    for document in documents:
        for resource in _resources(path, document):
            yield _fhir_report(resource, codes)


def _resources(path: Path, document: Any) -> Iterator[Any]:
    """A Bundle's entries' resources (its shell checked with the Bundle model), or the document itself."""
    if not (isinstance(document, dict) and document.get("resourceType") == "Bundle"):
        yield document
        return
    from fhir.resources.R4B.bundle import Bundle

    try:
        Bundle.model_validate({k: v for k, v in document.items() if k != "entry"})
    except (ValueError, TypeError):
        raise DataError(f"{path}: a Bundle that is not a valid FHIR R4 Bundle") from None
    entries = document.get("entry") or []
    for entry in entries if isinstance(entries, list) else [None]:
        yield entry.get("resource") if isinstance(entry, dict) else None


def _fhir_report(resource: Any, codes: Collection[str]) -> Report | str:
    """The :class:`Report` of one ``DiagnosticReport`` (only the elements in :data:`FHIR_READ` validated and
    read), or why it is left out."""
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        return "invalid"
    if resource["resourceType"] != "DiagnosticReport":
        return "not_a_report"
    try:
        report = DiagnosticReport.model_validate({k: resource[k] for k in FHIR_READ if k in resource})
    except (ValueError, TypeError):
        return "invalid"
    if report.status not in FHIR_FINAL:
        return "not_final"
    found = [c.code.strip().casefold() for cc in report.conclusionCode or [] for c in cc.coding or [] if c.code]
    if not found:
        return "no_coded_finding"
    identifiers = [*(report.identifier or []), *(r.identifier for r in report.basedOn or [] if r.identifier)]
    accession = next((str(i.value).strip() for i in identifiers if i.value and _is_accession(i)), "")
    study = next(
        (_uid(str(s.identifier.value)) for s in report.imagingStudy or [] if _is_study_uid(s.identifier)),
        "",
    )
    return Report(accession, study, any(code in codes for code in found))


def _is_accession(identifier: Any) -> bool:
    coding = (identifier.type.coding or []) if identifier.type else []
    return any(c.code == "ACSN" and c.system in (None, ACSN_SYSTEM) for c in coding)


def _is_study_uid(identifier: Any) -> bool:
    return identifier is not None and identifier.system == DICOM_UID and bool(identifier.value)
