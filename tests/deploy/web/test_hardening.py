"""The service and the CLI probed as an attacker and a careless user would: limits before work, no 5xx, no
traceback, no patient data kept or echoed; a live ``ccad serve`` on 127.0.0.1 for what needs real sockets."""

import io
import json
import os
import select
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import GRADIENT, make_dicom, png_bytes
from live_server import serving
from PIL import Image

from ccad.cli import main
from ccad.deploy.web import ServeSettings, create_app

KEY = "s3cret"


def png(size=96, seed=0) -> bytes:
    return png_bytes((size, size), seed=seed)


@pytest.fixture(scope="module")
def client(bundle):
    with TestClient(create_app(ServeSettings(bundle, api_key=KEY))) as c:
        yield c


def post(client, *files, key=KEY, **kw):
    return client.post(
        "/api/v1/predict", files=[("files", f) for f in files], headers={"X-API-Key": key} if key else {}, **kw
    )


# --- a live server ------------------------------------------------------------------------------------------------
def _get(port, path="/healthz", timeout=5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        return s.recv(4096)


@pytest.fixture(scope="module")
def live(bundle):
    flags = ("--api-key", KEY, "--header-timeout", "1", "--max-request-mb", "2", "--max-upload-mb", "1")
    with serving(bundle, *flags) as (port, proc):
        yield port, proc


def _peak_mb(proc) -> float:
    line = next(x for x in Path(f"/proc/{proc.pid}/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def test_a_chunked_upload_without_a_key_is_refused_before_its_body(live):
    port, proc = live
    before = _peak_mb(proc)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        answer = s.recv(4096)  # no body sent at all: the answer cannot depend on reading it
    assert answer.startswith(b"HTTP/1.1 401") and b"www-authenticate: bearer" in answer.lower()
    assert _peak_mb(proc) - before < 50


def test_a_chunked_body_over_the_limit_is_cut_off(live):
    port, proc = live
    before = _peak_mb(proc)
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(
            f"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        chunk = b"%x\r\n" % 2**16 + b"\0" * 2**16 + b"\r\n"
        try:
            for _ in range(1024):  # 64 MB offered against a 2 MB limit; stop when the server answers
                if select.select([s], [], [], 0)[0]:
                    break
                s.sendall(chunk)
                sent += 2**16
        except OSError:
            pass
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    # cut off near the limit: what was sent past 2 MB is what the loopback socket buffers held (a few MB)
    assert sent < 16 * 2**20, sent
    assert _peak_mb(proc) - before < 50  # the server kept at most the 2 MB it read


def test_slow_clients_do_not_starve_the_health_check(live):
    port, proc = live
    slow = []
    for _ in range(150):  # more than the old global connection cap (98)
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        slow.append(s)
    try:
        assert _get(port).startswith(b"HTTP/1.1 200")  # answered while 150 sockets hang
        closed, deadline = 0, time.monotonic() + 20  # each closed by the server past its 1 s header deadline
        for s in slow:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                closed += s.recv(1) == b""
            except OSError:
                closed += 1
        assert closed == len(slow)
    finally:
        for s in slow:
            s.close()


def test_security_headers_on_every_answer(live):
    port, _ = live
    for path in ("/", "/healthz", "/static/app.js", "/nowhere", "/api/v1/model"):
        head = _get(port, path).split(b"\r\n\r\n")[0].lower()
        assert b"content-security-policy: default-src 'self'" in head, path
        assert b"x-content-type-options: nosniff" in head and b"x-frame-options: deny" in head, path


# --- in-process: every numbered finding ----------------------------------------------------------------------------
def test_401_carries_www_authenticate(client):
    r = client.get("/api/v1/model")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")


def test_a_deflate_bomb_upload_is_413_without_inflating(client, tmp_path):
    from helpers import make_dataset
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    bomb = make_dataset(tmp_path / "bomb.dcm", 64, 64, bytes(300 * 2**20), DeflatedExplicitVRLittleEndian).read_bytes()
    assert len(bomb) < 1_000_000
    r = post(client, ("bomb.dcm", bomb, "application/dicom"))
    assert r.status_code == 413 and "inflates past" in r.json()["detail"]


def test_error_answers_name_the_part_never_the_clients_file_name_or_type(client):
    r = post(client, ("DOE^JOHN_MRN4471.png", png(), "text/x-doe-john"))
    assert r.status_code == 415 and r.json()["detail"].startswith("files[0]:")
    r = post(client, ("a.png", png(), "image/png"), ("DOE^JOHN_MRN4471.png", b"\x89PNG\r\n\x1a\nbroken", "image/png"))
    assert r.status_code == 400 and r.json()["detail"].startswith("files[1]:")
    for answer in (r.text, post(client, ("DOE^JOHN.png", b"", "image/png")).text):
        assert "DOE" not in answer and "MRN" not in answer and "x-doe" not in answer


def test_a_corrupt_deflate_stream_in_an_upload_is_400_not_500(client, tmp_path):
    from helpers import make_dataset
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    data = bytearray(
        make_dataset(
            tmp_path / "x.dcm", 64, 64, (GRADIENT.astype(np.uint16)).tobytes(), DeflatedExplicitVRLittleEndian
        ).read_bytes()
    )
    data[-200:] = os.urandom(200)
    data[400:464] = os.urandom(64)
    r = post(client, ("x.dcm", bytes(data), "application/dicom"))
    assert r.status_code == 400, r.text


def test_a_deflate_bomb_without_the_landmarks_the_old_guard_read_is_still_413(bundle, tmp_path):
    from helpers import hidden_deflate_bomb

    # 12 MB inflated is a bomb for a 1-megapixel limit (budget 2 bytes a pixel + 1 MiB)
    with TestClient(create_app(ServeSettings(bundle, max_pixels=1_000_000))) as c:
        for how in ("padded", "no group length"):
            r = c.post(
                "/api/v1/predict", files=[("files", ("b.dcm", hidden_deflate_bomb(tmp_path, how), "application/dicom"))]
            )
            assert r.status_code == 413 and "inflates past" in r.json()["detail"], how


def test_an_empty_api_key_is_refused_at_start(bundle, capsys, monkeypatch):
    assert main(["serve", "--model", str(bundle), "--api-key", ""]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--api-key" in err[0] and "empty" in err[0]
    monkeypatch.setenv("CCAD_API_KEY", " ")
    from ccad.cli import build_parser

    args = build_parser().parse_args(["serve", "--model", str(bundle)])
    assert args.api_key == " "  # taken from the environment, then refused the same way
    assert main(["serve", "--model", str(bundle), "--api-key", " "]) == 2


def test_a_bundle_without_its_card_says_so(bundle, tmp_path, capsys):
    import shutil

    broken = tmp_path / "bundle"
    shutil.copytree(bundle, broken)
    (broken / "ccad-model.json").unlink()
    assert main(["predict", "--model", str(broken), "x.png"]) == 2
    assert "without its card" in capsys.readouterr().err


def test_too_many_files_and_too_many_pixels_are_413(bundle):
    with TestClient(create_app(ServeSettings(bundle, max_pixels=40_000, max_request_pixels=60_000))) as c:
        # the limit, pinned here: 16 files a request (changing it must change this test)
        r = c.post("/api/v1/predict", files=[("files", (f"{i}.png", png(16), "image/png")) for i in range(17)])
        assert r.status_code == 413
        r = c.post("/api/v1/predict", files=[("files", (f"{i}.png", png(16, i), "image/png")) for i in range(16)])
        assert r.status_code == 200 and len(r.json()["results"]) == 16
        r = c.post("/api/v1/predict", files=[("files", (f"{i}.png", png(150, i), "image/png")) for i in range(3)])
        assert r.status_code == 413 and "pixels in all" in r.json()["detail"]  # 3 x 22,500 > 60,000


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: _tiff_with_nan(), "non-finite"),
        (lambda p: make_dicom(p / "s.dcm", GRADIENT.astype(np.uint16) * 16, slope=1e308).read_bytes(), "non-finite"),
        (lambda p: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "allowed: PNG, JPEG, TIFF, BMP or DICOM"),
    ],
)
def test_hostile_pixels_are_400_not_500(client, tmp_path, make, match):
    r = post(client, ("x.bin", make(tmp_path), "application/octet-stream"))
    assert r.status_code == 400 and match in r.json()["detail"]


def _tiff_with_nan() -> bytes:
    values = GRADIENT.astype(np.float32)
    values[1, 1] = np.inf
    buffer = io.BytesIO()
    Image.fromarray(values, mode="F").save(buffer, format="TIFF")
    return buffer.getvalue()


def test_a_dicom_sent_as_a_text_field_is_not_echoed(client, tmp_path):
    dicom = make_dicom(tmp_path / "x.dcm", GRADIENT.astype(np.uint16) * 16).read_bytes()
    r = client.post(
        "/api/v1/predict",
        data={"files": dicom.decode("latin-1")},
        headers={"X-API-Key": KEY},
        files=[("other", ("x", b"1", "text/plain"))],
    )
    assert 400 <= r.status_code < 500 and len(r.content) < 500
    assert b"Test^Patient" not in r.content and b"Patient" not in r.content


def test_the_public_card_shows_no_server_paths(client, bundle):
    card = client.get("/api/v1/model", headers={"X-API-Key": KEY}).json()
    text = json.dumps(card)
    assert str(Path(bundle).parent.parent) not in text and "/tmp/" not in text
    assert card["training_data"]["source"].endswith("manifest.csv")


def test_keep_uploads_must_be_writable_at_start(bundle, tmp_path):
    (tmp_path / "a-file").write_text("x")
    assert main(["serve", "--model", str(bundle), "--keep-uploads", str(tmp_path / "a-file" / "kept")]) == 2


def test_serve_refuses_impossible_settings(bundle, capsys):
    assert main(["serve", "--model", str(bundle), "--workers", "0"]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:
        main(["serve", "--model", str(bundle), "--port", "70000"])
    assert stopped.value.code == 2 and "not a TCP port" in capsys.readouterr().err


# --- bundles: integrity and authenticity ----------------------------------------------------------------------------
def test_every_file_must_be_listed_and_unchanged(bundle, tmp_path, capsys):
    image = tmp_path / "x.png"
    image.write_bytes(png())
    copy = tmp_path / "b1"
    shutil.copytree(bundle, copy)
    card = json.loads((copy / "ccad-model.json").read_text())
    del card["sha256"]["model.onnx"]
    (copy / "ccad-model.json").write_text(json.dumps(card))
    assert main(["predict", "--model", str(copy), str(image)]) == 2
    assert "not listed in the model card's sha256" in capsys.readouterr().err
    copy = tmp_path / "b2"
    shutil.copytree(bundle, copy)
    np.save(copy / "cam_weights.npy", np.zeros((1280, 2), np.float32))
    assert main(["predict", "--model", str(copy), str(image)]) == 2
    assert "cam_weights.npy: sha256 differs" in capsys.readouterr().err


def test_a_signed_bundle_verifies_and_an_edited_one_does_not(bundle, tmp_path, capsys):
    image = tmp_path / "x.png"
    image.write_bytes(png())
    assert main(["keys", "--out", str(tmp_path / "keys")]) == 0
    private, public = tmp_path / "keys" / "ccad-signing.key.pem", tmp_path / "keys" / "ccad-signing.pub.pem"
    assert private.stat().st_mode & 0o777 == 0o600
    signed = tmp_path / "signed"
    shutil.copytree(bundle, signed)
    assert main(["predict", "--model", str(signed), str(image), "--verify", str(public)]) == 2
    assert "not signed" in capsys.readouterr().err
    assert main(["sign", "--model", str(signed), "--key", str(private)]) == 0
    assert main(["predict", "--model", str(signed), str(image), "--verify", str(public), "--format", "json"]) == 0
    capsys.readouterr()
    card = json.loads((signed / "ccad-model.json").read_text())
    card["decision"]["threshold"] = 0.01  # a quiet edit that would change decisions
    (signed / "ccad-model.json").write_text(json.dumps(card, indent=2))
    assert main(["predict", "--model", str(signed), str(image), "--verify", str(public)]) == 2
    assert "signature does not match" in capsys.readouterr().err
    assert main(["keys", "--out", str(tmp_path / "other")]) == 0
    shutil.copytree(bundle, tmp_path / "resigned")
    assert (
        main(["sign", "--model", str(tmp_path / "resigned"), "--key", str(tmp_path / "other" / "ccad-signing.key.pem")])
        == 0
    )
    assert main(["predict", "--model", str(tmp_path / "resigned"), str(image), "--verify", str(public)]) == 2


def test_export_signs_and_the_run_pins_the_card(run_and_bundle, tmp_path):
    run, _ = run_and_bundle
    assert main(["keys", "--out", str(tmp_path / "keys")]) == 0
    out = tmp_path / "bundle"
    assert (
        main(
            [
                "export",
                "--model",
                str(run),
                "--out",
                str(out),
                "--sign",
                str(tmp_path / "keys" / "ccad-signing.key.pem"),
            ]
        )
        == 0
    )
    pinned = json.loads((run / "bundles.json").read_text())[-1]
    from ccad.io.files import sha256

    assert pinned["bundle"] == str(out.resolve()) and pinned["signed"] is True
    assert pinned["card_sha256"] == sha256(out / "ccad-model.json")


# --- the CLI: one line, exit 2, never a traceback --------------------------------------------------------------------
def test_cli_failures_are_one_line(bundle, synth_folders, tmp_path, capsys):
    image = sorted((synth_folders / "covid").glob("*.png"))[0]
    (tmp_path / "a-file").write_text("x")
    cases = [
        (["predict", "--model", str(bundle), str(image), "--out", str(tmp_path / "a-file" / "p.csv")], "a-file"),
        (["predict", "--model", str(bundle), str(image), "--heatmap", str(tmp_path / "a-file")], "is a file"),
        (["predict", "--model", str(bundle), "a\0b.png"], "NUL byte"),
    ]
    for manifest, content, message in [
        ("only-path.csv", "path,label\nx.png,\n", "needs both a path and a label"),
        ("latin1.csv", "path,label\ncaf\xe9.png,covid\n".encode("latin-1"), "not UTF-8"),
        ("utf16.csv", "path,label\nx.png,covid\n".encode("utf-16"), "not UTF-8"),
    ]:
        path = tmp_path / manifest
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        cases.append(
            (["evaluate", "--model", str(bundle), "--data", str(path), "--out", str(tmp_path / "ev")], message)
        )
    for args, message in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("ccad: error:") and len(err.splitlines()) == 1 and message in err, (args, err)


def test_resume_does_not_depend_on_how_a_path_is_spelled(bundle, synth_folders, tmp_path, monkeypatch):
    import csv

    monkeypatch.chdir(synth_folders.parent)
    relative = Path(synth_folders.name) / "covid"
    out = tmp_path / "p.csv"
    assert main(["predict", "--model", str(bundle), str(relative), "--out", str(out)]) == 0
    first = len(list(csv.DictReader(open(out))))
    assert main(["predict", "--model", str(bundle), str(relative.resolve()), "--out", str(out), "--resume"]) == 0
    assert len(list(csv.DictReader(open(out)))) == first  # nothing scored twice


def test_evaluate_an_external_set_whose_rows_are_all_test(bundle, synth_folders, tmp_path):
    import csv

    rows = list(csv.DictReader(open(synth_folders / "manifest.csv")))
    external = tmp_path / "external.csv"
    with open(external, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "split"])
        writer.writeheader()
        for row in rows[:20]:
            writer.writerow({"path": str(synth_folders / row["path"]), "label": row["label"], "split": "test"})
    assert main(["evaluate", "--model", str(bundle), "--data", str(external), "--out", str(tmp_path / "ev")]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["n"] == 20 and metrics["split"] == "test"


def test_an_unreadable_subfolder_gets_an_error_row(bundle, synth_folders, tmp_path, monkeypatch):
    import csv

    from helpers import as_unprivileged

    folder = tmp_path / "scans"
    shutil.copytree(synth_folders / "covid", folder / "a")
    shutil.copytree(synth_folders / "normal", folder / "b")
    (folder / "b").chmod(0)
    as_unprivileged(monkeypatch)  # root lists every folder whatever its mode: see it as a user would
    try:
        assert main(["predict", "--model", str(bundle), str(folder), "--out", str(tmp_path / "p.csv")]) == 0
    finally:
        (folder / "b").chmod(0o755)
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert any(r["file"].endswith("b") and "permission denied" in r["error"] for r in rows)


def test_a_body_below_the_minimum_rate_is_408_after_the_grace_and_holds_no_inference_slot(bundle, monkeypatch):
    """A client dripping its body is cut with 408 once its average rate falls below 240 B/s (after the grace),
    and while it drips it holds no inference slot: a complete request next to it is answered."""
    import asyncio

    from ccad.deploy.web import guard as module

    monkeypatch.setattr(module, "GRACE_S", 0.3)
    answered = []

    async def app(scope, receive, send):
        answered.append((await receive())["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    def scope():
        return {
            "type": "http",
            "method": "POST",
            "path": "/api/v1/predict",
            "headers": [(b"content-type", b"multipart/form-data; boundary=b")],
        }

    async def scenario():
        guard = module.Guard(app, ServeSettings(bundle, workers=1, queue=0, body_timeout_s=30))
        drip_sent, whole_sent = [], []

        async def drip():  # one byte every 0.2 s, for ever: 5 B/s
            await asyncio.sleep(0.2)
            return {"type": "http.request", "body": b"x", "more_body": True}

        async def whole():
            return {"type": "http.request", "body": b"--b--", "more_body": False}

        async def record(into):
            async def send(message):
                into.append(message)

            return send

        slow = asyncio.create_task(guard(scope(), drip, await record(drip_sent)))
        await asyncio.sleep(0.1)  # the slow body is being read
        await asyncio.wait_for(guard(scope(), whole, await record(whole_sent)), 10)
        await asyncio.wait_for(slow, 10)
        return drip_sent, whole_sent, guard.buffered.held

    drip_sent, whole_sent, held = asyncio.run(scenario())
    assert whole_sent[0]["status"] == 200 and answered == [b"--b--"]  # the one inference slot was free
    assert drip_sent[0]["status"] == 408 and b"slower than 240 bytes a second" in drip_sent[1]["body"]
    assert held == 0  # every byte the bodies held is given back


def test_the_bytes_a_body_held_go_back_when_its_client_leaves_or_it_is_cancelled(bundle):
    import asyncio

    from ccad.deploy.web import guard as module

    async def app(scope, receive, send):
        raise AssertionError("a body whose client left reached the app")

    async def scenario():
        guard = module.Guard(app, ServeSettings(bundle, workers=1, body_timeout_s=30))
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/api/v1/predict",
            "headers": [(b"content-type", b"multipart/form-data; boundary=b")],
        }
        messages = iter([{"type": "http.request", "body": b"x" * 1000, "more_body": True}, {"type": "http.disconnect"}])
        sent = []

        async def receive():
            return next(messages)

        async def send(message):
            sent.append(message)

        await guard(scope, receive, send)  # the client leaves after 1,000 bytes

        async def never():
            await asyncio.sleep(3600)

        stuck = asyncio.create_task(guard(scope, never, send))
        await asyncio.sleep(0.05)
        stuck.cancel()  # the server shutting down, say
        await asyncio.gather(stuck, return_exceptions=True)
        return sent, guard.buffered.held

    sent, held = asyncio.run(scenario())
    assert sent == [] and held == 0  # nothing answered to a client that left; every byte given back


def test_34_slow_clients_do_not_shut_the_api_for_a_legitimate_one(live):
    """As many dripping uploads as workers + queue (2 + 32): every legitimate predict next to them is answered
    200 (it was 503 for as long as they dripped), and each slow one is cut with 408 after the grace."""
    port, _ = live
    body = b"--b\r\nContent-Disposition: form-data; name=files; filename=x.png\r\nContent-Type: image/png\r\n\r\n"
    slow = []
    for _ in range(34):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(
            b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nX-API-Key: " + KEY.encode() + b"\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n" + body[:10]
        )
        slow.append(s)
    try:
        time.sleep(0.5)  # the slow bodies are being read
        for seed in range(3):
            answer = _post_png(port, png(seed=seed))
            assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        cut = []
        for s in slow:  # each is answered 408 once its rate falls below 240 B/s after the 5 s grace
            s.settimeout(15)
            cut.append(s.recv(4096)[:12])
        assert cut == [b"HTTP/1.1 408"] * 34
    finally:
        for s in slow:
            s.close()


def _post_png(port: int, data: bytes) -> bytes:
    boundary = b"ccadtest"
    body = (
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="files"; filename="x.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + data + b"\r\n--" + boundary + b"--\r\n"
    )
    head = (
        f"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\nConnection: close\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary.decode()}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head + body)
        return s.recv(4096)


def test_uploads_stay_in_memory_and_nothing_reaches_the_disk(bundle, monkeypatch):
    """Starlette spools a part to a temporary file past 1 MB by default; ccad keeps uploads in memory
    (docs/deployment.md): a 3 MB upload opens no temporary file (which Linux would have unlinked at once: its
    calls are counted)."""
    import tempfile

    opened = []
    real = tempfile.TemporaryFile

    def counting(*args, **kwargs):
        opened.append(kwargs.get("dir"))
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", counting)
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (1800, 1800), dtype=np.uint8)).save(buffer, format="PNG")
    assert buffer.tell() > 2**21
    with TestClient(create_app(ServeSettings(bundle))) as c:
        r = c.post("/api/v1/predict", files=[("files", ("big.png", buffer.getvalue(), "image/png"))])
    assert r.status_code == 200 and opened == []
    from starlette.formparsers import MultiPartParser

    assert MultiPartParser.spool_max_size == 2**20  # and Starlette is not patched for the whole process
