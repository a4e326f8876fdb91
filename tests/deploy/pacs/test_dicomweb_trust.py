"""Whom ccad trusts over DICOMweb and FHIR, against real HTTP(S) servers on 127.0.0.1 that record what reaches
them: ``ccad dicom pull`` talks to a source archive, a destination and a FHIR server at once, and each gets its
own credentials, never another's; TLS is verified by default, and against the site's own certificate authority
when one is given (``ca_file`` / ``--ca-file``); a new model's FHIR report has its own id (it must not overwrite
the old model's); an archive that ignores the QIDO-RS offset is read once, not for ever."""

import base64
import datetime
import http.server
import io
import ipaddress
import json
import logging
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from hostile_archive import PAGE, instance, serving

from ccad.deploy.pacs.dicomweb import client, fetch_instance, find_instances, session, stow
from ccad.deploy.pacs.fhir import FhirPoster, diagnostic_report
from ccad.deploy.pacs.results import Algorithm
from ccad.screening.records import Prediction

CREDENTIAL_ENV = [f"CCAD_DICOMWEB{who}_{what}" for who in ("", "_SOURCE") for what in ("TOKEN", "USER", "PASSWORD")] + [
    "CCAD_FHIR_TOKEN"
]

A_REPORT = {"resourceType": "DiagnosticReport", "id": "abc"}  # what a poster PUTs, as little as it takes


@pytest.fixture(autouse=True)
def no_credentials_from_the_machine(monkeypatch):
    """Each test sets the credentials it means: none come from the environment it runs in."""
    for name in CREDENTIAL_ENV:
        monkeypatch.delenv(name, raising=False)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture(scope="module")
def xray(tmp_path_factory) -> bytes:
    """A frontal chest DX as a modality sends it (its file's bytes)."""
    from helpers import make_xray_dicom

    path = tmp_path_factory.mktemp("xray") / "x.dcm"
    return make_xray_dicom(path, np.random.default_rng(0).random((64, 64))).read_bytes()


def _rows(dicom: bytes) -> list:
    """The QIDO-RS answer that finds ``dicom`` (none for no file)."""
    if not dicom:
        return []
    ds = pydicom.dcmread(io.BytesIO(dicom))
    uids = {"0020000D": ds.StudyInstanceUID, "0020000E": ds.SeriesInstanceUID, "00080018": ds.SOPInstanceUID}
    return [{tag: {"vr": "UI", "Value": [str(uid)]} for tag, uid in uids.items()}]


def site(dicom: bytes = b"", refuse_puts: int = 0) -> type:
    """A handler that is a DICOMweb archive, a DICOMweb destination and a FHIR server in one, recording every
    request's (method, path, Authorization) in its ``seen``: QIDO-RS finds the one instance of ``dicom``, WADO-RS
    sends it, a STOW-RS POST is stored (200), a FHIR PUT is stored (201), after ``refuse_puts`` answered 503."""
    found = _rows(dicom)

    class Site(http.server.BaseHTTPRequestHandler):
        seen: list = []
        puts: list = []
        queries: list = []  # each request's path with its query
        accepts: list = []  # and its Accept header

        def _record(self) -> None:
            self.seen.append((self.command, self.path.split("?")[0], self.headers.get("Authorization")))
            self.queries.append(self.path)
            self.accepts.append(self.headers.get("Accept"))

        def _answer(self, status: int, body: bytes = b"", kind: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":  # a STOW-RS over 1 MB
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))

        def do_GET(self):  # noqa: N802
            self._record()
            if "/series/" in self.path:  # WADO-RS
                part = b"--XYZ\r\nContent-Type: application/dicom\r\n\r\n" + dicom + b"\r\n--XYZ--\r\n"
                self._answer(200, part, 'multipart/related; type="application/dicom"; boundary=XYZ')
            else:  # QIDO-RS
                self._answer(200, json.dumps(found).encode(), "application/dicom+json")

        def do_POST(self):  # noqa: N802
            self._body()
            self._record()
            self._answer(200)

        def do_PUT(self):  # noqa: N802
            body = self._body()
            self._record()
            self.puts.append(body)
            self._answer(503 if len(self.puts) <= refuse_puts else 201)

        def log_message(self, *args):
            pass

    Site.seen, Site.puts, Site.queries, Site.accepts = [], [], [], []
    return Site


