"""Monitoring after go-live: /metrics counts what was scored (and nothing of the patient), the result log
holds pseudonyms, and a real Prometheus (Debian's) scrapes a live ccad serve."""

import hashlib
import json
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import free_port, samples
from helpers import get_json as _get
from prometheus_client import generate_latest

from ccad.deploy.web import ServeSettings, create_app

PROMETHEUS = shutil.which("prometheus")


def test_metrics_count_what_was_scored_and_name_no_file(bundle, synth_folders, tmp_path):
    log = tmp_path / "results.jsonl"
    files = sorted((synth_folders / "covid").glob("*.png"))[:2] + sorted((synth_folders / "normal").glob("*.png"))[:1]
    uploads = [(f"PATIENT-SMITH-{i}.png", f.read_bytes(), "image/png") for i, f in enumerate(files)]
    with TestClient(create_app(ServeSettings(bundle, api_key="k", result_log=log))) as client:
        assert client.get("/metrics").status_code == 401  # behind the key, like the API
        answer = client.post("/api/v1/predict", files=[("files", u) for u in uploads], headers={"X-API-Key": "k"})
        assert answer.status_code == 200
        decisions = [r["predicted_class"] for r in answer.json()["results"]]
        page = client.get("/metrics", headers={"X-API-Key": "k"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/plain")
    got = samples(page.text)
    assert got[("ccad_images_scored_total", (("adapter", "api"),))] == 3
    for decision in set(decisions):
        assert got[("ccad_decisions_total", (("adapter", "api"), ("decision", decision)))] == decisions.count(decision)
    assert got[("ccad_score_count", (("adapter", "api"),))] == 3
    assert got[("ccad_http_requests_total", (("route", "predict"), ("status", "200")))] == 1
    assert got[("ccad_http_requests_total", (("route", "metrics"), ("status", "401")))] == 1
    assert got[("ccad_drift", (("adapter", "api"),))] == 0  # warming up: 3 images, a window of 200
    assert "SMITH" not in page.text and ".png" not in page.text
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["image"] for r in lines] == [hashlib.sha256(u[1]).hexdigest()[:16] for u in uploads]
    assert [r["decision"] for r in lines] == decisions and all(r["drift"] == "warming up" for r in lines)
    assert "SMITH" not in log.read_text() and oct(log.stat().st_mode & 0o777) == "0o600"


def test_an_unwritable_result_log_is_refused_at_start(bundle, tmp_path):
    from ccad.errors import ConfigError

    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="`result_log` .*cannot write there"):
        create_app(ServeSettings(bundle, result_log=tmp_path / "file" / "results.jsonl"))


@pytest.mark.skipif(
    PROMETHEUS is None, reason="Debian's prometheus is not installed (apt-get install prometheus; .ci/run does)"
)
def test_a_real_prometheus_scrapes_a_live_server(bundle, synth_folders, tmp_path):
    import uvicorn

    port, prometheus_port = free_port(), free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(ServeSettings(bundle, api_key="scrape-key")), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    prometheus = _start_prometheus(tmp_path, port, prometheus_port)
    try:
        for _ in range(100):
            if server.started:
                break
            time.sleep(0.1)
        _post_one(port, sorted((synth_folders / "covid").glob("*.png"))[0])
        value = _scraped_count(prometheus_port)
        targets = _get(f"http://127.0.0.1:{prometheus_port}/api/v1/targets")["data"]["activeTargets"]
        assert value == 1, (targets, Path(tmp_path / "prometheus.log").read_text()[-2000:])
        assert targets[0]["health"] == "up"
    finally:
        prometheus.terminate()
        prometheus.wait(30)
        server.should_exit = True
        thread.join(10)


def _start_prometheus(tmp_path, port: int, prometheus_port: int):
    """Debian's Prometheus, scraping ``127.0.0.1:port`` every second with the API key as a bearer token."""
    config = tmp_path / "prometheus.yml"
    config.write_text(f"""global:
  scrape_interval: 1s
scrape_configs:
  - job_name: ccad
    authorization:
      credentials: scrape-key
    static_configs:
      - targets: ["127.0.0.1:{port}"]
""")
    return subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "prometheus.log", "wb"),
    )


def _post_one(port: int, image: Path) -> None:
    boundary = "ccadboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + image.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/predict",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}", "X-API-Key": "scrape-key"},
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        assert answer.status == 200


