"""The readers' findings from their reports (ccad.evaluation.findings): HL7 v2 ORU^R01 messages as a RIS sends
them (MLLP-framed or one after another) and FHIR R4 DiagnosticReports (one, a Bundle, NDJSON). Only final
reports with a coded finding count, a correction replaces the report before it, every report left out is
counted, and nothing of the patient (the PID segment, a Patient resource) reaches the result or an error."""

import json

import hl7
import pytest
from helpers import result_record

from ccad.cli import main
from ccad.errors import DataError
from ccad.evaluation import findings
from ccad.evaluation.findings import read_truth
from ccad.evaluation.shadow import shadow_metrics
from ccad.io.files import pseudonym

PATIENT = "Смирнова^Ольга^Петровна"
NOTHING_LEFT_OUT = dict.fromkeys(findings.SKIPS, 0)


def oru(n, status="F", code="840539006^Disease caused by SARS-CoV-2^SCT", obr18=None, obr3=None, orc3=None, uid=None):
    """One ORU^R01 as a RIS writes it (segments ended by \\r): the patient, the visit, the order, the report's
    coded impression (none when ``code`` is None), its text and the study's UID."""
    accession = f"ACC-{n:04d}"
    obr18, obr3, orc3 = (accession if v is None else v for v in (obr18, obr3, orc3))
    uid = f"1.2.826.0.1.3680043.2.1125.{n}" if uid is None else uid
    segments = [
        f"MSH|^~\\&|RIS|CITYHOSP|CCAD|CITYHOSP|20261201103000||ORU^R01^ORU_R01|RIS{n:06d}|P|2.5.1|||AL|NE||"
        "UNICODE UTF-8",
        f"PID|1||7734521^^^CITYHOSP^MR||{PATIENT}||19580417|F|||ул. Ленина, 12^^Новосибирск^^630099",
        "PV1|1|E|ED^^^CITYHOSP||||0412^Kuznetsov^Pavel",
        f"ORC|RE|PLC-{n}|{orc3}||CM",
        f"OBR|1|PLC-{n}|{obr3}|36643-5^XR Chest 2 Views^LN|||20261201095500|||||||||0412^Kuznetsov^Pavel||{obr18}"
        f"||||20261201103000||DX|{status}",
    ]
    if code is not None:
        segments.append(f"OBX|1|CWE|19005-8^Radiology Imaging study [Impression]^LN||{code}||||||{status}")
    segments.append(f"OBX|2|TX|18782-3^Radiology Study observation^LN||Bilateral opacities, see above.||||||{status}")
    if uid:
        segments.append(f"OBX|3|ST|113014^Study Instance UID^DCM||{uid}||||||{status}")
    return "".join(s + "\r" for s in segments)


def mllp(message):
    return "\x0b" + message + "\x1c\r"


NORMAL = "17621005^Normal^SCT"


def test_the_message_is_written_where_a_ris_puts_each_field():
    message = hl7.parse(oru(7, status="C", obr18="ACC-X", obr3="FILL-7"))
    obr = message.segments("OBR")[0]
    assert (obr.extract_field(1, 18), obr.extract_field(1, 3), obr.extract_field(1, 25)) == ("ACC-X", "FILL-7", "C")
    assert message.segments("OBX")[2].extract_field(1, 3) == "113014"


def test_hl7_reports_mllp_framed_or_one_per_line_and_no_patient_segment_is_parsed(tmp_path, monkeypatch):
    parsed = []
    parse = hl7.parse
    monkeypatch.setattr(hl7, "parse", lambda text, *a, **k: parsed.append(text) or parse(text, *a, **k))
    plain = oru(2, code=NORMAL).replace("\r", "\n")  # segments ended by newlines, as an export writes them
    (tmp_path / "reports.hl7").write_text(mllp(oru(1)) + mllp(oru(3, code="U07.1^COVID-19^I10")) + plain)
    truth = read_truth(tmp_path / "reports.hl7")
    assert truth.field == "accession"
    assert truth.findings == {pseudonym("ACC-0001"): True, pseudonym("ACC-0003"): True, pseudonym("ACC-0002"): False}
    assert truth.skipped == NOTHING_LEFT_OUT
    assert len(parsed) == 3 and not any("PID" in t or "PV1" in t or "Смирнова" in t for t in parsed)
    assert "Смирнова" not in repr(truth) and "7734521" not in repr(truth)


