"""The FHIR poster (ccad.deploy.pacs.fhir): what a PUT carries, which answers count as stored, and how much of an
answer is read, against a local recording server and hand-made answers."""

import http.server
import json
import socket

import pytest
from hostile_archive import serving

from ccad.deploy.pacs.fhir import MAX_ANSWER_BYTES, FhirPoster, _read_by, stored_answer

REPORT = {"resourceType": "DiagnosticReport", "id": "r1"}


@pytest.mark.parametrize(
    "body, why",
    [
        (b"", None),
        (b"  \n", None),  # Prefer: return=minimal
        (json.dumps(REPORT).encode(), None),
        (
            json.dumps({**REPORT, "id": "other"}).encode(),
            "FHIR server answered with a DiagnosticReport, not the report",
        ),
        (json.dumps({"resourceType": "OperationOutcome", "issue": [{"severity": "warning"}]}).encode(), None),
        (json.dumps({"resourceType": "OperationOutcome", "issue": ["odd", 3]}).encode(), None),
        (json.dumps({"resourceType": "OperationOutcome"}).encode(), None),
        (
            json.dumps({"resourceType": "OperationOutcome", "issue": [{"severity": "fatal"}]}).encode(),
            "FHIR server answered with an OperationOutcome error",
        ),
        (
            json.dumps({"resourceType": "OperationOutcome", "issue": [{"severity": "error"}]}).encode(),
            "FHIR server answered with an OperationOutcome error",
        ),
        (b"[1, 2]", "FHIR server answered with a JSON body, not the report"),
        (json.dumps({"id": "r1"}).encode(), "FHIR server answered with a JSON body, not the report"),
        (json.dumps({"resourceType": "X" * 50}).encode(), f"FHIR server answered with a {'X' * 40}, not the report"),
        (b"<html>", "FHIR server answered with a body that is not JSON"),
    ],
)
def test_which_answers_say_the_report_was_stored(body, why):
    assert stored_answer(body, "r1") == why


def test_an_answer_of_the_limit_is_read_and_one_byte_more_is_not():
    padding = MAX_ANSWER_BYTES - len(json.dumps({**REPORT, "pad": ""}))
    exact = json.dumps({**REPORT, "pad": "x" * padding}).encode()
    assert len(exact) == MAX_ANSWER_BYTES and stored_answer(exact, "r1") is None
    assert stored_answer(exact + b" ", "r1") == "FHIR server answered with a body over 1 MB"


class _Answer:
    """What urlopen gives, reduced to read1: ``size`` bytes of ``b"x"``, at most ``n`` a read."""

    def __init__(self, size: int):
        self.left, self.reads = size, 0

    def read1(self, n: int) -> bytes:
        self.reads += 1
        chunk = b"x" * min(n, self.left)
        self.left -= len(chunk)
        return chunk


def test_an_answer_is_read_in_64_kib_reads_up_to_one_read_past_the_limit():
    answer = _Answer(20 * 65536)
    body = _read_by(answer, deadline=float("inf"))
    # 16 reads reach the limit (1 MiB) exactly, the 17th passes it: then reading stops
    assert body == b"x" * (17 * 65536) and answer.reads == 17
    small = _Answer(1000)
    assert _read_by(small, float("inf")) == b"x" * 1000 and small.reads == 2  # the second read finds the end
    assert _read_by(_Answer(1000), deadline=0.0) is None  # past its deadline before the first read


