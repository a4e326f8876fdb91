"""``GET /healthz`` and ``GET /metrics`` (Prometheus text format; behind the API key when one is set)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ccad.deploy.web.dependencies import Metrics, api_key
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
def metrics(monitor: Metrics) -> PlainTextResponse:
    return PlainTextResponse(generate_latest(monitor.registry), media_type=CONTENT_TYPE_LATEST)