def test_the_accession_number_is_obr18_else_obr3_else_orc3_and_the_key_is_the_one_more_reports_carry(tmp_path):
    messages = [
        oru(1, obr18="ACC-A", obr3="FILL-A", uid=""),  # OBR-18, IHE's place for it, first
        oru(2, obr18="", obr3="ACC-B", uid=""),  # else the filler order number
        oru(3, obr18="", obr3="", orc3="ACC-C"),
        oru(4, obr18="", obr3="", orc3="", code=NORMAL),  # no accession number: its study UID only
    ]
    (tmp_path / "a.hl7").write_text("".join(messages))
    truth = read_truth(tmp_path / "a.hl7")
    assert truth.field == "accession" and set(truth.findings) == {pseudonym(f"ACC-{x}") for x in "ABC"}
    assert truth.skipped["no_key"] == 1
    # more reports with a study UID (an OBX 113014, or IHE's ZDS) than with an accession number: keyed on the UID
    zds = oru(6, obr18="", obr3="", orc3="", uid="", code=NORMAL) + "ZDS|1.2.3.6^RIS^Application^DICOM\r"
    (tmp_path / "b.hl7").write_text(oru(5, obr18="", obr3="", orc3="") + zds + oru(7, uid=""))
    truth = read_truth(tmp_path / "b.hl7")
    assert truth.field == "study"
    assert truth.findings == {pseudonym("1.2.826.0.1.3680043.2.1125.5"): True, pseudonym("1.2.3.6"): False}
    assert truth.skipped["no_key"] == 1


def test_a_preliminary_report_and_one_without_a_coded_finding_are_left_out_and_a_correction_replaces(tmp_path):
    messages = [
        oru(1),  # final: COVID-19
        oru(2, status="P"),  # preliminary: not a read
        oru(3, code=None),  # final, but only text: no coded finding
        oru(4, code=NORMAL),
        oru(1, status="C", code=NORMAL),  # the first one corrected: not COVID-19 after all
        oru(4, status="P", code="U07.1^COVID-19^I10"),  # a preliminary after a final replaces nothing
    ]
    (tmp_path / "r.hl7").write_bytes("".join(mllp(m) for m in messages).encode())
    truth = read_truth(tmp_path / "r.hl7")
    assert truth.findings == {pseudonym("ACC-0001"): False, pseudonym("ACC-0004"): False}
    assert truth.skipped == {**NOTHING_LEFT_OUT, "not_final": 2, "no_coded_finding": 1, "replaced": 1}


def test_the_covid_codes_are_a_parameter(tmp_path):
    (tmp_path / "r.hl7").write_text(oru(1, code="U07.2^COVID-19, virus not identified^I10") + oru(2, code="L-COV^x^L"))
    assert set(read_truth(tmp_path / "r.hl7").findings.values()) == {True, False}
    assert read_truth(tmp_path / "r.hl7", codes={"l-cov"}).findings == {
        pseudonym("ACC-0001"): False,
        pseudonym("ACC-0002"): True,
    }


