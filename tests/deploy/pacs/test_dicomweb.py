"""DICOMweb and FHIR: results stored with STOW-RS into a real Orthanc (Debian's orthanc-dicomweb plugin), a
study pulled from it with QIDO-RS and WADO-RS and scored, resumably; FHIR DiagnosticReports validated against
the FHIR models and PUT to a small local HTTP server that records what it received (no FHIR server is packaged
here)."""

import http.server
import json
import threading

import numpy as np
import pydicom
import pytest
from helpers import make_xray_dicom
from orthanc import DICOMWEB_PLUGIN, ORTHANC, Orthanc, c_store, free_port, wait_for

from ccad.data.synthetic import render_patient
from ccad.deploy.pacs.dicomweb import WebDestination
from ccad.deploy.pacs.fhir import diagnostic_report
from ccad.deploy.pacs.listener import Destination, Lane, Listener, ListenerSettings
from ccad.deploy.pacs.results import Algorithm, structured_report
from ccad.errors import ConfigError
from ccad.screening import Screener
from ccad.screening.records import Prediction

needs_dicomweb = pytest.mark.skipif(
    ORTHANC is None or DICOMWEB_PLUGIN is None,
    reason="Orthanc or its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb; .ci/run does)",
)


def xray(tmp_path, name, seed=0, **fields):
    gray = render_patient(np.random.default_rng(seed), "covid", 256)
    return make_xray_dicom(tmp_path / f"{name}.dcm", gray, **fields)


def test_a_fhir_report_validates_and_names_no_patient_unless_asked(tmp_path):
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    ds = pydicom.dcmread(xray(tmp_path, "a"))
    algorithm = Algorithm("ccad", "0", "ab" * 32, "float", "covid if p_covid >= 0.700", "covid", 0.7)
    prediction = Prediction("a", "covid", {"covid": 0.8, "normal": 0.2}, in_distribution=True)
    report = diagnostic_report(ds, algorithm, prediction)
    DiagnosticReport.model_validate(report)
    assert report["status"] == "preliminary" and "not for diagnosis" in report["conclusion"]
    assert report["imagingStudy"][0]["identifier"]["value"] == f"urn:oid:{ds.StudyInstanceUID}"
    values = {o["code"]["coding"][0]["code"]: o for o in report["contained"] if o["resourceType"] == "Observation"}
    assert (
        values["p-covid"]["valueQuantity"]["value"] == 0.8
        and values["decision-threshold"]["valueQuantity"]["value"] == 0.7
    )
    assert values["screening-result"]["valueCodeableConcept"]["coding"][0]["code"] == "class-covid"
    text = json.dumps(report)
    assert "subject" not in report and str(ds.PatientID) not in text and str(ds.PatientName) not in text
    assert diagnostic_report(ds, algorithm, prediction)["id"] == report["id"]  # the same image, the same report
    named = diagnostic_report(ds, algorithm, None, "a lateral view", patient_system="urn:oid:1.2.3")
    DiagnosticReport.model_validate(named)
    assert named["subject"]["identifier"] == {"system": "urn:oid:1.2.3", "value": str(ds.PatientID)}
    assert "Not scored: a lateral view" in named["conclusion"]


@pytest.mark.parametrize("text", ["dicomweb+ftp://x/dicom-web", "dicomweb+https://user:pw@host/dicom-web"])
def test_a_dicomweb_destination_takes_no_credentials_in_its_url(text):
    with pytest.raises(ConfigError):
        Destination.parse(text)
    assert Destination.parse("dicomweb+https://pacs/dicom-web/") == WebDestination("https://pacs/dicom-web")


class _Recorder(http.server.BaseHTTPRequestHandler):
    """A stand-in FHIR server: answers 503 to the first request, then 201, recording every body."""

    received: list = []

    def do_PUT(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, self.headers.get("Content-Type"), body))
        self.send_response(503 if len(self.received) == 1 else 201)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_fhir_reports_are_put_with_retries(bundle, tmp_path):
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    _Recorder.received = []
    server = http.server.HTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = free_port()
    settings = ListenerSettings(
        bundle,
        Destination("NOBODY", "127.0.0.1", free_port()),
        tmp_path / "spool",
        port=port,
        retry_max_s=0.5,
        fhir=f"http://127.0.0.1:{server.server_port}/fhir",
        per_image=True,
    )
    listener = Listener(settings).start()
    try:
        assert c_store(xray(tmp_path, "a"), port, "CCAD") == 0x0000
        wait_for(lambda: len(_Recorder.received) >= 3, 60, "the report to be PUT, refused once, then again")
        wait_for(lambda: not listener.spool.pending_fhir(), 30, "the delivered report and task to leave the spool")
    finally:
        listener.stop()
        server.shutdown()
    (first_path, kind, first), (second_path, _, second) = [r for r in _Recorder.received if "/Task/" not in r[0]]
    report = DiagnosticReport.model_validate_json(second)
    assert first == second and first_path == second_path == f"/fhir/DiagnosticReport/{report.id}"
    assert kind == "application/fhir+json" and report.status == "preliminary"
    ((task_path, _, task),) = [r for r in _Recorder.received if "/Task/" in r[0]]  # stored at its first PUT
    assert json.loads(task)["focus"]["reference"] == f"DiagnosticReport/{report.id}"
    assert [r[0] for r in _Recorder.received].index(task_path) == 2  # only once its report was stored