def authorizations(handler: type) -> set:
    """The Authorization headers (None: none) of the requests that reached ``handler``'s server."""
    return {auth for _, _, auth in handler.seen}


# --- credentials: each server its own ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env, source_header, destination_header",
    [
        (
            {"CCAD_DICOMWEB_SOURCE_TOKEN": "source-token", "CCAD_DICOMWEB_USER": "dest", "CCAD_DICOMWEB_PASSWORD": "d"},
            "Bearer source-token",
            basic("dest", "d"),
        ),
        (
            {"CCAD_DICOMWEB_SOURCE_USER": "src", "CCAD_DICOMWEB_SOURCE_PASSWORD": "s", "CCAD_DICOMWEB_TOKEN": "dest"},
            basic("src", "s"),
            "Bearer dest",
        ),
        ({"CCAD_DICOMWEB_TOKEN": "dest-token"}, None, "Bearer dest-token"),  # the source has none: it gets none
        ({"CCAD_DICOMWEB_SOURCE_TOKEN": "source-token"}, "Bearer source-token", None),
    ],
)
def test_each_dicomweb_session_takes_only_its_own_credentials_from_the_environment(
    env, source_header, destination_header, xray, monkeypatch
):
    for name, value in {**env, "CCAD_FHIR_TOKEN": "fhir-token"}.items():
        monkeypatch.setenv(name, value)
    source, destination = site(xray), site()
    with serving(source) as archive, serving(destination) as pacs:
        found = list(find_instances(session(env="CCAD_DICOMWEB_SOURCE"), archive))
        fetch_instance(session(env="CCAD_DICOMWEB_SOURCE"), archive, *found[0], max_bytes=2**20)
        assert stow(client(pacs, session(redirects=False)), pydicom.dcmread(io.BytesIO(xray))) is None
    assert [method for method, _, _ in source.seen] == ["GET", "GET", "GET"]  # QIDO-RS CR and DX, WADO-RS
    assert [method for method, _, _ in destination.seen] == ["POST"]
    assert authorizations(source) == {source_header}
    assert authorizations(destination) == {destination_header}


@pytest.mark.parametrize(
    "line, header",
    [("bearer file-token", "Bearer file-token"), ("file-user:pass:word", basic("file-user", "pass:word"))],
)
def test_a_credentials_file_is_used_instead_of_the_environments_credentials(line, header, tmp_path, monkeypatch):
    monkeypatch.setenv("CCAD_DICOMWEB_TOKEN", "env-token")
    monkeypatch.setenv("CCAD_DICOMWEB_USER", "env-user")
    monkeypatch.setenv("CCAD_DICOMWEB_PASSWORD", "env-password")
    auth = tmp_path / "auth"
    auth.write_text(line + "\n")
    recorder = site()
    with serving(recorder) as base:
        list(find_instances(session(auth), base))
    assert authorizations(recorder) == {header}


def test_the_fhir_token_goes_to_the_fhir_server_and_no_dicomweb_credentials_do(monkeypatch):
    for name in CREDENTIAL_ENV[:-1]:
        monkeypatch.setenv(name, "dicomweb-secret")
    report = {"resourceType": "DiagnosticReport", "id": "abc"}
    without, with_token = site(), site()
    with serving(without) as base:
        assert FhirPoster(f"{base}/fhir", timeout_s=10).put(report) is None
    monkeypatch.setenv("CCAD_FHIR_TOKEN", "fhir-token")
    with serving(with_token) as base:
        assert FhirPoster(f"{base}/fhir", timeout_s=10).put(report) is None
    assert without.seen == [("PUT", "/fhir/DiagnosticReport/abc", None)]
    assert with_token.seen == [("PUT", "/fhir/DiagnosticReport/abc", "Bearer fhir-token")]


def _pull_settings(tmp_path, destination: str, fhir: str, **fields):
    from ccad.deploy.pacs.listener import Destination, ListenerSettings
    from ccad.models.card import DEFAULT_BUNDLE

    return ListenerSettings(
        DEFAULT_BUNDLE,
        Destination.parse(f"dicomweb+{destination}"),
        fields.pop("spool", tmp_path / "spool"),
        retry_max_s=0.5,
        result_process=False,
        fhir=f"{fhir}/fhir",
        **fields,
        per_image=True,
    )


