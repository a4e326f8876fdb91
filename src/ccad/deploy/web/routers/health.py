"""``GET /healthz`` and ``GET /metrics`` (Prometheus text format; behind the API key when one is set)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ccad.deploy.web.dependencies import api_key
from ccad.deploy.web.guard import METRICS
from ccad.deploy.web.schemas import Health

router = APIRouter(tags=["service"])
metrics_router = APIRouter(tags=["service"], dependencies=[Depends(api_key)])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    return Health(status="ok")


@metrics_router.get(
    METRICS, response_class=PlainTextResponse, summary="Prometheus metrics: counts, scores, drift; no patient field"
)
def metrics(request: Request) -> PlainTextResponse:
    registry = request.app.state.screening.monitor.registry
    return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
