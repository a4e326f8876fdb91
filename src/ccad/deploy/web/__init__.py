"""``ccad serve``: the CCAD web tool and REST API on ONNX Runtime (no TensorFlow).

:func:`create_app` builds the FastAPI app from :class:`ServeSettings`; nothing is
created at import time, so tests make apps with their own settings. The layout is FastAPI's "bigger
applications": :mod:`~ccad.deploy.web.settings` (one typed class), :mod:`~ccad.deploy.web.guard` (the ASGI
middleware below), :mod:`~ccad.deploy.web.intake` (the per-file checks), :mod:`~ccad.deploy.web.service`
(a request's uploads through the app's :class:`~ccad.screening.service.ScreeningService`, started by the
lifespan), :mod:`~ccad.deploy.web.dependencies` (``Annotated`` aliases for what routes take),
:mod:`~ccad.deploy.web.schemas` (pydantic answers: the OpenAPI schema is generated from them) and one
router per resource in :mod:`~ccad.deploy.web.routers`.

Routes: ``GET /`` (the page), ``GET /static/*`` (its assets: no CDN), ``POST /api/v1/predict``,
``POST /api/v1/verdicts`` (a reader's verdict on a result: JSON, at most 4 KB), ``GET /api/v1/model``,
``GET /healthz``, ``GET /metrics`` (Prometheus, behind the API key when one is set;
:mod:`ccad.deploy.live_metrics`), ``/openapi.json``; ``/docs`` only with ``docs=True`` (Swagger UI loads its
scripts from a CDN).

Limits are enforced before work, in this order (:class:`~ccad.deploy.web.guard.Guard`, ASGI middleware
in front of the routes, then the route):

1. the API key, from the headers, before a byte of the body is read -> 401 with
   ``WWW-Authenticate``;
2. the request type (``multipart/form-data``) -> 415;
3. the body size, counted as it arrives, chunked or not -> 413 past
   ``max_request_bytes``; the body must arrive within ``body_timeout_s`` of the request's arrival, and, after
   a 5 s grace, at 240 bytes a second on average at least (Kestrel's minimum data rate) -> 408 as soon as it
   falls below; the bodies in flight hold at most ``4 x max_request_bytes`` together -> 503 past that. A body
   is read before the request takes an inference slot: a slow client holds no one else up;
4. admission: at most ``workers + queue`` requests with their body inside, past that -> 503 with
   ``Retry-After``;
5. per file: at most :data:`MAX_FILES` files, ``max_upload_bytes`` each -> 413; an
   allowed format by its bytes (PNG, JPEG, TIFF, BMP, DICOM) -> 415 otherwise;
   ``max_pixels`` each and ``max_request_pixels`` in all, read from the headers
   before anything is decoded -> 413;
6. decoding in a pool of ``workers`` threads, scoring in one thread that batches
   (:class:`ccad.screening.service.ScreeningService`: the images of concurrent requests in one ONNX Runtime
   call, after at most ``batch_wait_ms``); a request that does not finish within
   ``timeout_s`` -> 503.

Uploads stay in memory (Starlette's spooling threshold is above the request
limit). With ``keep_uploads`` each image is stored as the pixels it decoded to (a
16-bit PNG, no DICOM header, so no patient fields), named by the upload's sha256,
mode 0600. Error bodies never echo what was sent. Every response carries a
Content-Security-Policy and the usual hardening headers. The HTTP server closes a
connection that has not sent a request's headers within ``header_timeout_s``
(slow clients), and it has no global connection cap, so ``/healthz`` answers
while idle sockets are open.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from ccad.deploy.live_metrics import LiveMetrics, ResultLog, validated_of
from ccad.deploy.web.guard import Guard, HttpMetrics
from ccad.deploy.web.routers import health, model, page, predict, verdicts
from ccad.deploy.web.schemas import ModelSummary
from ccad.deploy.web.settings import ServeSettings
from ccad.deploy.web.views import data_names, decision_view, model_card_view
from ccad.screening import Intake, Screener, ScreeningService, one_blas_thread

__all__ = ["ServeSettings", "create_app", "data_names", "decision_view", "model_card_view", "serve"]


@asynccontextmanager
async def lifespan(app: FastAPI):
    app.state.service.start()
    try:
        yield
    finally:
        app.state.service.close()


async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    """A request that does not validate: where and why, never the input itself."""
    return JSONResponse({"detail": [{"loc": e.get("loc"), "msg": e.get("msg")} for e in exc.errors()]}, 422)


def create_app(settings: ServeSettings) -> FastAPI:
    """The FastAPI application for one model bundle: the bundle loaded and checked here (a bad one is an error
    now, not on the first request); the decoding pool and the batcher start with the app's lifespan."""
    settings.check()
    one_blas_thread()
    screener = Screener.load(
        settings.bundle,
        variant=settings.variant,
        threads=max(1, settings.workers),
        verify_key=settings.verify_key,
        intake=Intake(settings.max_upload_bytes, settings.max_pixels),
    )
    monitor = LiveMetrics.for_screener(screener, "api", settings.result_log, window=settings.drift_window)
    monitor.verdict_log = ResultLog(settings.verdict_log).check() if settings.verdict_log else None
    monitor.validated_levels(**validated_of(settings))
    app = FastAPI(
        title="ccad",
        version=(screener.card.versions or {}).get("ccad", ""),
        description="COVID-19 chest X-ray screening aid (research use, not a diagnosis).",
        docs_url="/docs" if settings.docs else None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.settings, app.state.monitor = settings, monitor
    app.state.card_view, app.state.model_summary = model_card_view(screener.card), model_summary(screener)
    app.state.service = ScreeningService(
        screener, settings.workers, settings.max_batch, settings.batch_wait_ms / 1000, keep=settings.keep_uploads
    )
    app.add_exception_handler(RequestValidationError, invalid)
    app.include_router(health.router)
    app.include_router(model.router)
    app.include_router(predict.router)
    app.include_router(verdicts.router)
    if settings.metrics:
        app.include_router(health.metrics_router)
    app.include_router(page.router)
    app.mount("/static", StaticFiles(directory=page.STATIC), name="static")
    app.add_middleware(
        Guard, settings=settings, http_metrics=HttpMetrics(monitor.registry) if settings.metrics else None
    )
    return app


def model_summary(screener: Screener) -> ModelSummary:
    """What every answer says of the model (built once, at start)."""
    summary = {"classes": screener.classes, "positive_class": screener.positive_class}
    if screener.warning:
        summary["warning"] = screener.warning
    return ModelSummary(**summary, decision=decision_view(screener))


def serve(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

    from ccad.deploy.http import header_timeout_protocol
    from ccad.deploy.logs import configure_logging

    configure_logging()
    app = create_app(settings)
    uvicorn.run(
        app,
        host=host,
        port=port,
        timeout_keep_alive=5,
        log_level="info",
        access_log=False,
        log_config=None,
        http=header_timeout_protocol(settings.header_timeout_s),
    )
