"""A misbehaving DICOMweb archive on 127.0.0.1 (for the tests and the benchmarks): each first path segment is a
behaviour, so ``http://127.0.0.1:PORT/big`` is an archive whose QIDO-RS answers are too large.

- ``big``: a QIDO-RS answer of ``Archive.big_mb`` MB (valid JSON: a list and spaces), sent in 1 MB writes;
- ``endless``: a full page of new instance UIDs at every offset, for ever;
- ``same``: the same full page whatever the offset;
- ``drip``: one byte every 0.2 s;
- ``dripwado``: one instance found, whose WADO-RS answer drips a byte every 0.2 s;
- ``away``: a redirect to another port (``Archive.other_port``); ``here``: a redirect on the same origin to
  ``same``; ``empty``: no instance;
- any POST (a STOW): a 307 to ``Archive.other_port``.

Every request is recorded in ``Archive.requests``. :func:`serving` starts any handler on a free port (http, or
https with a certificate), and :func:`answering` makes a one-answer server (a STOW or FHIR destination that drips
or floods its answer).
"""

import http.server
import json
import ssl
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

PAGE = 100


def instance(i: int) -> dict:
    return {"0020000D": {"Value": ["1.2"]}, "0020000E": {"Value": ["1.2.3"]}, "00080018": {"Value": [f"1.2.3.{i}"]}}


class Archive(http.server.BaseHTTPRequestHandler):
    requests: list = []
    other_port = 9
    big_mb = 40

    def do_GET(self):  # noqa: N802
        Archive.requests.append(("GET", self.path, self.headers.get("Authorization")))
        route = self.path.split("/")[1]
        if route in ("away", "here"):
            target = f"http://127.0.0.1:{Archive.other_port}/x" if route == "away" else "/same/instances"
            self.send_response(302)
            self.send_header("Location", target)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.end_headers()
        try:
            self._body(route)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _body(self, route: str) -> None:
        wado = "/series/" in self.path
        if route == "big":  # in 1 MB writes: the server's own memory stays small
            self.wfile.write(b"[")
            for _ in range(Archive.big_mb):
                self.wfile.write(b" " * 2**20)
            self.wfile.write(b"]")
        elif route == "drip" or (route == "dripwado" and wado):
            dripping(3000, 0.2)(self.wfile)
        elif route == "dripwado":
            self.wfile.write(json.dumps([instance(0)]).encode())
        elif route == "empty":
            self.wfile.write(b"[]")
        else:
            offset = int(self.path.split("offset=")[1].split("&")[0]) if "offset=" in self.path else 0
            start = offset if route == "endless" else 0
            self.wfile.write(json.dumps([instance(start + i) for i in range(PAGE)]).encode())

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length", 0))
        self.rfile.read(length)
        Archive.requests.append(("POST", self.path, length))
        self.send_response(307)
        self.send_header("Location", f"http://127.0.0.1:{Archive.other_port}/stolen")
        self.end_headers()

    def log_message(self, *args):
        pass


def dripping(count: int, interval: float) -> Callable:
    """What writes an answer one byte every ``interval`` seconds, ``count`` times: each read is quick, the
    answer takes ``count x interval``."""

    def write(out) -> None:
        for _ in range(count):
            out.write(b" ")
            out.flush()
            time.sleep(interval)

    return write


def answering(write: Callable, length: int | None = None) -> type:
    """A handler that answers every POST and PUT the same way: the body read, 200 (with ``length`` as its
    Content-Length when given), then ``write(wfile)``; a client that leaves is no error."""

    class Answer(http.server.BaseHTTPRequestHandler):
        def _answer(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            if length is not None:
                self.send_header("Content-Length", str(length))
            self.end_headers()
            try:
                write(self.wfile)
            except (BrokenPipeError, ConnectionResetError):
                pass

        do_POST = do_PUT = _answer  # noqa: N815

        def log_message(self, *args):
            pass

    return Answer


@contextmanager
def serving(handler: type, certificate=None) -> Iterator[str]:
    """``handler`` served on a free port of 127.0.0.1 (a thread a request); its base URL. With ``certificate`` (a
    PEM file holding the certificate and its key) over https."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    if certificate is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificate)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    # a short poll: leaving the block (shutdown) takes a few ms, not half a second
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    try:
        yield f"{'https' if certificate is not None else 'http'}://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def servers():
    """The archive's base URL and the port of another server that only records what reaches it."""
    Archive.requests = []
    with serving(Archive) as base, serving(Archive) as other:
        Archive.other_port = int(other.rsplit(":", 1)[1])
        yield base, Archive.other_port