@needs_dicomweb
def test_results_go_back_over_stow_rs_with_the_dimse_paths_content(bundle, tmp_path):

    orthanc = Orthanc(tmp_path / "orthanc", None, dicomweb=True).start()
    port = free_port()
    settings = ListenerSettings(
        bundle,
        Destination.parse(f"dicomweb+{orthanc.dicomweb}"),
        tmp_path / "spool",
        port=port,
        retry_max_s=0.5,
        per_image=True,
    )
    listener = Listener(settings).start()
    try:
        path = xray(tmp_path, "frontal")
        source = pydicom.dcmread(path)
        assert c_store(path, port, "CCAD") == 0x0000
        # the X-ray went to ccad only: what Orthanc holds of its study is what ccad stored there over DICOMweb
        found = wait_for(
            lambda: (lambda held: held if len(held) >= 2 else None)(orthanc.study_instances(source.StudyInstanceUID)),
            90,
            "the SR and the capture in Orthanc",
        )
        scorer = Screener.load(bundle)
        expected = structured_report(
            source,
            listener.algorithm,
            scorer.score(["x"], [scorer.prepare(_gray(path))], with_heatmaps=True)[0],
        )
    finally:
        listener.stop()
        orthanc.stop()
    sr = next(d for d in found if d.Modality == "SR")
    assert sr.SOPInstanceUID == expected.SOPInstanceUID and sr.SeriesInstanceUID == expected.SeriesInstanceUID
    assert _values(sr) == pytest.approx(_values(expected), abs=1e-6)
    assert any(d.Modality == "OT" for d in found)


def _gray(path):
    from ccad.io.images import read_grayscale_bytes

    return read_grayscale_bytes(path.read_bytes(), "x")


def _values(sr) -> list[float]:
    out = []

    def walk(items):
        for item in items:
            if "MeasuredValueSequence" in item:
                out.append(float(item.MeasuredValueSequence[0].NumericValue))
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    return out


@needs_dicomweb
def test_pull_scores_a_study_from_the_archive_and_resumes_without_duplicates(bundle, tmp_path):
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    from ccad.deploy.pacs.pull import DONE_FILE, pull

    orthanc = Orthanc(tmp_path / "orthanc", None, dicomweb=True).start()
    try:
        study = "1.2.826.0.1.3680043.8.498.77"
        for i in range(3):
            orthanc.upload(xray(tmp_path, f"f{i}", seed=i, study_uid=study))
        orthanc.upload(xray(tmp_path, "lateral", seed=9, study_uid=study, ViewPosition="LL"))
        settings = ListenerSettings(
            bundle,
            Destination.parse(f"dicomweb+{orthanc.dicomweb}"),
            tmp_path / "spool",
            retry_max_s=0.5,
            queue_size=2,
            fhir=str(tmp_path / "fhir"),
            per_image=True,
        )
        counts = pull(settings, orthanc.dicomweb, study=study, timeout_s=180)
        assert counts["found"] == 4 and counts["fetched"] == 4 and counts["complete"], counts
        assert (counts["scored"], counts["not_scored"]) == (3, 1)
        held = orthanc.study_instances(study)
        assert sorted(d.Modality for d in held) == ["DX"] * 4 + ["OT"] * 3 + ["SR"] * 4
        reports = sorted(p for p in (tmp_path / "fhir").glob("*.json") if not p.name.endswith(".task.json"))
        assert len(reports) == 4 and all(DiagnosticReport.model_validate_json(p.read_text()) for p in reports)
        assert len(list((tmp_path / "fhir").glob("*.task.json"))) == 4  # and each its worklist task
        # again: nothing new; then as after a kill -9 between a result and its record: fetched again, no copy
        assert pull(settings, orthanc.dicomweb, study=study, timeout_s=60)["already_done"] == 4
        done = tmp_path / "spool" / DONE_FILE
        done.write_text("\n".join(done.read_text().split()[:-1]) + "\n")
        again = pull(settings, orthanc.dicomweb, study=study, timeout_s=120)
        assert (again["already_done"], again["fetched"], again["complete"]) == (3, 1, True)
        assert len(orthanc.study_instances(study)) == len(held)
    finally:
        orthanc.stop()