def test_pull_gives_the_source_the_destination_and_the_fhir_server_each_its_own_credentials(
    xray, tmp_path, monkeypatch
):
    """The archive's credentials from the environment, the destination's from its file, the FHIR token from the
    environment; the FHIR server refuses the first report (503), which is sent again within ``retry_max_s``."""
    from ccad.deploy.pacs.pull import pull

    monkeypatch.setenv("CCAD_DICOMWEB_SOURCE_TOKEN", "source-token")
    monkeypatch.setenv("CCAD_FHIR_TOKEN", "fhir-token")
    auth = tmp_path / "destination-auth"
    auth.write_text("dest-user:dest-password\n")
    source, destination, fhir = site(xray), site(), site(refuse_puts=1)
    with serving(source) as archive, serving(destination) as pacs, serving(fhir) as record:
        settings = _pull_settings(tmp_path, pacs, record, dicomweb_auth=auth)
        counts = pull(settings, archive, since="20260101", timeout_s=30)
    assert (counts["found"], counts["fetched"], counts["complete"]) == (1, 1, True), counts
    assert {method for method, _, _ in destination.seen} == {"POST"} and len(destination.seen) == 2  # SR, capture
    assert authorizations(source) == {"Bearer source-token"}
    assert authorizations(destination) == {basic("dest-user", "dest-password")}
    assert authorizations(fhir) == {"Bearer fhir-token"}
    kinds = [json.loads(body)["resourceType"] for body in fhir.puts]
    # the report refused, then sent again, the same; once stored, not sent a third time; its task stored at once
    first, again = [body for body, kind in zip(fhir.puts, kinds) if kind == "DiagnosticReport"]
    assert first == again and kinds.count("Task") == 1 and len(kinds) == 3


# --- TLS: verified, against the site's own authority when it has one --------------------------------------------