def report(n, status="final", codes=("840539006",), accession=True, study=True, on_order=False):
    """A DiagnosticReport as a RIS's FHIR facade writes it, with a subject, a narrative and a contained
    Patient (none of which is read)."""
    acsn = {
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
        "value": f"ACC-{n:04d}",
    }
    resource = {
        "resourceType": "DiagnosticReport",
        "id": f"r{n}",
        "status": status,
        "text": {"status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{PATIENT}</div>'},
        "contained": [{"resourceType": "Patient", "id": "p", "name": [{"family": "Смирнова"}]}],
        "subject": {"reference": "#p", "display": "Смирнова Ольга"},
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "36643-5"}]},
        "conclusion": "Bilateral opacities.",
    }
    if accession:
        resource["basedOn" if on_order else "identifier"] = [{"identifier": acsn} if on_order else acsn]
    if study:
        uid = {"system": "urn:dicom:uid", "value": f"urn:oid:1.2.826.0.1.3680043.2.1125.{n}"}
        resource["imagingStudy"] = [{"identifier": uid}]
    if codes:
        resource["conclusionCode"] = [{"coding": [{"system": "http://snomed.info/sct", "code": c} for c in codes]}]
    return resource


def test_one_fhir_report_a_bundle_and_ndjson(tmp_path):
    (tmp_path / "one.json").write_text(json.dumps(report(1), indent=2, ensure_ascii=False))
    truth = read_truth(tmp_path / "one.json")
    assert truth == ("accession", {pseudonym("ACC-0001"): True}, NOTHING_LEFT_OUT)
    patient = {"resourceType": "Patient", "id": "p", "name": [{"family": "Смирнова", "given": ["Ольга"]}]}
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": report(2, codes=["17621005"])}, {"resource": patient}, {"resource": report(3)}],
    }
    (tmp_path / "bundle.json").write_text("\ufeff" + json.dumps(bundle, ensure_ascii=False))
    truth = read_truth(tmp_path / "bundle.json")
    assert truth.findings == {pseudonym("ACC-0002"): False, pseudonym("ACC-0003"): True}
    assert truth.skipped == {**NOTHING_LEFT_OUT, "not_a_report": 1}
    lines = [
        report(4, on_order=True, study=False),  # the accession number on the order (basedOn)
        report(5, status="preliminary"),
        report(6, codes=()),  # no conclusionCode
        {**report(7), "identifier": "ACC-0007"},  # not a valid DiagnosticReport
        report(8, accession=False, codes=["U07.1", "xx"]),
        report(4, status="amended", codes=["U07.1"]),  # replaces the first
    ]
    (tmp_path / "bulk.ndjson").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in lines) + "\n")
    truth = read_truth(tmp_path / "bulk.ndjson")
    assert truth.field == "accession" and truth.findings == {pseudonym("ACC-0004"): True}
    left_out = {"not_final": 1, "no_coded_finding": 1, "invalid": 1, "no_key": 1, "replaced": 1}
    assert truth.skipped == {**NOTHING_LEFT_OUT, **left_out}
    assert "Смирнова" not in repr(truth)


def test_the_study_uid_of_a_fhir_report_without_its_urn_oid(tmp_path):
    lines = [report(1, accession=False), report(2, accession=False, codes=["17621005"])]
    (tmp_path / "s.ndjson").write_text("\n".join(json.dumps(r) for r in lines))
    truth = read_truth(tmp_path / "s.ndjson")
    assert truth.field == "study"
    assert truth.findings == {
        pseudonym("1.2.826.0.1.3680043.2.1125.1"): True,
        pseudonym("1.2.826.0.1.3680043.2.1125.2"): False,
    }


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"name": "Смирнова", "findings": []}', "not FHIR JSON"),
        ('{"resourceType": "DiagnosticReport", "name": "Смирнова"\n"x": 1}', "not FHIR JSON"),
        ('{"resourceType": "Bundle", "entry": [{"resource": {"name": "Смирнова"}}]}', "not a valid FHIR R4 Bundle"),
        (json.dumps(report(1, status="preliminary"), ensure_ascii=False), r"left out: 1 not final\)"),
        (oru(1, status="P") + oru(2, code=None), "left out: 1 not final, 1 no coded finding"),
        ("MSH|^~\\&|RIS\rPID|1||7734521||Смирнова\r", "left out: 1 not a report"),
        ("Смирнова;Ольга;covid\n", "needs a 'finding' column"),
    ],
)
def test_a_file_of_no_findings_is_refused_in_one_line_that_quotes_nothing_of_it(tmp_path, content, message):
    (tmp_path / "truth.txt").write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message) as e:
        read_truth(tmp_path / "truth.txt")
    assert str(tmp_path / "truth.txt") in str(e.value) and "\n" not in str(e.value)
    assert not any(word in str(e.value) for word in ("Смирнова", "7734521", "ACC-", "covid"))