def _recording() -> type:
    class Fhir(http.server.BaseHTTPRequestHandler):
        requests: list = []

        def do_PUT(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            self.requests.append((self.path, dict(self.headers), body))
            self.send_response(201)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    Fhir.requests = []
    return Fhir


def test_a_put_names_the_report_by_its_id_under_the_base_and_says_what_it_sends(monkeypatch):
    monkeypatch.setenv("CCAD_FHIR_TOKEN", "t0ken")
    handler = _recording()
    with serving(handler) as base:
        assert FhirPoster(base + "/fhir/").put(REPORT) is None  # a trailing slash in the base is not doubled
    ((path, headers, body),) = handler.requests
    assert path == "/fhir/DiagnosticReport/r1" and json.loads(body) == REPORT
    assert headers["Content-Type"] == "application/fhir+json" and headers["Accept"] == "application/fhir+json"
    assert headers["Authorization"] == "Bearer t0ken"
    monkeypatch.delenv("CCAD_FHIR_TOKEN")
    handler = _recording()
    with serving(handler) as base:
        assert FhirPoster(base).put(REPORT) is None
    assert "Authorization" not in handler.requests[0][1] and handler.requests[0][0] == "/DiagnosticReport/r1"


def test_a_server_that_never_answers_fails_by_the_posters_timeout():
    silent = socket.create_server(("127.0.0.1", 0))  # accepts (the kernel's backlog), never answers
    try:
        poster = FhirPoster(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout_s=0.5)
        assert poster.timeout_s == 0.5 and FhirPoster("http://x").timeout_s == 30.0  # the documented default
        with pytest.raises(OSError):  # TimeoutError: the listener retries the report later
            poster.put(REPORT)
    finally:
        silent.close()


def _observation(i, code, display, **value):
    concept = {"coding": [{"system": "urn:ccad:codes", "code": code, "display": display}], "text": display}
    return {"resourceType": "Observation", "id": f"obs{i}", "status": "preliminary", "code": concept, **value,
            "device": {"reference": "#device"}}  # fmt: skip


def _quantity(value):
    return {"value": value, "unit": "1", "system": "http://unitsofmeasure.org", "code": "1"}


def _source():
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3.4", "1.2.3", "1.2.3.5"
    ds.SOPClassUID, ds.PatientID = "1.2.840.10008.5.1.4.1.1.1.1", " P1 "
    return ds


NOT_A_FRONTAL_CHEST_FILM = "Not a frontal chest X-ray like those the model was built for"  # the guard's flag
DEVICE = {
    "resourceType": "Device", "id": "device",
    "identifier": [{"system": "urn:ccad:model-sha256", "value": "ab" * 32}],
    "manufacturer": "ccad", "deviceName": [{"name": "ccad (int8 model)", "type": "model-name"}],
    "version": [{"value": "1.0"}], "note": [{"text": "decision rule: specificity-90"}],
}  # fmt: skip


def test_the_report_is_the_fhir_resource_a_receiving_system_reads(monkeypatch):
    """The whole DiagnosticReport of a scored image, field by field: what a RIS or an EHR keys on and shows."""
    import re

    from ccad.deploy.pacs.fhir import diagnostic_report
    from ccad.deploy.pacs.results import Algorithm
    from ccad.screening.records import Prediction

    algorithm = Algorithm("ccad", "1.0", "ab" * 32, "int8", "specificity-90", "covid", 0.4)
    prediction = Prediction("a", "covid", {"covid": 0.6123456, "normal": 0.3876544}, in_distribution=False)
    report = diagnostic_report(_source(), algorithm, prediction, patient_system="urn:oid:9.9")
    issued = report.pop("issued")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", issued)
    class_covid = {"coding": [{"system": "urn:ccad:codes", "code": "class-covid", "display": "covid"}], "text": "covid"}
    assert report == {
        "resourceType": "DiagnosticReport",
        "id": report["id"],
        "contained": [
            DEVICE,
            _observation(0, "screening-result", "Screening result (decision rule)", valueCodeableConcept=class_covid),
            _observation(1, "p-covid", "Probability of covid", valueQuantity=_quantity(0.612346)),
            _observation(2, "p-normal", "Probability of normal", valueQuantity=_quantity(0.387654)),
            _observation(3, "decision-threshold", "Decision threshold on p(covid)", valueQuantity=_quantity(0.4)),
            _observation(4, "out-of-distribution", NOT_A_FRONTAL_CHEST_FILM, valueBoolean=True),
        ],
        "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:1.2.3.4"}],
        "status": "preliminary",
        "category": [
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD", "display": "Radiology"}
                ]
            }
        ],
        "code": {
            "coding": [
                {
                    "system": "urn:ccad:codes",
                    "code": "covid-19-screening-aid",
                    "display": "COVID-19 screening aid on a chest X-ray",
                }
            ],
            "text": "Chest X-ray: COVID-19 screening aid (ccad)",
        },
        "subject": {"identifier": {"system": "urn:oid:9.9", "value": "P1"}},
        "result": [{"reference": f"#obs{i}"} for i in range(5)],
        "imagingStudy": [
            {
                "identifier": {"system": "urn:dicom:uid", "value": "urn:oid:1.2.3"},
                "display": "the imaging study of this X-ray",
            }
        ],
        "conclusion": "ccad screening result: covid (p = 0.612). The image is not a frontal chest X-ray like those the "
        "model was built for: do not rely on this result. Research screening aid, not for diagnosis: read the image.",
    }
    inside = diagnostic_report(_source(), algorithm, Prediction("a", "normal", {"covid": 0.2, "normal": 0.8}, True))
    assert inside["contained"][-1]["valueBoolean"] is False and "outside" not in inside["conclusion"]
    assert inside["conclusion"].startswith("ccad screening result: normal (p = 0.800). Research")
    assert "subject" not in inside  # no patient named unless the site asks


