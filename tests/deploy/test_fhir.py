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
