"""``ccad serve``: the CCAD web tool and REST API on ONNX Runtime (no TensorFlow).

:func:`create_app` builds the FastAPI app from :class:`ServeSettings`; nothing is
created at import time, so tests make apps with their own settings.

Routes: ``GET /`` (the page), ``GET /static/*`` (its assets: no CDN),
``POST /api/v1/predict``, ``GET /api/v1/model``, ``GET /healthz``, ``GET /metrics`` (Prometheus, behind the
API key when one is set; :mod:`ccad.deploy.monitoring`), ``/openapi.json``; ``/docs`` only with ``docs=True``
(Swagger UI loads its
scripts from a CDN).

Limits are enforced before work, in this order (:class:`Guard`, an ASGI layer in
front of the app, then the route):

1. the API key, from the headers, before a byte of the body is read -> 401 with
   ``WWW-Authenticate``;
2. the request type (``multipart/form-data``) -> 415;
3. the body size, counted as it arrives, chunked or not -> 413 past
   ``max_request_bytes``; the body must arrive within ``body_timeout_s`` of the request's arrival (time spent
   waiting for one of the ``2 x workers`` read slots counts) -> 408;
4. admission: at most ``workers + queue`` requests inside, past that -> 503 with
   ``Retry-After``; and at most ``2 x workers`` bodies being read at a time (the
   others wait without reading), so uploads in memory stay under
   ``2 x workers x max_request_bytes``;
5. per file: at most :data:`MAX_FILES` files, ``max_upload_bytes`` each -> 413; an
   allowed format by its bytes (PNG, JPEG, TIFF, BMP, DICOM) -> 415 otherwise;
   ``max_pixels`` each and ``max_request_pixels`` in all, read from the headers
   before anything is decoded -> 413;
6. decoding in a pool of ``workers`` threads, scoring in one micro-batcher
   (:mod:`ccad.deploy.batching`: the images of concurrent requests in one ONNX Runtime
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

import asyncio
import hashlib
import re
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from ccad.deploy.batching import MicroBatcher
from ccad.deploy.http import header_timeout_protocol
from ccad.deploy.monitoring import Monitor
from ccad.errors import ConfigError, ImageReadError
from ccad.io.files import atomic_path
from ccad.io.images import ImageTooLargeError, image_size, read_grayscale_bytes
from ccad.io.pictures import gray_rgb, heatmap_rgba, png_base64
from ccad.scoring.predictor import OnnxPredictor

STATIC = Path(__file__).parent / "web"
API_PREFIX = "/api/v1"
PREDICT = f"{API_PREFIX}/predict"
METRICS = "/metrics"
ALLOWED_TYPES = {
    "image/png",
    "image/jpeg",
    "image/jpg",
    "image/bmp",
    "image/x-ms-bmp",
    "image/tiff",
    "application/dicom",
    "application/octet-stream",
    "",
}
MAX_FILES = 16
#: Headers on every response: the page and its assets come from this server only; nothing frames it.
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data: blob:; script-src 'self'; "
        b"style-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
        b"form-action 'self'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
TRUE, FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off", ""}


@dataclass
class ServeSettings:
    bundle: Path
    api_key: str | None = None
    variant: str = "float"
    max_upload_bytes: int = 20 * 1024 * 1024
    max_request_bytes: int = 40 * 1024 * 1024
    max_pixels: int = 50_000_000
    max_request_pixels: int = 100_000_000
    workers: int = 2
    queue: int = 32
    timeout_s: float = 30.0
    body_timeout_s: float = 30.0
    header_timeout_s: float = 10.0
    keep_uploads: Path | None = None
    #: Micro-batching: images of concurrent requests wait up to this long to be scored together.
    batch_wait_ms: float = 5.0
    max_batch: int = 16
    docs: bool = False
    verify_key: Path | None = None
    #: ``GET /metrics`` (Prometheus text format, behind the API key when one is set) and the drift window.
    metrics: bool = True
    drift_window: int = 200
    #: Append one JSON line an image scored (:class:`ccad.deploy.monitoring.ResultLog`).
    result_log: Path | None = None

    def check(self) -> "ServeSettings":
        """Refuse settings that cannot work, at start rather than on the first request."""
        if self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {self.workers}")
        if self.queue < 0:
            raise ConfigError(f"--queue must be 0 or more, got {self.queue}")
        if self.batch_wait_ms < 0 or self.max_batch < 1:
            raise ConfigError("--batch-wait-ms must be 0 or more and --max-batch at least 1")
        if self.drift_window < 20:
            raise ConfigError(f"--drift-window must be at least 20 images, got {self.drift_window}")
        if self.max_upload_bytes < 1 or self.max_request_bytes < self.max_upload_bytes:
            raise ConfigError("--max-upload-mb must be positive and at most the request limit")
        if self.keep_uploads is not None:
            folder = Path(self.keep_uploads)
            try:
                folder.mkdir(parents=True, exist_ok=True)
                with atomic_path(folder / ".ccad-write-test") as tmp:
                    tmp.write_bytes(b"")
            except OSError as e:
                raise ConfigError(f"--keep-uploads {folder}: cannot write there ({e.strerror})") from None
            (folder / ".ccad-write-test").unlink(missing_ok=True)
        return self


class Capacity:
    """Bounded admission: at most ``limit`` requests inside; the rest are told to retry."""

    def __init__(self, limit: int):
        self._free = limit
        self._lock = threading.Lock()

    def try_enter(self) -> bool:
        with self._lock:
            if self._free == 0:
                return False
            self._free -= 1
            return True

    def leave(self) -> None:
        with self._lock:
            self._free += 1

    @property
    def free(self) -> int:
        return self._free


class HttpMetrics:
    """``ccad serve``'s own metrics: requests by route and status, their latency, and how many are inside. A
    route is one of a fixed few words (anything else is ``other``): a client cannot grow the label set."""

    ROUTES = {
        PREDICT: "predict",
        f"{API_PREFIX}/model": "model",
        "/healthz": "healthz",
        "/metrics": "metrics",
        "/": "page",
    }

    def __init__(self, registry):
        from prometheus_client import Counter, Gauge, Histogram

        from ccad.deploy.monitoring import LATENCY_BUCKETS

        self.requests = Counter(
            "ccad_http_requests", "HTTP requests by route and status", ("route", "status"), registry=registry
        )
        self.latency = Histogram(
            "ccad_http_request_seconds",
            "Time from a request's arrival to its answer",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.inside = Gauge("ccad_queue_depth", "Prediction requests admitted and not yet answered", registry=registry)

    def done(self, path: str, status: int, seconds: float) -> None:
        route = self.ROUTES.get(path, "static" if path.startswith("/static/") else "other")
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)


class Guard:
    """ASGI layer in front of the app: security headers on every response; for the API the key, and for
    ``POST /api/v1/predict`` the content type, admission and the body (read here, counted as it arrives,
    within its time limit), all before the app sees the request."""

    def __init__(self, app, settings: ServeSettings, http_metrics: "HttpMetrics | None" = None):
        self.app, self.settings, self.http_metrics = app, settings, http_metrics
        self.capacity = Capacity(settings.workers + settings.queue)
        self.reading = asyncio.Semaphore(2 * settings.workers)
        if http_metrics is not None:
            http_metrics.inside.set_function(lambda: settings.workers + settings.queue - self.capacity.free)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.http_metrics is None:
            return await self._guarded(scope, receive, send)
        started, status = time.perf_counter(), [500]

        async def counted(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self._guarded(scope, receive, counted)
        finally:
            self.http_metrics.done(scope["path"], status[0], time.perf_counter() - started)

    async def _guarded(self, scope, receive, send):
        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = dict(message, headers=[*message.get("headers", []), *SECURITY_HEADERS])
            await send(message)

        path, headers = scope["path"], dict(scope["headers"])
        if (path.startswith(API_PREFIX) or path == METRICS) and not _key_ok(headers, self.settings.api_key):
            return await _answer(
                send_with_headers,
                401,
                "missing or wrong API key (X-API-Key header or Authorization: Bearer)",
                {"WWW-Authenticate": 'Bearer realm="ccad"'},
            )
        if scope["method"] != "POST" or path != PREDICT:
            return await self.app(scope, receive, send_with_headers)
        if not headers.get(b"content-type", b"").startswith(b"multipart/form-data"):
            return await _answer(send_with_headers, 415, "send the files as multipart/form-data in the field 'files'")
        limit = self.settings.max_request_bytes
        too_large = f"request over the limit of {limit / 2**20:g} MB"
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            return await _answer(send_with_headers, 413, too_large)
        if not self.capacity.try_enter():
            return await _answer(
                send_with_headers, 503, "busy: all inference workers are taken; retry shortly", {"Retry-After": "1"}
            )
        try:
            try:  # the deadline runs from the request's arrival: waiting for a read slot counts
                body = await asyncio.wait_for(self._read_in_turn(receive, limit), self.settings.body_timeout_s)
            except asyncio.TimeoutError:
                return await _answer(send_with_headers, 408, "the request body did not arrive in time")
            if body is None:
                return await _answer(send_with_headers, 413, too_large)
            sent = False

            async def replay():
                nonlocal sent
                if sent:
                    return await receive()  # after the body: wait for the client to go away
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}

            await self.app(scope, replay, send_with_headers)
        finally:
            self.capacity.leave()

    async def _read_in_turn(self, receive, limit: int) -> bytes | None:
        """The body, read once one of the ``2 x workers`` read slots is free (a slow client holds one at most
        until its deadline)."""
        async with self.reading:
            return await _read_body(receive, limit)


async def _read_body(receive, limit: int) -> bytes | None:
    """The whole request body, or None as soon as it passes ``limit`` bytes (chunked or not)."""
    chunks, seen = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        seen += len(chunk)
        if seen > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _answer(send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    await JSONResponse({"detail": detail}, status, headers=headers)({"type": "http"}, None, send)


def _key_ok(headers: dict[bytes, bytes], key: str | None) -> bool:
    if not key:
        return True
    given = headers.get(b"x-api-key", b"")
    auth = headers.get(b"authorization", b"")
    if not given and auth.lower().startswith(b"bearer "):
        given = auth[7:].strip()
    return secrets.compare_digest(given, key.encode())


def decision_view(predictor) -> dict[str, Any]:
    """How a probability becomes the class shown, in words a reader can check against the bars."""
    rule, positive = predictor.decision, predictor.positive_class
    text = (
        f"{positive} if p({positive}) >= {rule.threshold:.3f}, else the most likely other class"
        if rule.threshold is not None
        else "the most likely class"
    )
    fitted_on = _without_paths(rule.fitted_on)
    return {
        "positive_class": positive,
        "threshold": rule.threshold,
        "rule": rule.rule,
        "fitted_on": fitted_on,
        "text": text + (f" ({rule.rule}, chosen on {fitted_on})" if fitted_on else ""),
    }


def data_names(source: str) -> list[str]:
    """Readable names of a training data description ("../shared/data/covid-cxr/manifest.csv + ..."): a
    manifest by its folder's name, a folder by its own."""
    names = []
    for part in str(source or "").split(" + "):
        part = part.split(" (")[0].strip()
        path = Path(part)
        names.append(path.parent.name if path.suffix.lower() == ".csv" and path.parent.name else path.name)
    return [n for n in names if n]


