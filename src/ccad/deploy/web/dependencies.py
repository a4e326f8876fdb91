"""What a route needs, as FastAPI dependencies with ``Annotated`` aliases (FastAPI's own way): the settings,
the screening service, the monitor and the model's summary from the app's state, and the API key (checked by
the guard before the body is read; declared here so that the OpenAPI schema says how to send it).

    async def predict(request: Request, service: Service, config: Settings) -> PredictAnswer: ...
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from ccad.deploy.live_metrics import LiveMetrics
from ccad.deploy.web.guard import key_ok
from ccad.deploy.web.schemas import ModelSummary
from ccad.deploy.web.settings import ServeSettings
from ccad.screening import ScreeningService

_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the key given to ccad serve --api-key")
_bearer = HTTPBearer(auto_error=False, description="the same key as a bearer token")


def _settings(request: Request) -> ServeSettings:
    return request.app.state.settings


def _service(request: Request) -> ScreeningService:
    return request.app.state.service


def _monitor(request: Request) -> LiveMetrics:
    return request.app.state.monitor


def _model_summary(request: Request) -> ModelSummary:
    return request.app.state.model_summary


Settings = Annotated[ServeSettings, Depends(_settings)]
Service = Annotated[ScreeningService, Depends(_service)]
Metrics = Annotated[LiveMetrics, Depends(_monitor)]
Summary = Annotated[ModelSummary, Depends(_model_summary)]


def api_key(
    request: Request,
    config: Settings,
    header: str | None = Security(_header),
    bearer: HTTPAuthorizationCredentials | None = Security(_bearer),
) -> None:
    """The key, again: the guard has refused a request without it before reading its body."""
    if not key_ok({k.lower(): v for k, v in request.headers.raw}, config.api_key):
        raise HTTPException(401, "missing or wrong API key", headers={"WWW-Authenticate": 'Bearer realm="ccad"'})
