"""``ccad dicom pull`` and the DICOMweb senders against a misbehaving archive, a real HTTP server on 127.0.0.1:
a QIDO-RS answer too large, endless paging, a WADO-RS answer that drips, redirects off the archive (and a STOW
redirect, which must never re-send the SR elsewhere). Every read is bounded in bytes, in time and in count."""

import http.server
import json
import threading
import time
from contextlib import contextmanager

import pytest

from ccad.deploy.pacs.dicomweb import (
    PAGE,
    ArchiveError,
    TooLarge,
    client,
    fetch_instance,
    find_instances,
    session,
    stow,
)


def _instance(i: int) -> dict:
    return {"0020000D": {"Value": ["1.2"]}, "0020000E": {"Value": ["1.2.3"]}, "00080018": {"Value": [f"1.2.3.{i}"]}}


class Archive(http.server.BaseHTTPRequestHandler):
    """What each path does: ``/big`` a 40 MB QIDO answer, ``/endless`` a full page of new UIDs at every offset,
    ``/same`` the same page whatever the offset, ``/drip`` one byte every 0.2 s, ``/away`` a redirect to another
    port, ``/here`` a redirect on the same origin to ``/same``; every request is recorded."""

    requests: list = []
    other_port = 9

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
            if route == "big":  # in 1 MB writes: the server's own memory stays out of the measurement
                self.wfile.write(b"[")
                for _ in range(40):
                    self.wfile.write(b" " * 2**20)
            elif route == "drip":
                for _ in range(100):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.2)
            else:
                offset = int(self.path.split("offset=")[1].split("&")[0]) if "offset=" in self.path else 0
                start = offset if route == "endless" else 0
                self.wfile.write(json.dumps([_instance(start + i) for i in range(PAGE)]).encode())
        except (BrokenPipeError, ConnectionResetError):
            pass

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
    """The archive, and another server on another port that only records what reaches it."""
    Archive.requests = []
    archive = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Archive)
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Archive)
    Archive.other_port = other.server_port
    for server in (archive, other):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{archive.server_port}", other.server_port
    finally:
        for server in (archive, other):
            server.shutdown()
            server.server_close()


def test_a_qido_answer_past_its_size_is_abandoned_not_read_whole():
    import tracemalloc

    with servers() as (base, _):
        tracemalloc.start()
        with pytest.raises(TooLarge, match="over 16 MB"):
            list(find_instances(session(), f"{base}/big"))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 40 * 2**20  # 16 MB kept at most, never the 40 MB answer


def test_endless_paging_stops_at_max_instances_and_a_repeated_page_at_once():
    with servers() as (base, _):
        assert len(list(find_instances(session(), f"{base}/endless", max_instances=250))) == 250
        # every page the same: one page of UIDs (CR), none new for DX
        assert len(list(find_instances(session(), f"{base}/same"))) == PAGE


def test_the_search_ends_at_the_runs_deadline():
    with servers() as (base, _):
        found = list(find_instances(session(), f"{base}/endless", deadline=time.monotonic() - 1))
    assert found == []


def test_a_wado_answer_that_drips_is_cut_at_the_fetchs_deadline_not_per_read():
    with servers() as (base, _):
        start = time.monotonic()
        with pytest.raises(ArchiveError, match="longer than the deadline"):
            fetch_instance(session(), f"{base}/drip", "1", "2", "3", max_bytes=2**20, timeout_s=1.0)
        assert time.monotonic() - start < 10  # 100 bytes at 0.2 s each would take 20 s


def test_redirects_are_followed_only_on_the_archives_own_origin():
    with servers() as (base, other_port):
        with pytest.raises(ArchiveError, match="redirected to another host"):
            list(find_instances(session(), f"{base}/away"))
        assert len(list(find_instances(session(), f"{base}/here"))) == PAGE  # the same origin: followed
    assert not [r for r in Archive.requests if r[1] == "/x"]  # nothing reached the other host


def test_a_stow_redirect_is_a_failure_and_the_sr_goes_nowhere_else(tmp_path):
    import numpy as np
    import pydicom
    from helpers import make_xray_dicom

    path = make_xray_dicom(tmp_path / "x.dcm", np.random.default_rng(0).random((32, 32)))
    with servers() as (base, _):
        why = stow(client(base, session(redirects=False)), pydicom.dcmread(path))
    assert why == "the destination answered with a redirect, which is not followed"
    assert [r[0] for r in Archive.requests] == ["POST"]  # one POST, to the archive; none to /stolen