def model_card_view(card) -> dict[str, Any]:
    """What the page and ``GET /api/v1/model`` show (from a :class:`ccad.models.card.ModelCard`): no file
    hashes or internals, and no server paths (a path is shown by its last part)."""
    card = card.to_dict()
    keep = (
        "intended_use",
        "classes",
        "positive_class",
        "input_size",
        "backbone",
        "weights",
        "training_data",
        "evaluation",
        "preprocessing",
        "preprocess",
        "decision",
        "heatmap",
        "ood",
        "lung_segmenter",
        "versions",
    )
    view = _without_paths({k: card.get(k) for k in keep})
    if isinstance(view.get("training_data"), dict):
        view["training_data"]["names"] = data_names(card["training_data"].get("source", ""))
    if isinstance(view.get("evaluation"), dict):
        view["evaluation"]["names"] = data_names(card["evaluation"].get("data", ""))
    view["caveat"] = (
        "Screening aid for research, not a diagnosis. The metrics come only from the data named; "
        "images from other hospitals or scanners can score far worse."
    )
    return view


_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\s\\/'\"()]+)+[\\/]([^\s\\/'\"()]+)")


def _without_paths(value):
    if isinstance(value, dict):
        return {k: _without_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_paths(v) for v in value]
    if isinstance(value, str):
        return _PATH.sub(lambda m: m.group(1), value)
    return value