def _scraped_count(prometheus_port: int, timeout_s: float = 90) -> float | None:
    """``ccad_images_scored_total{adapter="api"}`` as Prometheus has it, once it is at least 1 (None by then)."""
    query = urllib.parse.quote('ccad_images_scored_total{adapter="api"}')
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            result = _get(f"http://127.0.0.1:{prometheus_port}/api/v1/query?query={query}")["data"]["result"]
        except OSError:  # Prometheus still starting
            result = []
        if result and float(result[0]["value"][1]) >= 1:
            return float(result[0]["value"][1])
        time.sleep(0.5)
    return None


def test_each_metric_and_log_field_holds_the_value_of_what_was_observed(tmp_path):
    """LiveMetrics.observe on hand-made predictions, read back from the registry's text page: p(COVID) before the
    rule's temperature (not the decided class's probability), the drift PSI of the drift module, the flags."""
    from prometheus_client import CollectorRegistry, generate_latest

    from ccad.deploy.live_metrics import LiveMetrics, ResultLog, pseudonym
    from ccad.evaluation.drift import DriftCheck, psi
    from ccad.screening.records import Prediction

    reference = np.array([0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75] * 10)
    distances = np.linspace(10.0, 20.0, 80)
    log = tmp_path / "results.jsonl"
    monitor = LiveMetrics(
        CollectorRegistry(), "listener", "covid", DriftCheck(reference, distances, window=4, bins=4), ResultLog(log)
    )
    # (decided class, raw p(covid), calibrated p(covid), in distribution, distance, lung QC)
    seen = [
        ("normal", 0.30, 0.20, True, 11.0, []),
        ("covid", 0.80, 0.90, False, 25.0, ["no_lungs"]),
        ("normal", 0.10, 0.05, True, 12.0, ["no_lungs", "small_lungs"]),
        ("covid", 0.95, 0.99, True, 30.0, []),
    ]
    for decided, raw, calibrated, inside, distance, qc in seen:
        p = {"covid": calibrated, "normal": 1 - calibrated}
        raw_p = np.array([raw, 1 - raw])
        monitor.observe(
            Prediction("x", decided, p, inside, distance, 22.0, list(qc), raw_probabilities=raw_p), "1.2.3.4"
        )
    monitor.observe(Prediction("bad", error="not an image"))
    got = samples(generate_latest(monitor.registry).decode())
    a = (("adapter", "listener"),)
    assert got[("ccad_images_scored_total", a)] == 4 and got[("ccad_image_errors_total", a)] == 1
    assert got[("ccad_decisions_total", (*a, ("decision", "covid")))] == 2
    assert got[("ccad_decisions_total", (*a, ("decision", "normal")))] == 2
    assert got[("ccad_out_of_distribution_total", a)] == 1
    assert got[("ccad_lung_qc_flags_total", (*a, ("flag", "no_lungs")))] == 2
    assert got[("ccad_lung_qc_flags_total", (*a, ("flag", "small_lungs")))] == 1
    assert got[("ccad_score_sum", a)] == pytest.approx(0.30 + 0.80 + 0.10 + 0.95)  # raw p(covid), each class
    assert got[("ccad_score_bucket", (*a, ("le", "0.1")))] == 1 and got[("ccad_score_bucket", (*a, ("le", "0.3")))] == 2
    assert (
        got[("ccad_score_bucket", (*a, ("le", "0.8")))] == 3 and got[("ccad_score_bucket", (*a, ("le", "0.95")))] == 4
    )
    # the window is full after 4 images: the gauges hold the drift module's PSI of those 4 against the reference
    raw_scores, seen_distances = [s[1] for s in seen], [s[4] for s in seen]
    assert got[("ccad_drift_psi", (*a, ("signal", "score")))] == pytest.approx(psi(reference, raw_scores, bins=4))
    assert got[("ccad_drift_psi", (*a, ("signal", "distance")))] == pytest.approx(
        psi(distances, seen_distances, bins=4)
    )
    assert got[("ccad_drift", a)] == 1 and monitor.drift.state == "drift"  # distances all past the reference's
    _check_log(log, seen, pseudonym("1.2.3.4"))
    assert oct(log.stat().st_mode & 0o777) == "0o600" and '"score":0.3,' in log.read_text()  # compact lines
    # a prediction without raw probabilities (a bundle without a temperature) is counted by its probabilities
    monitor.observe(Prediction("y", "covid", {"covid": 0.6, "normal": 0.4}, True, 11.0, 22.0))
    assert json.loads(log.read_text().splitlines()[-1])["score"] == 0.6


