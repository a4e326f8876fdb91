"""schemathesis against a live ``ccad serve`` on 127.0.0.1: requests generated from the service's own OpenAPI
schema (property-based, Hypothesis) never get a 5xx."""

import subprocess
import sys
import time

import pytest
from helpers import free_port
from hypothesis import HealthCheck, settings

schemathesis = pytest.importorskip("schemathesis")


@pytest.fixture(scope="module")
def live_server(bundle):
    import urllib.request

    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ccad",
            "serve",
            "--model",
            str(bundle),
            "--port",
            str(port),
            "--docs",
            "--max-upload-mb",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            if urllib.request.urlopen(f"{base}/healthz", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.25)
    else:
        proc.kill()
        pytest.fail("ccad serve did not start")
    yield base
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def api_schema(live_server):
    return schemathesis.openapi.from_url(f"{live_server}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_generated_request_gets_a_server_error(case, live_server):
    from schemathesis.checks import not_a_server_error

    response = case.call(base_url=live_server, timeout=30)
    case.validate_response(response, checks=[not_a_server_error])