def test_the_report_id_is_the_images_and_the_models_and_its_kind():
    import uuid

    from ccad.deploy.pacs.fhir import diagnostic_report
    from ccad.deploy.pacs.results import Algorithm
    from ccad.screening.records import Prediction

    algorithm = Algorithm("ccad", "1.0", "ab" * 32, "int8", "rule")
    prediction = Prediction("a", "covid", {"covid": 0.6, "normal": 0.4}, True)
    report_id = diagnostic_report(_source(), algorithm, prediction)["id"]
    assert uuid.UUID(report_id).version == 5
    assert report_id == diagnostic_report(_source(), algorithm, None, "a lateral view")["id"]  # scored or not
    from ccad.deploy.pacs import fhir

    expected = uuid.uuid5(fhir._NAMESPACE, "\n".join(["1.2.3.4", "ab" * 32, "int8", "report"]))
    assert report_id == str(expected)


def test_an_image_not_scored_has_its_reason_cut_at_500_characters():
    from ccad.deploy.pacs.fhir import diagnostic_report
    from ccad.deploy.pacs.results import Algorithm

    report = diagnostic_report(_source(), Algorithm("ccad", "1", "ab", "float", "r"), None, "y" * 600)
    (observation,) = [o for o in report["contained"] if o["resourceType"] == "Observation"]
    assert observation == _observation(0, "not-scored", "Not scored", valueString="y" * 500)
    assert report["conclusion"].startswith("Not scored: " + "y" * 500)
    assert not any("Quantity" in k for k in observation)


def test_a_missing_or_blank_patient_id_names_no_subject():
    from ccad.deploy.pacs.fhir import diagnostic_report
    from ccad.deploy.pacs.results import Algorithm

    for patient_id in (None, "  "):
        ds = _source()
        if patient_id is None:
            del ds.PatientID
        else:
            ds.PatientID = patient_id
        report = diagnostic_report(ds, Algorithm("ccad", "1", "ab", "float", "r"), None, "x", patient_system="urn:x")
        assert "subject" not in report


def test_the_worklist_task_asks_for_the_reading_stat_when_covid_is_suspected_and_names_the_order():
    """The Task a worklist reads: the priority (stat when suspected, routine else), the report it is about, the
    order by its accession number, and a patient only where the report names one."""
    from fhir.resources.R4B.task import Task

    from ccad.deploy.pacs.fhir import diagnostic_report, worklist_task
    from ccad.deploy.pacs.results import Algorithm
    from ccad.screening.records import Prediction

    algorithm = Algorithm("ccad", "1.0", "ab" * 32, "int8", "rule", "covid", 0.4)
    source = _source()
    source.AccessionNumber = "ACC-Ж7"  # kept character for character
    suspected = Prediction("a", "covid", {"covid": 0.6, "normal": 0.4}, True)
    report = diagnostic_report(source, algorithm, suspected)
    task = worklist_task(report, algorithm, suspected)
    Task.model_validate(task)
    order = [{"identifier": {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
              "code": "ACSN"}]}, "value": "ACC-Ж7"}, "display": "the imaging order"}]  # fmt: skip
    assert report["basedOn"] == task["basedOn"] == order
    assert (task["status"], task["intent"], task["priority"]) == ("requested", "proposal", "stat")
    assert task["focus"] == {"reference": f"DiagnosticReport/{report['id']}"} and "for" not in task
    assert "read this study first" in task["description"] and "not for diagnosis" in task["description"]
    routine = worklist_task(report, algorithm, Prediction("a", "normal", {"covid": 0.3, "normal": 0.7}))
    assert routine["priority"] == "routine" and routine["id"] == task["id"]  # a new answer replaces the task
    unscored = worklist_task(report, algorithm, None)  # not scored: no triage
    assert unscored["priority"] == "routine" and "scored no image" in unscored["description"]
    named = diagnostic_report(source, algorithm, suspected, patient_system="urn:x")
    assert worklist_task(named, algorithm, suspected)["for"] == named["subject"]
    del source.AccessionNumber
    assert "basedOn" not in diagnostic_report(source, algorithm, suspected)


def test_a_task_is_put_under_its_own_type_and_its_echo_counts_as_stored():
    task = {"resourceType": "Task", "id": "t1"}
    handler = _recording()
    with serving(handler) as base:
        assert FhirPoster(base).put(task) is None
    assert handler.requests[0][0] == "/Task/t1"
    assert stored_answer(json.dumps(task).encode(), "t1", "Task") is None
    assert stored_answer(json.dumps(REPORT).encode(), "t1", "Task") == (
        "FHIR server answered with a DiagnosticReport, not the report"
    )
