"""Results over STOW-RS (ccad.deploy.pacs.dicomweb: check_url, session, client, stow), against a local recording
destination: what counts as stored, what a destination's answer may be, and what is refused before sending."""

import gzip
import http.server
import json
import socket
import threading

import numpy as np
import pydicom
import pytest
from hostile_archive import serving

from ccad.deploy.pacs.dicomweb import MAX_ANSWER_BYTES, WebDestination, check_url, client, session, stow
from ccad.errors import ConfigError


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from helpers import make_xray_dicom

    path = make_xray_dicom(tmp_path_factory.mktemp("x") / "x.dcm", np.random.default_rng(0).random((16, 16)))
    return pydicom.dcmread(path)


def destination(status=200, body=b"", headers=()) -> type:
    """A STOW-RS destination answering every POST with ``status``, ``body`` and ``headers``; it keeps each
    request's body in ``posts``."""

    class Destination(http.server.BaseHTTPRequestHandler):
        posts: list = []

        def do_POST(self):  # noqa: N802
            self.posts.append(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            self.send_response(status)
            for name, value in (("Content-Type", "application/dicom+json"), *headers):
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    Destination.posts = []
    return Destination


def _send(handler, dataset, timeout_s=30.0, **client_args):
    with serving(handler) as base:
        return stow(client(base, session(redirects=False), **client_args), dataset, timeout_s=timeout_s)


def _failed(uid):
    return {"00081198": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": [uid]}}]}}


def test_a_stored_instance_is_none_and_its_bytes_are_in_the_request(dataset):
    handler = destination(200, json.dumps({"00081199": {"vr": "SQ", "Value": []}}).encode())
    assert _send(handler, dataset) is None
    (posted,) = handler.posts
    assert str(dataset.SOPInstanceUID).encode() in posted


@pytest.mark.parametrize(
    "status, body, headers, why",
    [
        (200, None, (), "the destination refused it (FailedSOPSequence)"),
        (200, "gzip", (("Content-Encoding", "gzip"),), "the destination refused it (FailedSOPSequence)"),
        (409, b"", (), "HTTP 409"),
        (503, b"", (), "HTTP 503"),
        (
            307,
            b"",
            (("Location", "http://127.0.0.1:9/elsewhere"),),
            "the destination answered with a redirect, which is not followed",
        ),
    ],
)
def test_what_a_destination_answers_becomes_a_reason_in_words(dataset, status, body, headers, why):
    failed = json.dumps(_failed(str(dataset.SOPInstanceUID))).encode()
    body = {None: failed, "gzip": gzip.compress(failed)}.get(body, body)
    handler = destination(status, body, headers)
    assert _send(handler, dataset) == why
    assert len(handler.posts) == 1  # no retry here: the spool retries, with its own backoff


def test_an_answer_of_the_limit_is_read_and_one_byte_more_is_refused(dataset):
    exact = b"{}" + b" " * (MAX_ANSWER_BYTES - 2)
    assert _send(destination(200, exact), dataset) is None
    assert _send(destination(200, exact + b" "), dataset) == "the destination's answer is over 1 MB"


def test_a_silent_destination_fails_by_the_clients_read_timeout_before_the_stows_deadline(dataset):
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        web = client(f"http://127.0.0.1:{silent.getsockname()[1]}", session(redirects=False), timeout_s=0.5)
        assert stow(web, dataset, timeout_s=60) == "ReadTimeout"
        web = client(f"http://127.0.0.1:{silent.getsockname()[1]}", session(redirects=False), timeout_s=60)
        assert stow(web, dataset, timeout_s=0.5) == "the destination did not answer within 0.5 s"
        left = [t for t in threading.enumerate() if t.name == "ccad-stow"]  # still waiting on the silent socket
        assert left and all(t.daemon for t in left)  # a STOW past its deadline never holds the process at exit
    finally:
        silent.close()


def test_an_error_that_is_not_the_networks_reaches_the_caller_as_itself(dataset):
    class Broken:
        def store_instances(self, datasets):
            raise ValueError("not encodable")

    with pytest.raises(ValueError, match="not encodable"):
        stow(Broken(), dataset)


@pytest.mark.parametrize(
    "url, text, message",
    [
        ("ftp://h/x", None, "'ftp://h/x': expected an https://HOST/PATH URL (dicomweb+https://... for `send_to`)"),
        (
            "https://user@h/x",
            "dicomweb+https://user@h/x",
            "'dicomweb+https://user@h/x': no credentials in the URL (they come from the environment or a file)",
        ),
        (
            "https://:pw@h/x",
            None,
            "'https://:pw@h/x': no credentials in the URL (they come from the environment or a file)",
        ),
        (
            "http://10.0.0.1/x",
            None,
            "'http://10.0.0.1/x': plain http is refused except to this machine (127.0.0.1): use https",
        ),
    ],
)
def test_a_url_is_refused_in_one_line_naming_what_the_user_typed(url, text, message):
    with pytest.raises(ConfigError) as refused:
        check_url(url, text)
    assert str(refused.value) == message


def test_a_destination_is_parsed_without_its_trailing_slash_and_checked_as_typed():
    assert WebDestination.parse("dicomweb+https://pacs/dicom-web/").url == "https://pacs/dicom-web"
    with pytest.raises(ConfigError, match="^'dicomweb\\+http://pacs/x': plain http"):
        WebDestination.parse("dicomweb+http://pacs/x")


def test_a_redirect_to_another_host_on_the_same_port_is_not_followed(tmp_path):
    """QIDO-RS and WADO-RS follow a redirect only on the archive's own origin: scheme, host and port."""
    from ccad.deploy.pacs.dicomweb import find_instances

    class Away(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            port = self.server.server_address[1]
            self.send_response(302)
            self.send_header("Location", f"http://localhost:{port}/instances")  # this machine, another name
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    ended: dict = {}
    with serving(Away) as base:
        from ccad.deploy.pacs.dicomweb import ArchiveError

        with pytest.raises(ArchiveError, match="^the archive redirected to another host, which is not followed$"):
            list(find_instances(session(env="CCAD_DICOMWEB_SOURCE"), base, ended=ended))


def test_an_empty_answer_of_200_is_stored(dataset):
    assert _send(destination(200, b""), dataset) is None


@pytest.mark.parametrize(
    "body, kind, expected",
    [
        (
            b"--B\r\nContent-Type: application/dicom\r\n\r\nDICM\r\n--B--\r\n",
            'multipart/related; boundary="B"',
            b"DICM",
        ),
        (b"--B\r\n\r\nDICM--B--", "multipart/related; boundary=B", b"DICM"),  # no CRLF before the delimiter: kept
        (b"DICM", "application/dicom", b"DICM"),  # not multipart: the body itself
    ],
)
def test_the_first_part_of_a_wado_answer(body, kind, expected):
    from ccad.deploy.pacs.dicomweb import _first_part

    assert _first_part(body, kind) == expected


@pytest.mark.parametrize(
    "body, kind, message",
    [
        (b"--B\r\n\r\nDICM", "multipart/related", "a multipart answer without a boundary"),
        (b"--B--\r\n--B\r\n\r\nDICM", "multipart/related; boundary=B", "a multipart answer without a part"),
        (b"--B\r\nno blank line--B--", "multipart/related; boundary=B", "a multipart answer without a part"),
    ],
)
def test_a_wado_answer_without_its_part_is_refused(body, kind, message):
    from ccad.deploy.pacs.dicomweb import _first_part

    with pytest.raises(ValueError, match=f"^{message}$"):
        _first_part(body, kind)


def test_the_sites_proxy_is_used_with_its_own_authority(monkeypatch, tmp_path):
    """A hospital reaches its archive through the proxy its environment names: --ca-file keeps that."""
    from ccad.deploy.pacs.dicomweb import find_instances

    class Proxy(http.server.BaseHTTPRequestHandler):
        seen: list = []

        def do_GET(self):  # noqa: N802
            self.seen.append(self.path)  # a forward proxy is asked for the absolute URL
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"[]")

        def log_message(self, *args):
            pass

    ca = tmp_path / "ca.pem"
    ca.write_text("")  # never read: nothing here is https
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    with serving(Proxy) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy)
        assert list(find_instances(session(ca_file=ca), "http://archive.invalid/dicom-web")) == []
    assert Proxy.seen and all(p.startswith("http://archive.invalid/dicom-web/instances?") for p in Proxy.seen)