def create_app(settings: ServeSettings):
    """The FastAPI application for one model bundle."""
    settings.check()
    predictor = OnnxPredictor.load(
        settings.bundle, variant=settings.variant, threads=max(1, settings.workers), verify_key=settings.verify_key
    )
    card = model_card_view(predictor.card)
    pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="ccad-decode")
    batcher = MicroBatcher(predictor, max_batch=settings.max_batch, wait_s=settings.batch_wait_ms / 1000).start()
    monitor = Monitor.for_predictor(predictor, "api", settings.result_log, window=settings.drift_window)

    @asynccontextmanager
    async def lifespan(app):
        yield
        pool.shutdown(wait=False, cancel_futures=True)
        batcher.close()

    app = FastAPI(
        title="ccad",
        version=(predictor.card.versions or {}).get("ccad", ""),
        description="COVID-19 chest X-ray screening aid (research use, not a diagnosis).",
        docs_url="/docs" if settings.docs else None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.settings, app.state.predictor, app.state.pool = settings, predictor, pool
    app.state.batcher, app.state.monitor = batcher, monitor

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):  # never echo the input back
        return JSONResponse({"detail": [{"loc": e.get("loc"), "msg": e.get("msg")} for e in exc.errors()]}, 422)

    @app.get("/healthz", tags=["service"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(f"{API_PREFIX}/model", tags=["model"])
    def model() -> dict[str, Any]:
        return card

    @app.post(PREDICT, tags=["model"], openapi_extra=_PREDICT_BODY)
    async def predict(request: Request) -> dict[str, Any]:
        files, heatmap = await _read_form(request, settings)
        try:
            results = await asyncio.wait_for(_predict(files, heatmap), settings.timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(503, "inference timed out; retry shortly", headers={"Retry-After": "5"})
        except ImageTooLargeError as e:
            raise HTTPException(413, str(e))
        except ImageReadError as e:
            raise HTTPException(400, str(e))
        model = {
            "classes": predictor.classes,
            "positive_class": predictor.positive_class,
            "decision": decision_view(predictor),
        }
        if predictor.warning:
            model["warning"] = predictor.warning
        return {"results": results, "model": model, "note": "Screening aid, not a diagnosis."}

    async def _predict(files: list[tuple[str, bytes]], heatmap: bool) -> list[dict]:
        """Decode in the pool, score in the micro-batcher (with other requests' images), and draw the
        pictures (if asked) in the pool again."""
        loop = asyncio.get_running_loop()
        prepared = await loop.run_in_executor(pool, _prepare, predictor, files, settings)
        predictions = await asyncio.gather(
            *(asyncio.wrap_future(batcher.submit(name, p, heatmap)) for name, p in prepared)
        )
        for (_, data), prediction in zip(files, predictions):
            monitor.observe(prediction, identity=data)
        if heatmap:
            return await loop.run_in_executor(pool, _render, predictions)
        return [prediction.to_dict(key="name") for prediction in predictions]

    if settings.metrics:

        @app.get(
            METRICS,
            tags=["service"],
            response_class=PlainTextResponse,
            summary="Prometheus metrics: counts, scores, drift; no patient field",
        )
        def metrics() -> PlainTextResponse:
            return PlainTextResponse(generate_latest(monitor.registry), media_type=CONTENT_TYPE_LATEST)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html")

    return Guard(app, settings, HttpMetrics(monitor.registry) if settings.metrics else None)


_PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "maxItems": MAX_FILES,
                            "description": "PNG, JPEG, TIFF, BMP or DICOM chest X-rays",
                        },
                        "heatmap": {"type": "boolean", "default": False},
                    },
                }
            }
        },
    }
}


