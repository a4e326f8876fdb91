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
VERDICTS = f"{API_PREFIX}/verdicts"
#: The largest verdict body (a few fields of JSON).
MAX_VERDICT_BYTES = 4096
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
        VERDICTS: "verdicts",
        f"{API_PREFIX}/model": "model",
        "/healthz": "healthz",
        "/metrics": "metrics",
        "/": "page",
    }

    def __init__(self, registry):
        from prometheus_client import Counter, Gauge, Histogram

        from ccad.deploy.live_metrics import LATENCY_BUCKETS

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
        #: what the bodies in flight may hold together: four full requests
        self.buffered = Budget(4 * settings.max_request_bytes)
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
        if scope["method"] != "POST" or path not in (PREDICT, VERDICTS):
            return await self.app(scope, receive, send_with_headers)
        kind, limit, how = (
            (b"multipart/form-data", self.settings.max_request_bytes, "the files as multipart/form-data in 'files'")
            if path == PREDICT
            else (b"application/json", MAX_VERDICT_BYTES, "the verdict as application/json")
        )
        if not headers.get(b"content-type", b"").startswith(kind):
            return await _answer(send_with_headers, 415, f"send {how}")
        too_large = f"request over the limit of {limit / 2**20:g} MB" if path == PREDICT else f"over {limit} bytes"
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            return await _answer(send_with_headers, 413, too_large)
        try:  # the body first, holding no inference slot: a slow client keeps no one else waiting
            body = await _read_body(receive, limit, self.buffered, self.settings.body_timeout_s)
        except ClientGone:
            return None
        except SlowBody as e:
            return await _answer(send_with_headers, 408, str(e))
        except BufferFull:
            return await _answer(
                send_with_headers, 503, "busy: too many uploads in progress; retry shortly", {"Retry-After": "1"}
            )
        if body is None:
            return await _answer(send_with_headers, 413, too_large)
        try:
            await self._answer_with(body, scope, receive, send_with_headers)
        finally:
            self.buffered.give(len(body))

    async def _answer_with(self, body: bytes, scope, receive, send) -> None:
        """The app's answer to a request whose ``body`` has arrived, once an inference slot is free (else 503)."""
        if not self.capacity.try_enter():
            return await _answer(
                send, 503, "busy: all inference workers are taken; retry shortly", {"Retry-After": "1"}
            )
        try:
            sent = False

            async def replay():
                nonlocal sent
                if sent:
                    return await receive()  # after the body: wait for the client to go away
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}

            await self.app(scope, replay, send)
        finally:
            self.capacity.leave()


#: A body must arrive at this many bytes a second on average once :data:`GRACE_S` has passed, or it is cut
#: with 408 (Kestrel's MinRequestBodyDataRate): a client dripping bytes holds a connection for seconds, not for
#: as long as it likes.
MIN_BODY_RATE = 240
GRACE_S = 5.0


class SlowBody(Exception):
    """A body that fell below :data:`MIN_BODY_RATE` or passed its deadline (408)."""


class BufferFull(Exception):
    """The bodies in flight hold all the bytes the server buffers (503)."""


class Budget:
    """Bytes the bodies being read and answered may hold together: past it an upload is told to retry."""

    def __init__(self, limit: int):
        self.limit, self.held = limit, 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if self.held + n > self.limit:
                return False
            self.held += n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.held -= n


class ClientGone(Exception):
    """The client disconnected before its body was whole: nothing to answer."""


async def _read_body(receive, limit: int, budget: Budget, timeout_s: float) -> bytes | None:
    """The whole request body, or None as soon as it passes ``limit`` bytes (chunked or not). Each chunk must
    come before the body's average rate falls below :data:`MIN_BODY_RATE` (after :data:`GRACE_S`) and before
    ``timeout_s`` from its start (:class:`SlowBody`); a client that leaves first raises :class:`ClientGone`.
    Its bytes are taken from ``budget`` (:class:`BufferFull`) and given back on every way out but a returned
    body, whose bytes the caller gives back once the request is answered."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    chunks, held, whole = [], 0, False
    try:
        while True:
            due = min(start + timeout_s, start + max(GRACE_S, held / MIN_BODY_RATE))
            try:
                message = await asyncio.wait_for(receive(), max(0.0, due - loop.time()))
            except asyncio.TimeoutError:
                late = due >= start + timeout_s
                raise SlowBody(
                    "the request body did not arrive in time"
                    if late
                    else f"the request body arrived slower than {MIN_BODY_RATE} bytes a second"
                ) from None
            if message["type"] == "http.disconnect":
                raise ClientGone()
            chunk = message.get("body", b"")
            if held + len(chunk) > limit:
                return None
            if not budget.take(len(chunk)):
                raise BufferFull()
            chunks.append(chunk)
            held += len(chunk)
            if not message.get("more_body", False):
                whole = True
                return b"".join(chunks)
    finally:
        if not whole:  # refused, too large, gone, cancelled or failed: its bytes go back at once
            budget.give(held)


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
