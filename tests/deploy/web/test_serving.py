"""The web service: every route, every bad input, auth, back-pressure, and a fuzz test."""

import io
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import png_bytes
from PIL import Image

from ccad.deploy.web import ServeSettings, create_app
from ccad.screening import Screener


@pytest.fixture(scope="module")
def client(bundle):
    with TestClient(create_app(ServeSettings(bundle))) as c:
        yield c


def post(client, *files, heatmap=False, **kw):
    return client.post(
        "/api/v1/predict", files=[("files", f) for f in files], data={"heatmap": str(heatmap).lower()}, **kw
    )


def test_health_model_docs_and_page(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    card = client.get("/api/v1/model").json()
    assert card["classes"] == ["covid", "normal"] and "not a diagnosis" in card["caveat"]
    assert "sha256" not in card
    assert card["decision"]["rule"] == "youden" and 0 < card["decision"]["threshold"] < 1
    assert card["preprocess"] == "lungs+equalize+lowpass"
    assert "/api/v1/predict" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 404  # Swagger UI needs a CDN: off unless --docs
    page = client.get("/")
    assert page.status_code == 200 and "not a diagnosis" in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # every asset is local: no CDN
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200


def test_predict_png_with_and_without_heatmap(client):
    r = post(client, ("a.png", png_bytes(), "image/png"), ("b.png", png_bytes(seed=1), "image/png"))
    assert r.status_code == 200
    results = r.json()["results"]
    assert [x["name"] for x in results] == ["a.png", "b.png"]
    assert abs(sum(results[0]["probabilities"].values()) - 1) < 1e-5 and "heatmap" not in results[0]
    r = post(client, ("a.png", png_bytes(), "image/png"), heatmap=True)
    result = r.json()["results"][0]
    heat = Image.open(io.BytesIO(__import__("base64").b64decode(result["heatmap"])))
    assert heat.mode == "RGBA" and heat.size == (64, 64)


def test_predict_matches_the_predictor(client, bundle, tmp_path):

    path = tmp_path / "x.png"
    path.write_bytes(png_bytes(seed=3))
    expected = list(Screener.load(bundle).screen([path]))[0].probabilities
    got = post(client, ("x.png", path.read_bytes(), "image/png")).json()["results"][0]["probabilities"]
    assert got == pytest.approx(expected, abs=1e-6)


def test_the_answer_states_the_decision_rule(client, bundle):
    from ccad.deploy.web import data_names
    from ccad.models.card import ModelCard

    card = ModelCard.load(bundle)
    body = post(client, ("x.png", png_bytes(seed=4), "image/png")).json()
    decision = body["model"]["decision"]
    assert decision["threshold"] == card.decision["threshold"] and decision["positive_class"] == "covid"
    assert decision["text"].startswith(f"covid if p_covid >= {card.decision['threshold']:.3f}")
    from ccad.screening import Screener

    assert decision["text"] == Screener.load(bundle).rule_text()  # one wording: the CSV's, the SR's, the API's
    result = body["results"][0]
    assert (result["predicted_class"] == "covid") == (result["probabilities"]["covid"] >= decision["threshold"])
    assert data_names(
        "../shared/data/covid-cxr/manifest.csv + ../shared/data/cohen-other/manifest.csv "
        "(relabel cohen-covid-chestxray:pneumonia=normal)"
    ) == ["covid-cxr", "cohen-other"]
    assert data_names("/tmp/x/data") == ["data"]


def test_dicom_works_and_patient_fields_are_not_echoed(client, tmp_path):
    from helpers import GRADIENT, make_dicom

    data = make_dicom(tmp_path / "x.dcm", GRADIENT.astype(np.uint16) * 16).read_bytes()
    assert b"Test^Patient" in data
    r = post(client, ("x.dcm", data, "application/dicom"), heatmap=True)
    assert r.status_code == 200 and b"Test^Patient" not in r.content and b"Patient" not in r.content


@pytest.mark.parametrize(
    "name,content,ctype,status,message",
    [
        ("a.png", b"not an image", "image/png", 400, "not a readable image"),
        ("a.png", png_bytes()[:200], "image/png", 400, "files[0]"),  # the part, never the client's file name
        ("a.png", b"", "image/png", 400, "empty file"),
        ("a.txt", b"hello", "text/plain", 415, "not an image"),
    ],
)
def test_bad_files(client, name, content, ctype, status, message):
    r = post(client, (name, content, ctype))
    assert r.status_code == status and message in r.json()["detail"]


def test_truncated_dicom_is_400(client, tmp_path):
    from helpers import GRADIENT, make_dicom

    data = make_dicom(tmp_path / "t.dcm", GRADIENT.astype(np.uint16)).read_bytes()[:-3000]
    r = post(client, ("t.dcm", data, "application/dicom"))
    assert r.status_code == 400 and r.json()["detail"] == "files[0]: its pixel data is shorter than its header says"


def test_wrong_request_content_type_is_415(client):
    r = client.post("/api/v1/predict", json={"files": "x"})
    assert r.status_code == 415
    r = client.post("/api/v1/predict", content=b"raw", headers={"content-type": "image/png"})
    assert r.status_code == 415


def test_no_files_is_4xx_not_5xx(client):
    r = client.post("/api/v1/predict", data={"heatmap": "true"}, files={"other": ("x", b"1")})
    assert 400 <= r.status_code < 500


def test_upload_and_pixel_limits_are_413(bundle):
    settings = ServeSettings(bundle, max_upload_bytes=50_000, max_pixels=500 * 500)
    with TestClient(create_app(settings)) as c:
        big = png_bytes((400, 400))  # noise PNG: ~160 kB, over 50 kB
        r = post(c, ("big.png", big, "image/png"))
        assert r.status_code == 413 and "upload limit" in r.json()["detail"]
        buffer = io.BytesIO()
        Image.new("L", (2000, 2000)).save(buffer, format="PNG")  # small file, 4 MP: a bomb for this limit
        r = post(c, ("bomb.png", buffer.getvalue(), "image/png"))
        assert r.status_code == 413 and "over the limit" in r.json()["detail"]


def test_api_key(bundle):
    with TestClient(create_app(ServeSettings(bundle, api_key="s3cret"))) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/api/v1/model").status_code == 401
        assert post(c, ("a.png", png_bytes(), "image/png")).status_code == 401
        assert c.get("/api/v1/model", headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.get("/api/v1/model", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.get("/api/v1/model", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert post(c, ("a.png", png_bytes(), "image/png"), headers={"X-API-Key": "s3cret"}).status_code == 200


def test_full_pool_answers_503_with_retry_after(bundle, monkeypatch):
    from ccad.screening import ScreeningService

    entered, release = threading.Event(), threading.Event()
    original = ScreeningService._read

    def slow(*args):
        entered.set()
        release.wait(10)
        return original(*args)

    monkeypatch.setattr(ScreeningService, "_read", slow)
    with TestClient(create_app(ServeSettings(bundle, workers=1, queue=0))) as c:
        first = threading.Thread(target=lambda: post(c, ("a.png", png_bytes(), "image/png")))
        first.start()
        assert entered.wait(30)  # the one worker holds the first image
        r = post(c, ("b.png", png_bytes(), "image/png"))
        release.set()
        first.join()
        assert r.status_code == 503 and r.headers["retry-after"] == "1"


def test_uploads_stay_off_disk_unless_kept(bundle, tmp_path):
    kept = tmp_path / "kept"
    with TestClient(create_app(ServeSettings(bundle, keep_uploads=kept))) as c:
        data = png_bytes()
        assert post(c, ("patient-name.png", data, "image/png")).status_code == 200
    files = list(kept.iterdir())
    assert len(files) == 1 and "patient" not in files[0].name
    assert files[0].name == f"{__import__('hashlib').sha256(data).hexdigest()}.png"
    assert files[0].stat().st_mode & 0o777 == 0o600
    stored = np.asarray(Image.open(files[0]))  # the decoded pixels, 16-bit
    original = np.asarray(Image.open(io.BytesIO(data)), np.float64)
    assert stored.dtype == np.uint16 and np.abs(stored / 65535 - original / 255).max() < 1e-4


# --- fuzz: whatever a client sends, no 5xx ---------------------------------------------------------------------
from hypothesis import HealthCheck, given  # noqa: E402
from hypothesis import settings as hsettings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    content=st.one_of(st.binary(max_size=2048), st.just(png_bytes()[:300]), st.just(b"\x89PNG\r\n\x1a\n")),
    name=st.text(min_size=0, max_size=30),
    ctype=st.sampled_from(
        ["image/png", "image/jpeg", "application/dicom", "application/octet-stream", "text/plain", ""]
    ),
    heatmap=st.sampled_from(["true", "false", "maybe", ""]),
)
def test_fuzz_predict_never_5xx(client, content, name, ctype, heatmap):
    r = client.post("/api/v1/predict", files=[("files", (name or "f", content, ctype))], data={"heatmap": heatmap})
    assert r.status_code < 500, (r.status_code, r.text)


def test_out_of_distribution_is_reported_by_the_api(client):
    flat = io.BytesIO()  # a smooth ramp: an image, but nothing like a chest
    Image.fromarray(np.tile(np.linspace(100, 140, 96).astype(np.uint8), (96, 1))).save(flat, format="PNG")
    r = post(client, ("flat.png", flat.getvalue(), "image/png"), heatmap=True)
    (result,) = r.json()["results"]
    assert result["in_distribution"] is False and "do not rely on this result" in result["warning"]
    assert "no_lungs" in result["lung_qc"] and result["ood_cutoff"] > 0
    assert result["original"] and result["original_heatmap"] and result["image"] != ""
    card = client.get("/api/v1/model").json()
    assert card["ood"]["cutoff"] > 0 and card["lung_segmenter"]["held_out"]["dice_mean"] > 0.9


def test_an_int8_model_for_throughput_only_is_flagged_in_every_answer(bundle, tmp_path):
    import json
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    card = json.loads((copy / "ccad-model.json").read_text())
    card["int8_check"] = {"use": "throughput only", "reason": "90.0% of decisions equal the float model's"}
    (copy / "ccad-model.json").write_text(json.dumps(card))
    with TestClient(create_app(ServeSettings(copy, variant="int8"))) as c:
        model = post(c, ("a.png", png_bytes(), "image/png")).json()["model"]
        assert "throughput only" in model["warning"] and "90.0%" in model["warning"]
    with TestClient(create_app(ServeSettings(copy))) as c:  # the float model: no warning
        assert "warning" not in post(c, ("a.png", png_bytes(), "image/png")).json()["model"]


def test_a_dicom_outside_what_ccad_scores_is_422_with_its_reason(client):
    from real_dicom import pydicom_file

    r = post(client, ("mr.dcm", pydicom_file("MR_small.dcm").read_bytes(), "application/dicom"))
    assert r.status_code == 422
    assert r.json()["detail"] == "files[0]: not scored: SOP class MR Image Storage is not CR, DX or Secondary Capture"


def test_a_pixel_bomb_in_a_codestream_is_413_from_its_header(client, tmp_path):
    import struct

    import pydicom
    from helpers import make_xray_dicom
    from real_dicom import DCMTK, encode

    if DCMTK is None:
        pytest.skip("dcmtk is not installed (apt-get install dcmtk; .ci/run does)")
    gray = np.random.default_rng(0).random((64, 64))
    ds = pydicom.dcmread(
        encode(make_xray_dicom(tmp_path / "x.dcm", gray), tmp_path / "j.dcm", "1.2.840.10008.1.2.4.80")
    )
    data = bytearray(ds.PixelData)
    struct.pack_into(">HH", data, data.index(b"\xff\xf7") + 5, 20000, 20000)
    ds.PixelData = bytes(data)
    ds.save_as(tmp_path / "bomb.dcm")
    r = post(client, ("bomb.dcm", (tmp_path / "bomb.dcm").read_bytes(), "application/dicom"))
    assert r.status_code == 413 and "compressed data larger than its header says" in r.json()["detail"]