async def _parse_in_memory(request: Request, settings: ServeSettings):
    """The multipart form, every file part in memory: Starlette's parser spools a part to a temporary file past
    1 MB, and its threshold is a class attribute; this parser's own (an instance attribute) is above the request
    limit, so nothing is patched for the process and no upload reaches the disk."""
    async with aclosing(request.stream()) as stream:
        parser = MultiPartParser(
            request.headers, stream, max_files=MAX_FILES, max_fields=MAX_FILES + 8, max_part_size=64 * 1024
        )
        parser.spool_max_size = settings.max_request_bytes + 1
        return await parser.parse()


async def _read_form(request: Request, settings: ServeSettings) -> tuple[list[tuple[str, bytes]], bool]:
    """The uploads and the heatmap flag, with every per-file limit checked before any pixel is decoded."""
    try:
        form = await _parse_in_memory(request, settings)
    except (MultiPartException, StarletteHTTPException) as e:  # Starlette turns the first into the second
        message = str(getattr(e, "detail", None) or e)[:120]
        over = "Too many" in message or "exceeded" in message
        raise HTTPException(413 if over else 400, message if over else f"malformed multipart body ({message})")
    uploads = [v for k, v in form.multi_items() if k == "files"]
    if not uploads:
        raise HTTPException(400, "no files in the field 'files'")
    if not all(isinstance(u, UploadFile) for u in uploads):
        raise HTTPException(400, "the field 'files' must hold files, not text")
    flag = str(form.get("heatmap", "") or "").strip().lower()
    if flag not in TRUE | FALSE:
        raise HTTPException(400, "heatmap must be true or false")
    files, pixels = [], 0
    for i, upload in enumerate(uploads):
        name = (upload.filename or f"file{i}")[:200]
        part = f"files[{i}]"  # what an error answer names: never the client's file name or content type
        content_type = (upload.content_type or "").split(";")[0].strip().lower()
        if content_type not in ALLOWED_TYPES:
            raise HTTPException(415, f"{part}: its content type is not an image type (PNG, JPEG, TIFF, BMP or DICOM)")
        data = await upload.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise HTTPException(413, f"{part}: over the upload limit of {settings.max_upload_bytes // 2**20} MB")
        if not data:
            raise HTTPException(400, f"{part}: empty file")
        try:
            width, height = image_size(data, part, settings.max_pixels)
        except ImageTooLargeError as e:
            raise HTTPException(413, str(e))
        except ImageReadError as e:  # a header that cannot be read (a corrupt deflate stream, say)
            raise HTTPException(400, str(e))
        if width * height > settings.max_pixels:
            raise HTTPException(
                413, f"{part}: image is {width}x{height} pixels, over the limit of {settings.max_pixels:,}"
            )
        pixels += width * height
        if pixels > settings.max_request_pixels:
            raise HTTPException(413, f"the request's images hold over {settings.max_request_pixels:,} pixels in all")
        files.append((name, data))
    return files, flag in TRUE


