"""schemathesis against a live ``ccad serve`` on 127.0.0.1: requests generated from the service's own OpenAPI
schema (property-based, Hypothesis) never get a 5xx."""

import pytest
from hypothesis import HealthCheck, settings
from live_server import serving

schemathesis = pytest.importorskip("schemathesis")


@pytest.fixture(scope="module")
def live_server(bundle):
    with serving(bundle, "--docs", "--max-upload-mb", "1") as (port, _):
        yield f"http://127.0.0.1:{port}"


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