def _name(text):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def _builder(subject, issuer, key):
    """A certificate of ``subject`` by ``issuer`` for ``key``, valid from yesterday to the day after tomorrow."""
    from cryptography import x509

    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A site's certificate authority (``ca``) and two server certificates it signed: ``here`` for 127.0.0.1 and
    ``elsewhere`` for another host; and ``stranger``, a certificate for 127.0.0.1 signed by another authority."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    root = tmp_path_factory.mktemp("pki")
    name, builder = _name, _builder

    def authority(title):
        key = ec.generate_private_key(ec.SECP256R1())
        usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)  # cert and CRL sign
        cert = (
            builder(name(title), name(title), key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(usage, critical=True)
            .sign(key, hashes.SHA256())
        )
        return cert, key

    def server(file, ca, ca_key, alt_name):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            builder(name("ccad test server"), ca.subject, key)
            .add_extension(x509.SubjectAlternativeName([alt_name]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        pem = cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        (root / file).write_bytes(pem)
        return root / file

    ca, ca_key = authority("ccad test site CA")
    other, other_key = authority("another CA")
    (root / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    loopback = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
    return SimpleNamespace(
        ca=root / "ca.pem",
        here=server("here.pem", ca, ca_key, loopback),
        elsewhere=server("elsewhere.pem", ca, ca_key, x509.DNSName("pacs.elsewhere.example")),
        stranger=server("stranger.pem", other, other_key, loopback),
    )


#: requests takes a CA bundle from these variables (this one set as many systems set it, or unset).
ENV_BUNDLES = pytest.mark.parametrize("env_bundle", [None, "system"], ids=["no-env-bundle", "REQUESTS_CA_BUNDLE"])


def _env_bundle(monkeypatch, env_bundle) -> None:
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    if env_bundle is None:
        monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    else:
        import certifi

        monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())


def _refused(call) -> str:
    """The text of the error ``call()`` raises (it must raise one: requests' and urllib's errors are OSErrors)."""
    with pytest.raises(OSError) as caught:
        call()
    return str(caught.value)


@ENV_BUNDLES
@pytest.mark.parametrize("certificate", ["here", "stranger"])
def test_https_is_refused_without_the_authority_that_signed_the_servers_certificate(
    certificate, env_bundle, pki, xray, monkeypatch
):
    """Without ``ca_file`` a site's own authority is unknown; with another authority's file, so is the stranger's
    signer: QIDO-RS, WADO-RS, STOW-RS and FHIR refuse the server, and nothing is sent to it."""
    _env_bundle(monkeypatch, env_bundle)
    ca_file = None if certificate == "here" else pki.ca
    recorder = site(xray)
    with serving(recorder, getattr(pki, certificate)) as base:
        texts = [
            _refused(lambda: list(find_instances(session(ca_file=ca_file), base))),
            _refused(lambda: fetch_instance(session(ca_file=ca_file), base, "1", "2", "3", max_bytes=2**20)),
            _refused(lambda: FhirPoster(f"{base}/fhir", ca_file=ca_file, timeout_s=10).put(A_REPORT)),
        ]
        why = stow(client(base, session(ca_file=ca_file, redirects=False)), pydicom.dcmread(io.BytesIO(xray)))
    assert all("certificate verify failed" in text for text in texts), texts
    assert why == "SSLError"
    assert recorder.seen == []


@ENV_BUNDLES
def test_https_works_with_the_sites_authority_as_ca_file(env_bundle, pki, xray, monkeypatch):
    _env_bundle(monkeypatch, env_bundle)
    recorder = site(xray)
    with serving(recorder, pki.here) as base:
        found = list(find_instances(session(ca_file=pki.ca), base))
        fetched = fetch_instance(session(ca_file=pki.ca), base, *found[0], max_bytes=2**20)
        stored = stow(client(base, session(ca_file=pki.ca, redirects=False)), pydicom.dcmread(io.BytesIO(fetched)))
        report = {"resourceType": "DiagnosticReport", "id": "abc"}
        put = FhirPoster(f"{base}/fhir", ca_file=str(pki.ca), timeout_s=10).put(report)
    assert fetched == xray and (stored, put) == (None, None)
    assert [method for method, _, _ in recorder.seen] == ["GET", "GET", "GET", "POST", "PUT"]


def test_a_certificate_for_another_host_is_refused_even_from_the_sites_authority(pki, monkeypatch):
    _env_bundle(monkeypatch, None)
    recorder = site()
    with serving(recorder, pki.elsewhere) as base:
        texts = [
            _refused(lambda: list(find_instances(session(ca_file=pki.ca), base))),
            _refused(lambda: FhirPoster(f"{base}/fhir", ca_file=str(pki.ca), timeout_s=10).put(A_REPORT)),
        ]
    assert all("certificate verify failed" in text and "mismatch" in text for text in texts), texts
    assert recorder.seen == []


@pytest.fixture
def restored_logging():
    """``ccad dicom`` sets up the root logger for a service: put back what the test run had."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


def test_ccad_dicom_pull_over_https_with_ca_file_sends_each_server_its_own_credentials(
    xray, pki, tmp_path, monkeypatch, restored_logging
):
    """The command line: ``--from-auth`` is the archive's, ``CCAD_DICOMWEB_USER``/``_PASSWORD`` the destination's,
    ``CCAD_FHIR_TOKEN`` the FHIR server's; ``--ca-file`` the site's authority, for all three."""
    from ccad.cli import main

    _env_bundle(monkeypatch, "system")
    monkeypatch.setenv("CCAD_DICOMWEB_USER", "dest-user")
    monkeypatch.setenv("CCAD_DICOMWEB_PASSWORD", "dest-password")
    monkeypatch.setenv("CCAD_FHIR_TOKEN", "fhir-token")
    auth = tmp_path / "archive-auth"
    auth.write_text("Bearer source-token\n")
    source, destination, fhir = site(xray), site(), site()
    with serving(source, pki.here) as archive, serving(destination, pki.here) as pacs:
        with serving(fhir, pki.here) as record:
            code = main(
                ["dicom", "pull", "--from", archive, "--since", "2026-01-01", "--from-auth", str(auth)]
                + ["--send-to", f"dicomweb+{pacs}", "--fhir", f"{record}/fhir", "--ca-file", str(pki.ca)]
                + ["--spool", str(tmp_path / "spool"), "--retry-max-s", "0.5", "--timeout", "60"]
            )
    assert code == 0
    assert authorizations(source) == {"Bearer source-token"} and len(source.seen) == 3  # QIDO-RS x2, WADO-RS
    assert authorizations(destination) == {basic("dest-user", "dest-password")} and len(destination.seen) == 2
    assert authorizations(fhir) == {"Bearer fhir-token"} and len(fhir.seen) == 2  # the report and its task


# --- FHIR report ids: one a model and image --------------------------------------------------------------------


def _source(sop_instance_uid: str):
    ds = pydicom.Dataset()
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.PatientID = sop_instance_uid, "1.2.3", "P1"
    return ds


def test_a_new_models_fhir_report_has_its_own_id_and_a_resent_report_the_same():
    old = Algorithm("ccad", "1.0", "ab" * 32, "float", "covid if p_covid >= 0.700", "covid", 0.7)
    new_model, int8 = replace(old, model_sha256="cd" * 32), replace(old, variant="int8", model_sha256="ef" * 32)
    prediction = Prediction("x", "covid", {"covid": 0.8, "normal": 0.2}, in_distribution=True)
    image, other_image = _source("1.2.3.4.5"), _source("1.2.3.4.6")

    def report_id(source, algorithm):
        return diagnostic_report(source, algorithm, prediction)["id"]

    assert report_id(image, old) == report_id(image, old)  # a resend (or a re-score) replaces itself
    ids = {report_id(image, old), report_id(image, new_model), report_id(image, int8), report_id(other_image, old)}
    assert len(ids) == 4  # another model, another variant, another image: another report, never an overwrite
    assert report_id(image, replace(old, variant="int8")) != report_id(image, old)  # the same file, another variant


# --- an archive that ignores the offset --------------------------------------------------------------------------


class _Offsetless(http.server.BaseHTTPRequestHandler):
    """An archive that ignores the QIDO-RS offset: the same full page whatever the offset. Past 20 requests it
    answers an empty page, so a client that would page for ever ends, and the test fails instead of hanging."""

    paths: list = []

    def do_GET(self):  # noqa: N802
        self.paths.append(self.path)
        page = [instance(i) for i in range(PAGE)] if len(self.paths) <= 20 else []
        body = json.dumps(page).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_an_archive_that_ignores_the_offset_is_read_once_a_modality_not_for_ever():
    import time

    _Offsetless.paths = []
    ended: dict = {}
    with serving(_Offsetless) as base:  # the deadline only bounds a regression: it is never reached
        found = list(find_instances(session(), base, deadline=time.monotonic() + 120, ended=ended))
    assert len(found) == PAGE and len(set(found)) == PAGE and ended == {}
    # CR: the page, then the same page again (nothing new: stop); DX: the same page, nothing new: stop
    assert len(_Offsetless.paths) == 3
    assert ["Modality=CR" in r for r in _Offsetless.paths] == [True, True, False]


# --- what pull asks the archive, and what it opens ---------------------------------------------------------------


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_pull_asks_the_archive_for_its_study_or_its_dates_and_opens_no_dicom_port(xray, tmp_path):
    from urllib.parse import parse_qs, urlsplit

    from helpers import free_port

    from ccad.deploy.pacs.pull import pull

    port, probes = free_port(), []
    source = site(xray)

    class Probing(source):  # while the pull runs: is anything listening on the listener's DICOM port?
        def do_GET(self):  # noqa: N802
            probes.append(_listening(port))
            super().do_GET()

    with serving(Probing) as archive, serving(site()) as pacs:
        settings = _pull_settings(tmp_path, pacs, pacs, port=port)
        by_study = pull(settings, archive, study="1.2.3", timeout_s=30)
        by_date = pull(_pull_settings(tmp_path / "2", pacs, pacs, port=port), archive, since="20260101", timeout_s=30)
    assert by_study["found"] == by_date["found"] == 1 and probes and not any(probes)
    qido = [urlsplit(q) for q in source.queries if "/series/" not in q]
    assert qido[0].path == "/studies/1.2.3/instances" and "StudyDate" not in parse_qs(qido[0].query)
    dated = [parse_qs(q.query) for q in qido if q.path == "/instances"]
    assert dated and all(q["StudyDate"] == ["20260101-"] for q in dated)
    assert {q["Modality"][0] for q in dated} == {"CR", "DX"}
    # each search asks for the study and series UIDs too, a page at a time from offset 0, as DICOM JSON
    from hostile_archive import PAGE

    for q in dated:
        assert (q["includefield"], q["limit"], q["offset"]) == (["0020000D,0020000E"], [str(PAGE)], ["0"])
    accepts = [a for a, q in zip(source.accepts, source.queries) if "/series/" not in q]
    assert set(accepts) == {"application/dicom+json"}


def test_a_source_that_cannot_be_reached_ends_the_search_with_the_errors_name(tmp_path):
    from helpers import free_port

    from ccad.deploy.pacs.pull import pull

    with serving(site()) as pacs:
        counts = pull(_pull_settings(tmp_path, pacs, pacs), f"http://127.0.0.1:{free_port()}", timeout_s=30)
    assert counts["search_ended"] == "ConnectionError" and counts["found"] == 0 and counts["complete"] is True


# --- resuming: what a pull fetches, skips, refuses and records -------------------------------------------------------


def test_a_pull_fetches_each_instance_once_records_it_and_skips_it_when_run_again(xray, tmp_path):
    from ccad.deploy.pacs.listener import instance_key
    from ccad.deploy.pacs.pull import DONE_FILE, pull

    ds = pydicom.dcmread(io.BytesIO(xray))
    key = instance_key(str(ds.SOPInstanceUID))
    source = site(xray)
    with serving(source) as archive, serving(site()) as pacs:
        first = pull(_pull_settings(tmp_path, pacs, pacs), archive, since="20260101", timeout_s=30)
        wado = [path for method, path, _ in source.seen if "/series/" in path]
        again = pull(_pull_settings(tmp_path, pacs, pacs), archive, since="20260101", timeout_s=30)
    assert wado == [f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"]
    # found once (the search keeps one row an instance, CR and DX alike); a finished image written once
    assert {k: first[k] for k in ("found", "fetched", "already_done", "scored", "complete")} == {
        "found": 1, "fetched": 1, "already_done": 0, "scored": 1, "complete": True,
    }  # fmt: skip
    assert (tmp_path / "spool" / DONE_FILE).read_text() == key + "\n"
    assert {k: again[k] for k in ("found", "fetched", "already_done", "scored")} == {
        "found": 1, "fetched": 0, "already_done": 1, "scored": 0,
    }  # fmt: skip
    assert len([p for m, p, _ in source.seen if "/series/" in p]) == 1  # nothing fetched the second time


def test_an_image_left_in_the_spool_is_scored_there_not_fetched_again(xray, tmp_path):
    from ccad.deploy.pacs.listener import instance_key
    from ccad.deploy.pacs.pull import pull
    from ccad.deploy.pacs.spool import Spool

    ds = pydicom.dcmread(io.BytesIO(xray))
    spool = Spool(tmp_path / "spool")
    spool.create()
    spool.receive(instance_key(str(ds.SOPInstanceUID)), xray)  # a run that died after taking it
    source = site(xray)
    with serving(source) as archive, serving(site()) as pacs:
        counts = pull(_pull_settings(tmp_path, pacs, pacs), archive, since="20260101", timeout_s=30)
    assert (counts["in_the_spool"], counts["fetched"], counts["scored"], counts["complete"]) == (1, 0, 1, True)
    assert not [p for m, p, _ in source.seen if "/series/" in p]


def test_an_instance_over_the_size_limit_is_refused_recorded_and_logged_by_its_key(tmp_path, caplog):
    from helpers import make_xray_dicom

    from ccad.deploy.pacs.listener import instance_key
    from ccad.deploy.pacs.pull import DONE_FILE, pull

    big = make_xray_dicom(tmp_path / "big.dcm", np.random.default_rng(0).random((800, 800))).read_bytes()
    key = instance_key(str(pydicom.dcmread(io.BytesIO(big)).SOPInstanceUID))
    with serving(site(big)) as archive, serving(site()) as pacs:
        settings = _pull_settings(tmp_path, pacs, pacs, max_dataset_bytes=2**20)  # 1.2 MB sent
        counts = pull(settings, archive, since="20260101", timeout_s=30)
    assert (counts["refused"], counts["fetched"], counts["scored"]) == (1, 0, 0)
    assert (tmp_path / "spool" / DONE_FILE).read_text().split() == [key]  # not fetched again by the next run
    assert [r.getMessage() for r in caplog.records if "refused" in r.getMessage()] == [
        f"image {key} refused: over 1 MB, the --max-dataset-mb limit"
    ]


def archive_of(dicoms: list[bytes], wado_status: int = 200) -> type:
    """An archive holding ``dicoms`` (each found by QIDO-RS, each sent by WADO-RS by its UIDs), its WADO-RS
    answering ``wado_status``."""
    by_uid, found = {}, []
    for data in dicoms:
        ds = pydicom.dcmread(io.BytesIO(data))
        by_uid[str(ds.SOPInstanceUID)] = data
        uids = (("0020000D", ds.StudyInstanceUID), ("0020000E", ds.SeriesInstanceUID), ("00080018", ds.SOPInstanceUID))
        found.append({tag: {"vr": "UI", "Value": [str(uid)]} for tag, uid in uids})

    class Archive(site()):
        def do_GET(self):  # noqa: N802
            self._record()
            if "/series/" not in self.path:
                return self._answer(200, json.dumps(found).encode(), "application/dicom+json")
            if wado_status != 200:
                return self._answer(wado_status)
            part = by_uid[self.path.rsplit("/", 1)[1]]
            body = b"--XYZ\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n--XYZ--\r\n"
            self._answer(200, body, 'multipart/related; type="application/dicom"; boundary=XYZ')

    return Archive


def _xrays(tmp_path, n, size=64):
    from helpers import make_xray_dicom

    rng = np.random.default_rng(1)
    return [make_xray_dicom(tmp_path / f"x{i}.dcm", rng.random((size, size))).read_bytes() for i in range(n)]


def test_every_failed_fetch_is_counted_and_logged_and_fetched_again_by_the_next_run(tmp_path, caplog):
    from ccad.deploy.pacs.listener import instance_key
    from ccad.deploy.pacs.pull import DONE_FILE, pull

    dicoms = _xrays(tmp_path, 2)
    keys = sorted(instance_key(str(pydicom.dcmread(io.BytesIO(d)).SOPInstanceUID)) for d in dicoms)
    with serving(archive_of(dicoms, wado_status=500)) as archive, serving(site()) as pacs:
        counts = pull(_pull_settings(tmp_path, pacs, pacs), archive, since="20260101", timeout_s=30)
    assert (counts["found"], counts["fetch_failures"], counts["fetched"], counts["complete"]) == (2, 2, 0, True)
    assert not (tmp_path / "spool" / DONE_FILE).exists()  # nothing recorded: the next run tries them again
    logged = sorted(r.getMessage() for r in caplog.records if "could not be fetched" in r.getMessage())
    assert logged == [f"image {k} could not be fetched (HTTPError)" for k in keys]


def test_every_instance_over_the_limit_is_refused_and_an_archive_error_is_named(tmp_path):
    from ccad.deploy.pacs.pull import pull

    dicoms = _xrays(tmp_path, 2, size=800)  # 1.2 MB each
    with serving(archive_of(dicoms)) as archive, serving(site()) as pacs:
        counts = pull(_pull_settings(tmp_path, pacs, pacs, max_dataset_bytes=2**20), archive, timeout_s=30)
    assert (counts["found"], counts["refused"], counts["fetched"], counts["scored"]) == (2, 2, 0, 0)


def test_two_images_of_one_run_are_each_fetched_scored_and_skipped_the_next_time(tmp_path):
    from ccad.deploy.pacs.pull import pull
    from ccad.deploy.pacs.spool import Spool

    dicoms = _xrays(tmp_path, 3)
    with serving(archive_of(dicoms[:2])) as archive, serving(site()) as pacs:
        first = pull(_pull_settings(tmp_path, pacs, pacs), archive, timeout_s=30)
        again = pull(_pull_settings(tmp_path, pacs, pacs), archive, timeout_s=30)
    assert (first["fetched"], first["scored"], again["already_done"], again["fetched"]) == (2, 2, 2, 0)
    from ccad.deploy.pacs.listener import instance_key

    spool = Spool(tmp_path / "left")
    spool.create()
    for data in dicoms:  # a run that died with all three taken
        spool.receive(instance_key(str(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID)), data)
    with serving(archive_of(dicoms)) as archive, serving(site()) as pacs:
        resumed = pull(
            _pull_settings(tmp_path / "left-settings", pacs, pacs, spool=tmp_path / "left"), archive, timeout_s=30
        )
    assert (resumed["in_the_spool"], resumed["fetched"], resumed["scored"]) == (3, 0, 3)


def test_a_fetch_that_drips_ends_at_the_pulls_deadline(tmp_path):
    from hostile_archive import servers

    from ccad.deploy.pacs.pull import pull

    with servers() as (base, _), serving(site()) as pacs:
        # 10 s: time to load the model and search under load; the drip would take minutes
        counts = pull(_pull_settings(tmp_path, pacs, pacs), f"{base}/dripwado", since="20260101", timeout_s=10)
    assert (counts["found"], counts["fetch_failures"], counts["fetched"]) == (1, 1, 0)


@pytest.mark.parametrize(
    "body, ended",
    [(b"", None), (b"<html>busy</html>", "the archive's QIDO-RS answer is not JSON"),
     (b'{"a": 1}', "the archive's QIDO-RS answer is not a JSON list")],
)  # fmt: skip
def test_a_qido_answer_that_is_empty_or_not_a_list_ends_the_search_in_words(body, ended, tmp_path):
    from ccad.deploy.pacs.pull import pull

    class Odd(site()):
        def do_GET(self):  # noqa: N802
            self._record()
            self._answer(200, body, "application/dicom+json")

    with serving(Odd) as archive, serving(site()) as pacs:
        counts = pull(_pull_settings(tmp_path, pacs, pacs), archive, since="20260101", timeout_s=30)
    assert counts["found"] == 0 and counts.get("search_ended") == ended and counts["complete"] is True


@pytest.mark.parametrize(
    "item, uids",
    [
        ({"0020000D": {"Value": ["1.2"]}, "0020000E": {"Value": ["1.3"]}, "00080018": {"Value": ["1.4"]}},
         ("1.2", "1.3", "1.4")),
        ({"0020000D": {"Value": ["1." + "2" * 70]}}, ("1." + "2" * 62, "", "")),  # at most 64 characters
        ({"0020000D": {"Value": []}, "0020000E": {}, "00080018": "1.4"}, ("", "", "")),
        ({"0020000D": {"Value": [12]}, "0020000E": {"Value": "1.3"}}, ("", "", "")),  # not a text, not a list
        (["1.2"], ("", "", "")),
    ],
)  # fmt: skip
def test_the_uids_of_a_qido_result_and_of_one_that_holds_them_wrongly(item, uids):
    from ccad.deploy.pacs.dicomweb import _uids

    assert _uids(item) == uids


def test_a_credentials_file_password_may_hold_a_colon_and_bad_files_are_named(tmp_path, monkeypatch):
    from ccad.errors import ConfigError

    auth = tmp_path / "auth"
    auth.write_text("user:pa:ss\n")
    assert session(auth).auth == ("user", "pa:ss")
    auth.write_text("just-a-word\n")
    with pytest.raises(ConfigError) as bad:
        session(auth)
    assert str(bad.value) == f"`dicomweb_auth` {auth}: expected 'bearer TOKEN' or 'USER:PASSWORD'"
    auth.write_text("")
    with pytest.raises(ConfigError) as empty:
        session(auth)
    assert str(empty.value) == f"`dicomweb_auth` {auth}: cannot read a first line from it"
    monkeypatch.setenv("CCAD_DICOMWEB_USER", "only-user")  # a user without a password: an empty one
    assert session().auth == ("only-user", "")


def test_a_wado_request_asks_for_the_dicom_file_in_any_transfer_syntax(xray, tmp_path):
    source = site(xray)
    with serving(source) as archive:
        found = list(find_instances(session(), archive))
        fetch_instance(session(), archive, *found[0], max_bytes=2**20)
    wado = [a for a, q in zip(source.accepts, source.queries) if "/series/" in q]
    assert wado == ['multipart/related; type="application/dicom"; transfer-syntax=*']
