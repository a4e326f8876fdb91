"""Readers' verdicts and the live performance they give: the counts and Wilson lower bounds equal a hand count,
the alerting rules ccad ships pass promtool, and a real Prometheus evaluates them and fires when the live lower
bound falls under the level the site validated."""

import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import free_port, samples
from helpers import get_json as _get
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from scipy.stats import binomtest

import ccad
from ccad.deploy.live_metrics import LiveMetrics
from ccad.evaluation.drift import DriftCheck

RULES = Path(ccad.__file__).parent / "deploy" / "prometheus" / "ccad-alerts.yml"
PROMETHEUS, PROMTOOL = shutil.which("prometheus"), shutil.which("promtool")


def _metrics() -> LiveMetrics:
    return LiveMetrics(CollectorRegistry(), "dicom", "covid", DriftCheck(None, None))


def _feed(metrics: LiveMetrics, tp=0, fn=0, tn=0, fp=0) -> None:
    for called, truth, n in ((True, True, tp), (False, True, fn), (False, False, tn), (True, False, fp)):
        for _ in range(n):
            metrics.verdict(called_positive=called, truly_positive=truth)


def test_the_live_measures_are_the_hand_counted_shares_with_their_wilson_lower_bounds():
    metrics = _metrics()
    _feed(metrics, tp=14, fn=6, tn=27, fp=3)  # ccad wrong on 6 of 20 positives and 3 of 30 negatives
    got = samples(generate_latest(metrics.registry).decode())
    for outcome, n in {"true_positive": 14, "false_negative": 6, "true_negative": 27, "false_positive": 3}.items():
        assert got[("ccad_verdicts_total", (("adapter", "dicom"), ("outcome", outcome)))] == n
    for measure, (k, n) in {"sensitivity": (14, 20), "specificity": (27, 30), "ppv": (14, 17)}.items():
        low = binomtest(k, n).proportion_ci(method="wilson").low
        assert got[("ccad_live_lower95", (("adapter", "dicom"), ("measure", measure)))] == pytest.approx(low)
    with pytest.raises(ccad.errors.ConfigError, match="accuracy"):
        metrics.validated_levels(accuracy=0.9)


@pytest.mark.skipif(PROMTOOL is None, reason="Debian's prometheus (promtool) is not installed; .ci/run installs it")
def test_the_shipped_alerting_rules_pass_promtool():
    checked = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert checked.returncode == 0 and "SUCCESS: 2 rules found" in checked.stdout, checked.stdout + checked.stderr


def _alerts(prometheus_port: int) -> list[dict]:
    try:
        return _get(f"http://127.0.0.1:{prometheus_port}/api/v1/alerts")["data"]["alerts"]
    except OSError:  # still starting
        return []


def _start(tmp_path: Path, target: int, port: int) -> subprocess.Popen:
    (tmp_path / "ccad-alerts.yml").write_bytes(RULES.read_bytes())
    config = tmp_path / "prometheus.yml"
    config.write_text(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [ccad-alerts.yml]
scrape_configs:
  - job_name: ccad
    static_configs:
      - targets: ["127.0.0.1:{target}"]
""")
    command = [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}"]
    command.append(f"--web.listen-address=127.0.0.1:{port}")
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "wb"))


def _wait(condition, timeout_s: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    pytest.fail(f"{what} after {timeout_s:g} s; prometheus said: {log.read_text()[-1500:]}")


@pytest.mark.skipif(PROMETHEUS is None, reason="Debian's prometheus is not installed (.ci/run installs it)")
def test_a_real_prometheus_fires_when_the_live_sensitivity_falls_under_the_validated_level(tmp_path):
    metrics = _metrics()
    metrics.validated_levels(sensitivity=0.80)
    _feed(metrics, tp=60, tn=60)  # sensitivity 60/60: lower bound 0.94, over 0.80
    target, port = free_port(), free_port()
    server, _ = start_http_server(target, "127.0.0.1", registry=metrics.registry)
    prometheus = _start(tmp_path, target, port)
    log = tmp_path / "prometheus.log"
    try:
        query = f"http://127.0.0.1:{port}/api/v1/query?query=ccad_live_lower95"
        _wait(lambda: _scraped(query), 90, "no scrape of ccad_live_lower95", log)
        time.sleep(3)  # a few evaluations with the good figures
        assert [a for a in _alerts(port) if a["labels"]["alertname"] == "CcadLiveBelowValidated"] == []
        _feed(metrics, fn=40)  # now wrong on 40 of 100 positives: 60/100, lower bound 0.50
        firing = lambda: [  # noqa: E731
            a for a in _alerts(port) if a["labels"]["alertname"] == "CcadLiveBelowValidated" and a["state"] == "firing"
        ]
        _wait(firing, 60, "the alert did not fire", log)
        (alert,) = firing()
        assert alert["labels"]["measure"] == "sensitivity" and alert["labels"]["severity"] == "critical"
        assert float(alert["value"]) == pytest.approx(binomtest(60, 100).proportion_ci(method="wilson").low)
    finally:
        prometheus.terminate()
        prometheus.wait(30)
        server.shutdown()


def _scraped(query: str) -> bool:
    try:
        with urllib.request.urlopen(query, timeout=5) as answer:
            return b'"measure":"sensitivity"' in answer.read()
    except OSError:
        return False