def test_a_file_over_the_bound_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(findings, "MAX_TRUTH_BYTES", 100)
    (tmp_path / "big.hl7").write_text(oru(1))
    with pytest.raises(DataError, match="over"):
        read_truth(tmp_path / "big.hl7")


def _shadow_log(tmp_path, studies):
    """A shadow period's result log: for each (n, called positive, score) one scored image of study n."""
    lines = [
        result_record(
            called, score, study=pseudonym(f"1.2.826.0.1.3680043.2.1125.{n}"), accession=pseudonym(f"ACC-{n:04d}")
        )
        for n, called, score in studies
    ]
    (tmp_path / "shadow.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return tmp_path / "shadow.jsonl"


def test_a_shadow_period_judged_against_hl7_reports_is_the_hand_count(tmp_path, capsys):
    called = [(n, n < 4, 0.9 if n < 4 else 0.2) for n in range(6)]  # 6 with COVID-19: 4 called, 2 missed
    called += [(n, n == 6, 0.8 if n == 6 else 0.1) for n in range(6, 14)]  # 8 without: 1 called
    called += [(14, True, 0.9), (15, False, 0.1)]  # reported only preliminary / without a coded finding
    log = _shadow_log(tmp_path, called)
    messages = [oru(n) for n in range(6)] + [oru(n, code=NORMAL) for n in range(6, 14)]
    messages[4], messages[7] = oru(4, code=NORMAL), oru(7)  # read first as normal, as COVID-19; then corrected
    messages += [oru(4, status="C", code="U07.1^COVID-19^I10"), oru(7, status="C", code=NORMAL)]
    messages += [oru(14, status="P"), oru(15, code=None), oru(16, obr18="", obr3="", orc3="", uid="")]
    (tmp_path / "reports.hl7").write_text("".join(mllp(m) for m in messages))
    metrics = shadow_metrics(log, tmp_path / "reports.hl7")
    assert metrics["join"] == {
        "on": "accession",
        "studies_in_log": 16,
        "findings": 14,
        "studies_joined": 14,
        "studies_without_a_finding": 2,
        "findings_without_a_study": 0,
        "unreadable_log_lines": 0,
        "reports_skipped": {**NOTHING_LEFT_OUT, "not_final": 1, "no_coded_finding": 1, "no_key": 1, "replaced": 2},
    }
    assert metrics["confusion_matrix"] == [[7, 1], [2, 4]]  # rows: not covid, covid
    assert metrics["sensitivity"]["value"] == pytest.approx(4 / 6)
    assert metrics["specificity"]["value"] == pytest.approx(7 / 8)
    criteria = tmp_path / "go.toml"
    criteria.write_text('[[criterion]]\nmetric = "specificity"\nat_least = 0.4\n')
    args = ["validate", "--results", str(log), "--truth", str(tmp_path / "reports.hl7"), "--criteria", str(criteria)]
    assert main([*args, "--out", str(tmp_path / "go"), "--truth-codes", "840539006,U07.1"]) == 0
    assert "reports left out: 1 not final, 1 no coded finding, 1 no key, 2 replaced" in capsys.readouterr().out
    record = (tmp_path / "go" / "validation.json").read_text()
    assert "reports left out" in json.loads(record)["data"]
    assert not any(word in record for word in ("ACC-", "Смирнова", "\\u0421"))
