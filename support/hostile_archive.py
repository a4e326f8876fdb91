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

Every request is recorded in ``Archive.requests``.
"""

import http.server
import json
import threading
import time
from contextlib import contextmanager

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
            for _ in range(3000):
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.2)
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


@contextmanager
def servers():
    """The archive's base URL and the port of another server that only records what reaches it."""
    Archive.requests = []
    archive = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Archive)
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Archive)
    archive.daemon_threads = other.daemon_threads = True
    Archive.other_port = other.server_port
    for server in (archive, other):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{archive.server_port}", other.server_port
    finally:
        for server in (archive, other):
            server.shutdown()
            server.server_close()
