"""What a route needs, as FastAPI dependencies: the screening service and the settings from the app's state,
and the API key (checked by the guard before the body is read; declared here so that the OpenAPI schema says
how to send it)."""

from __future__ import annotations

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from ccad.deploy.web.guard import key_ok
from ccad.deploy.web.service import WebScreening
from ccad.deploy.web.settings import ServeSettings

_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the key given to ccad serve --api-key")
_bearer = HTTPBearer(auto_error=False, description="the same key as a bearer token")


def settings(request: Request) -> ServeSettings:
    return request.app.state.settings


def screening(request: Request) -> WebScreening:
    return request.app.state.screening


def api_key(
    request: Request,
    header: str | None = Security(_header),
    bearer: HTTPAuthorizationCredentials | None = Security(_bearer),
    config: ServeSettings = Depends(settings),
) -> None:
    """The key, again: the guard has refused a request without it before reading its body."""
    if not key_ok({k.lower(): v for k, v in request.headers.raw}, config.api_key):
        raise HTTPException(401, "missing or wrong API key", headers={"WWW-Authenticate": 'Bearer realm="ccad"'})
