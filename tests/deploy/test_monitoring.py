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

import pytest
from fastapi.testclient import TestClient
from helpers import free_port
from prometheus_client.parser import text_string_to_metric_families

from ccad.deploy.web import ServeSettings, create_app

PROMETHEUS = shutil.which("prometheus")


def samples(text: str) -> dict[tuple, float]:
    """{(sample name, sorted labels): value} of a Prometheus text page."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


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


def _get(url: str, headers=None) -> dict:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as answer:
        return json.loads(answer.read())


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