def _check_log(log, seen, image):
    """The result log of ``seen`` (decision, raw p(covid), _, in distribution, distance, lung QC) field by field."""
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["score"] for r in lines] == [s[1] for s in seen] and [r["decision"] for r in lines] == [
        s[0] for s in seen
    ]
    assert [r["positive"] for r in lines] == [s[0] == "covid" for s in seen]
    assert [r["in_distribution"] for r in lines] == [s[3] for s in seen]
    assert [r["ood_distance"] for r in lines] == [s[4] for s in seen] and [r["lung_qc"] for r in lines] == [
        s[5] for s in seen
    ]
    assert {r["image"] for r in lines} == {image} and lines[-1]["drift"] == "drift"
    assert all(r["adapter"] == "listener" for r in lines)


METRICS = {  # what dashboards and alerting rules read: each family's name, type, help and labels
    "ccad_images_scored": ("counter", "Images scored", ["adapter"]),
    "ccad_image_errors": ("counter", "Images that could not be scored", ["adapter"]),
    "ccad_decisions": ("counter", "Decisions by class", ["adapter", "decision"]),
    "ccad_out_of_distribution": ("counter", "Images the guard flagged: not a frontal chest X-ray", ["adapter"]),
    "ccad_lung_qc_flags": ("counter", "Lung-check flags", ["adapter", "flag"]),
    "ccad_score": ("histogram", "Probability of the positive class", ["adapter"]),
    "ccad_drift": ("gauge", "1 while the drift state is 'drift'", ["adapter"]),
    "ccad_drift_psi": ("gauge", "Population stability index of the last window", ["adapter", "signal"]),
    "ccad_result_log_errors": ("counter", "Result-log lines that could not be written", []),
    "ccad_model_info": ("gauge", "The model bundle in use", ["card_sha256", "rule", "variant"]),
    "ccad_verdicts": ("counter", "Readers' verdicts on results, by outcome", ["adapter", "outcome"]),
    "ccad_live_lower95": (
        "gauge",
        "Wilson 95% lower bound of the live performance the readers' verdicts give",
        ["adapter", "measure"],
    ),
    "ccad_validated": ("gauge", "The level the site validated", ["adapter", "measure"]),
}


def test_the_metric_families_and_a_result_log_that_refuses_a_line(tmp_path, caplog):
    from prometheus_client import CollectorRegistry, generate_latest

    from ccad.deploy.live_metrics import LiveMetrics, ResultLog
    from ccad.evaluation.drift import DriftCheck
    from ccad.screening.records import Prediction

    (tmp_path / "log").mkdir()  # a result log that is a directory: every append fails
    monitor = LiveMetrics(CollectorRegistry(), "api", "covid", DriftCheck(None, None), ResultLog(tmp_path / "log"))
    monitor.model_info.labels("abc", "int8", "specificity-90").set(1)
    monitor.observe(Prediction("y", "covid", {"covid": 0.6, "normal": 0.4}, True, 11.0, 22.0, ["no_lungs"]))
    families = {f.name: f for f in monitor.registry.collect()}
    assert {name: (f.type, f.documentation) for name, f in families.items()} == {
        name: (kind, doc) for name, (kind, doc, _) in METRICS.items()
    }
    for name, f in families.items():
        labels = {k for s in f.samples for k in s.labels if k != "le"}
        assert sorted(labels) == (METRICS[name][2] if f.samples else []), name  # no PSI yet: no reference
    text = generate_latest(monitor.registry).decode()
    got = samples(text)
    assert got[("ccad_result_log_errors_total", ())] == 1
    assert got[("ccad_model_info", (("card_sha256", "abc"), ("rule", "specificity-90"), ("variant", "int8")))] == 1
    assert [r.getMessage() for r in caplog.records if r.name == "ccad.monitoring"] == [
        f"result log {tmp_path / 'log'}: cannot append (Is a directory)"
    ]