def _prepare(
    predictor: OnnxPredictor, uploads: list[tuple[str, bytes]], settings: ServeSettings
) -> list[tuple[str, Any]]:
    """Decode and preprocess one request's files (in a pool thread), one full-size image in memory at a time."""
    prepared = []
    for i, (name, data) in enumerate(uploads):
        gray = read_grayscale_bytes(data, f"files[{i}]", settings.max_pixels)
        if settings.keep_uploads:
            _keep(data, gray, settings.keep_uploads)
        prepared.append((name, predictor.prepare(gray)))
        del gray
    return prepared


def _render(predictions) -> list[dict]:
    """The JSON of each result with its pictures as PNGs: the original X-ray first, then what the model saw."""
    results = []
    for prediction in predictions:
        result = prediction.to_dict(key="name")
        pictures = prediction.pictures
        if pictures is not None:
            result["original"] = png_base64(gray_rgb(pictures.original, pictures.lung_outline))
            result["original_heatmap"] = png_base64(heatmap_rgba(pictures.original_heatmap))
            result["image"] = png_base64(gray_rgb(pictures.image))
            result["heatmap"] = png_base64(heatmap_rgba(pictures.heatmap))
        results.append(result)
    return results


def _keep(data: bytes, gray: np.ndarray, folder: Path) -> None:
    """Store what an upload decoded to, as a 16-bit PNG of its pixels only (no file name, no DICOM header:
    no patient field reaches the disk), named by the upload's sha256, readable by the server's user only."""
    import os

    from PIL import Image

    target = Path(folder) / f"{hashlib.sha256(data).hexdigest()}.png"
    with atomic_path(target) as tmp:
        Image.fromarray((gray * 65535).round().astype(np.uint16)).save(tmp, format="PNG")
        os.chmod(tmp, 0o600)


def serve(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

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