@pytest.mark.parametrize(
    "url, ok",
    [
        ("https://pacs.example.org/dicom-web", True),
        ("http://127.0.0.1:8042/dicom-web", True),
        ("http://pacs.example.org/dicom-web", False),
        ("htps://pacs/dicom-web", False),
    ],
)
def test_plain_http_only_to_this_machine(url, ok, tmp_path):
    from ccad.deploy.pacs.dicomweb import check_url

    if ok:
        assert check_url(url) == url
    else:
        with pytest.raises(ConfigError):
            check_url(url)
    # --fhir: a URL is checked the same way; a mistyped scheme is not taken for a folder
    settings = ListenerSettings(tmp_path, Destination("A", "127.0.0.1", 104), fhir=url)
    if ok:
        assert settings.check() is settings
    else:
        with pytest.raises(ConfigError):
            settings.check()


def test_a_sender_error_of_any_kind_leaves_the_report_waiting(bundle, tmp_path):
    settings = ListenerSettings(
        bundle, Destination("NOBODY", "127.0.0.1", free_port()), tmp_path / "spool", fhir="http://127.0.0.1:9/fhir"
    )
    listener = Listener(settings)
    listener.spool.create()

    class Broken:
        def put(self, report):
            raise http.client.BadStatusLine("garbage")  # not an OSError: it used to end the sender thread

    import http.client

    listener.delivery.fhir = Broken()
    path = listener.spool.put_fhir("k", {"id": "x"})
    listener.delivery.send([path], Lane())
    assert path.exists() and listener.stats.send_failures == 1


def test_a_wado_answer_is_read_as_it_arrives_and_abandoned_past_the_limit(tmp_path):
    from ccad.deploy.pacs.dicomweb import TooLarge, fetch_instance, session

    small = xray(tmp_path, "small").read_bytes()

    class Archive(http.server.BaseHTTPRequestHandler):
        sent = []

        def do_GET(self):  # noqa: N802
            big = "big" in self.path
            self.send_response(200)
            self.send_header("Content-Type", 'multipart/related; type="application/dicom"; boundary=XYZ')
            self.end_headers()
            self.wfile.write(b"--XYZ\r\nContent-Type: application/dicom\r\n\r\n")
            written = 0
            try:
                if big:  # 64 MB of one endless file, sent in 1 MB writes
                    while written < 64 * 2**20:
                        self.wfile.write(b"\0" * 2**20)
                        written += 2**20
                else:
                    self.wfile.write(small)
                self.wfile.write(b"\r\n--XYZ--\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
            Archive.sent.append(written)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Archive)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}/dicom-web"
    try:
        assert fetch_instance(session(), base, "1", "2", "small", max_bytes=2**20) == small
        with pytest.raises(TooLarge):
            fetch_instance(session(), base, "1", "2", "big", max_bytes=2**20)
    finally:
        server.shutdown()


class _Answers(http.server.BaseHTTPRequestHandler):
    """A local HTTP server answering each PUT with the next of ``answers``: (status, body, headers)."""

    answers: list = []

    def do_PUT(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        status, body, headers = self.answers.pop(0)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_fhir_answer_counts_as_stored_only_when_it_is_the_report_or_an_outcome_without_error():
    from ccad.deploy.pacs.fhir import FhirPoster

    report = {"resourceType": "DiagnosticReport", "id": "abc"}
    _Answers.answers = [
        (200, b"<html>welcome to nginx</html>", {}),
        (201, json.dumps(report).encode(), {}),
        (200, b"", {}),
        (200, json.dumps({"resourceType": "OperationOutcome", "issue": [{"severity": "error"}]}).encode(), {}),
        (200, json.dumps({"resourceType": "Patient", "id": "abc"}).encode(), {}),
        (307, b"", {"Location": "http://127.0.0.1:9/elsewhere"}),
        (500, b"", {}),
    ]
    server = http.server.HTTPServer(("127.0.0.1", 0), _Answers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        poster = FhirPoster(f"http://127.0.0.1:{server.server_port}/fhir", timeout_s=10)
        answers = [poster.put(report) for _ in range(7)]
    finally:
        server.shutdown()
    assert answers == [
        "FHIR server answered with a body that is not JSON",
        None,
        None,  # Prefer: return=minimal
        "FHIR server answered with an OperationOutcome error",
        "FHIR server answered with a Patient, not the report",
        "FHIR server answered HTTP 307",  # a redirect of a PUT is never followed
        "FHIR server answered HTTP 500",
    ]


def test_a_fhir_answer_that_drips_fails_at_the_posters_deadline():
    from hostile_archive import answering, dripping, serving

    from ccad.deploy.pacs.fhir import FhirPoster

    # a byte every 0.1 s of the 1,000 promised: 100 s in all, each read well within its timeout
    with serving(answering(dripping(1000, 0.1), length=1000)) as base:
        poster = FhirPoster(f"{base}/fhir", timeout_s=1.0)
        assert (
            poster.put({"resourceType": "DiagnosticReport", "id": "abc"}) == "FHIR server's answer took longer than 1 s"
        )
