"""Readers' verdicts through the API: each result names itself by a pseudonym, a verdict on it is counted into
the live measures /metrics exposes and kept in the verdict log with no patient field; a verdict on an unknown
result, or a body that is not a small JSON object of the right fields, is refused."""

import json

import pytest
from fastapi.testclient import TestClient
from helpers import samples

from ccad.deploy.web import ServeSettings, create_app


@pytest.fixture(scope="module")
def scored(bundle, synth_folders, tmp_path_factory):
    log = tmp_path_factory.mktemp("verdicts") / "verdicts.jsonl"
    settings = ServeSettings(bundle, verdict_log=log, validated_sensitivity=0.9)
    files = sorted((synth_folders / "covid").glob("*.png"))[:3] + sorted((synth_folders / "normal").glob("*.png"))[:3]
    with TestClient(create_app(settings)) as client:
        uploads = [("files", (f"PATIENT-DOE-{i}.png", f.read_bytes(), "image/png")) for i, f in enumerate(files)]
        results = client.post("/api/v1/predict", files=uploads).json()["results"]
        yield client, results, log


def test_verdicts_are_counted_by_outcome_and_kept_by_pseudonym(scored):
    client, results, log = scored
    expected = {}
    for i, result in enumerate(results):
        called = result["predicted_class"] == "covid"
        agrees = i % 2 == 0  # every other reader disagrees
        truly = called if agrees else not called
        answer = client.post(
            "/api/v1/verdicts", json={"result_id": result["result_id"], "verdict": "agree" if agrees else "disagree"}
        )
        outcome = ("true_" if called == truly else "false_") + ("positive" if called else "negative")
        assert answer.status_code == 201 and answer.json() == {"result_id": result["result_id"], "outcome": outcome}
        expected[outcome] = expected.get(outcome, 0) + 1
    got = samples(client.get("/metrics").text)
    for outcome, n in expected.items():
        assert got[("ccad_verdicts_total", (("adapter", "api"), ("outcome", outcome)))] == n
    assert got[("ccad_validated", (("adapter", "api"), ("measure", "sensitivity")))] == 0.9
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["image"] for r in lines] == [r["result_id"] for r in results]
    assert "DOE" not in log.read_text() and ".png" not in log.read_text() and oct(log.stat().st_mode & 0o777) == "0o600"


def test_a_finding_decides_the_truth_and_must_be_a_class(scored):
    client, results, _ = scored
    normal = next(r for r in results if r["predicted_class"] == "normal")
    answer = client.post(
        "/api/v1/verdicts", json={"result_id": normal["result_id"], "verdict": "disagree", "finding": "covid"}
    )
    assert answer.json()["outcome"] == "false_negative"
    answer = client.post(
        "/api/v1/verdicts", json={"result_id": normal["result_id"], "verdict": "disagree", "finding": "flu"}
    )
    assert answer.status_code == 422 and "covid, normal" in answer.json()["detail"]


@pytest.mark.parametrize(
    "body, headers, status",
    [
        ({"result_id": "0" * 16, "verdict": "agree"}, {}, 404),  # no such result
        ({"result_id": "not-hex", "verdict": "agree"}, {}, 422),
        ({"result_id": "0" * 16, "verdict": "maybe"}, {}, 422),
        ({"result_id": "0" * 16, "verdict": "agree", "patient": "Doe"}, {}, 422),  # no other field
        ("result_id=0", {"content-type": "application/x-www-form-urlencoded"}, 415),
        ({"result_id": "0" * 16, "verdict": "agree", "finding": "x" * 5000}, {}, 413),  # over 4 KB
    ],
)
def test_a_bad_verdict_is_refused_with_its_status(scored, body, headers, status):
    client, _, _ = scored
    if isinstance(body, dict):
        answer = client.post("/api/v1/verdicts", content=json.dumps(body), headers={"content-type": "application/json"})
    else:
        answer = client.post("/api/v1/verdicts", content=body, headers=headers)
    assert answer.status_code == status, answer.text
    assert "Doe" not in answer.text
