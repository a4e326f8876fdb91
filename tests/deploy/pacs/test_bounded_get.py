"""Every read from an archive is bounded (ccad.deploy.pacs.dicomweb.bounded_get): in bytes, in time, and in the
redirects it follows, against a local server."""

import gzip
import http.server
import socket
import time

import pytest
from hostile_archive import serving

from ccad.deploy.pacs.dicomweb import MAX_REDIRECTS, ArchiveError, TooLarge, bounded_get, session


def archive(body: bytes = b"[]", gzipped: bool = False) -> type:
    """``/r/N`` redirects on its own origin to ``/r/N-1``, and ``/r/0`` answers ``body``."""

    class Archive(http.server.BaseHTTPRequestHandler):
        paths: list = []

        def do_GET(self):  # noqa: N802
            self.paths.append(self.path)
            left = int(self.path.split("/r/")[1].split("?")[0]) if "/r/" in self.path else 0
            if left:
                self.send_response(302)
                self.send_header("Location", f"/r/{left - 1}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = gzip.compress(body) if gzipped else body
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            if gzipped:
                self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    Archive.paths = []
    return Archive


def _get(base, path="/r/0", max_bytes=2**20, deadline_s=30.0):
    return bounded_get(session(), base + path, base, "application/dicom+json", max_bytes, time.monotonic() + deadline_s)


def test_redirects_on_the_archive_are_followed_up_to_the_limit_and_no_further():
    handler = archive(body=b"[1]")
    with serving(handler) as base:
        assert _get(base, f"/r/{MAX_REDIRECTS}") == (b"[1]", "application/dicom+json")
        assert len(handler.paths) == MAX_REDIRECTS + 1
        with pytest.raises(ArchiveError, match=f"^the archive redirected more than {MAX_REDIRECTS} times$"):
            _get(base, f"/r/{MAX_REDIRECTS + 1}")


def test_an_answer_of_the_limit_is_read_and_one_byte_more_is_too_large():
    body = b"x" * 1000
    with serving(archive(body=body)) as base:
        assert _get(base, max_bytes=1000)[0] == body
        with pytest.raises(TooLarge, match="^over 0 MB$"):
            _get(base, max_bytes=999)


def test_a_compressed_answer_is_read_decompressed_and_bounded_as_such():
    body = b"[" + b" " * 5000 + b"]"
    with serving(archive(body=body, gzipped=True)) as base:
        assert _get(base)[0] == body
        with pytest.raises(TooLarge):
            _get(base, max_bytes=1000)  # 5 kB decompressed: the compressed size (tens of bytes) is not what counts


def test_a_request_past_its_deadline_is_not_sent():
    handler = archive()
    with serving(handler) as base:
        with pytest.raises(ArchiveError, match="^the archive did not answer within the deadline$"):
            _get(base, deadline_s=-1.0)
    assert handler.paths == []


def test_a_silent_archive_fails_by_the_deadline_not_never():
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        base = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(OSError):  # requests' ReadTimeout
            _get(base, deadline_s=0.5)
    finally:
        silent.close()
