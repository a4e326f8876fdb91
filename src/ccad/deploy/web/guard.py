"""The request guard, ASGI middleware in front of the app: security headers on every response; for the API the
key, and for ``POST /api/v1/predict`` the content type, admission and the body (read here, counted as it
arrives, within its time limit), all before the app sees the request. And ``ccad serve``'s own HTTP metrics."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time

from fastapi.responses import JSONResponse

from ccad.deploy.web.settings import ServeSettings

API_PREFIX = "/api/v1"
PREDICT = f"{API_PREFIX}/predict"
METRICS = "/metrics"
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
        if (path.startswith(API_PREFIX) or path == METRICS) and not key_ok(headers, self.settings.api_key):
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


def key_ok(headers: dict[bytes, bytes], key: str | None) -> bool:
    if not key:
        return True
    given = headers.get(b"x-api-key", b"")
    auth = headers.get(b"authorization", b"")
    if not given and auth.lower().startswith(b"bearer "):
        given = auth[7:].strip()
    return secrets.compare_digest(given, key.encode())