def test_a_screeners_monitor_names_its_bundle_and_logs_each_drift_change(tmp_path, caplog):
    import logging
    import re
    from types import SimpleNamespace

    from ccad.deploy.live_metrics import LiveMetrics

    card = SimpleNamespace(to_dict=lambda: {"b": 2, "a": 1})
    reference = np.array([0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75] * 30)
    screener = SimpleNamespace(
        ood=SimpleNamespace(reference_scores=reference, reference_distances=np.linspace(10.0, 20.0, 240)),
        positive_class="covid",
        card=card,
        variant="int8",
        decision=SimpleNamespace(rule="specificity-90"),
    )
    caplog.set_level(logging.INFO, logger="ccad.monitoring")
    monitor = LiveMetrics.for_screener(screener, "listener", result_log=tmp_path / "r.jsonl")
    assert monitor.drift.window == 200 and monitor.drift.available
    assert LiveMetrics.for_screener(screener, "api", window=50).drift.window == 50
    assert monitor.drift.reference_distances is screener.ood.reference_distances
    got = samples(generate_latest(monitor.registry).decode())
    card_hash = hashlib.sha256(b'{"a": 1, "b": 2}').hexdigest()[:16]  # the card, keys sorted
    assert got[("ccad_model_info", (("card_sha256", card_hash), ("rule", "specificity-90"), ("variant", "int8")))] == 1
    assert not caplog.records  # a reference: no warning
    for i in range(200):  # a window like the reference, then one far from it
        monitor.observe(_scored(reference[i], 10.0 + i * 0.05))
    assert [r.levelname for r in caplog.records] == ["INFO"] and "drift state ok" in caplog.records[0].getMessage()
    for i in range(200):
        monitor.observe(_scored(0.1234567, 50.0))
    assert [r.levelname for r in caplog.records] == ["INFO", "WARNING"]
    assert caplog.records[1].getMessage().startswith("drift state drift over the last 200 images")
    last = json.loads((tmp_path / "r.jsonl").read_text().splitlines()[-1])
    assert last["score"] == 0.123457 and last["drift"] == "drift"  # p(covid) to 6 places
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", last["time"])


def test_a_monitor_without_a_reference_warns_once_and_logs_no_drift_state(tmp_path, caplog):
    import logging
    from types import SimpleNamespace

    from ccad.deploy.live_metrics import LiveMetrics

    screener = SimpleNamespace(ood=None, positive_class="covid", card=None, variant="float",
                               decision=SimpleNamespace(rule=None))  # fmt: skip
    caplog.set_level(logging.INFO, logger="ccad.monitoring")
    monitor = LiveMetrics.for_screener(screener, "api", result_log=tmp_path / "r.jsonl")
    assert [r.getMessage() for r in caplog.records] == [
        "drift check unavailable: the model bundle has no reference distributions"
    ]
    got = samples(generate_latest(monitor.registry).decode())
    assert got[("ccad_model_info", (("card_sha256", ""), ("rule", ""), ("variant", "float")))] == 1
    monitor.observe(_scored(0.5, 10.0))
    assert json.loads((tmp_path / "r.jsonl").read_text())["drift"] is None


def _scored(p, distance):
    from ccad.screening.records import Prediction

    return Prediction("x", "covid" if p >= 0.5 else "normal", {"covid": p, "normal": 1 - p}, True, distance, 30.0)


def test_a_study_is_judged_once_whichever_of_its_keys_its_reports_carry():
    """The readers' finding on a study (the listener): called positive when any image was; a corrected report
    replaces the outcome even when it names the study by its UID and the first by its accession number."""
    from prometheus_client import CollectorRegistry

    from ccad.deploy.live_metrics import LiveMetrics, pseudonym
    from ccad.evaluation.drift import DriftCheck

    monitor = LiveMetrics(CollectorRegistry(), "dicom", "covid", DriftCheck(None, None))
    study = {"study": "1.2.3", "accession": "A1"}
    monitor.observe(_scored(0.2, 10.0), identity="i1", study=study)
    monitor.observe(_scored(0.8, 10.0), identity="i2", study=study)  # its repeat, called positive
    assert monitor.finding_on([pseudonym("A9")], True) is None  # a study never seen
    assert monitor.finding_on([pseudonym("A1")], False) == "false_positive"
    assert monitor.finding_on([pseudonym("1.2.3")], True) == "true_positive"  # the correction, by the UID
    assert monitor._outcomes == {"true_positive": 1, "false_negative": 0, "true_negative": 0, "false_positive": 0}
    assert monitor.live.labels("dicom", "sensitivity")._value.get() > 0 and monitor._shown == {"sensitivity", "ppv"}
