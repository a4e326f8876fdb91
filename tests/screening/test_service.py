"""The screening service every adapter scores through: batching, order, errors, a parsed data set taken as it
is, and the uploads kept as their pixels."""

import numpy as np
import pydicom
import pytest
from helpers import make_xray_dicom, png_bytes
from PIL import Image

from ccad.errors import ImageReadError
from ccad.io.dicomfile import parse_dicom
from ccad.io.images import read_grayscale_bytes
from ccad.screening import Screener, ScreeningService, Upload


def test_concurrent_images_are_scored_in_one_batch_with_the_same_results(bundle):
    screener = Screener.load(bundle)
    alone = [screener.score([f"{i}"], [screener.prepare(read_grayscale_bytes(png_bytes(seed=i)))])[0] for i in range(6)]
    with ScreeningService(screener, max_batch=4, wait_s=2.0) as service:  # a long wait: every image lands in time
        futures = [service.submit(Upload(f"{i}", png_bytes(seed=i)), heatmap=i == 1) for i in range(6)]
        together = [f.result(timeout=30) for f in futures]
    assert (service.batches, service.images) == (2, 6)  # 4 + 2: max_batch bounds a batch
    for a, b in zip(alone, together):
        assert a.name == b.name and a.predicted_class == b.predicted_class
        assert np.allclose(list(a.probabilities.values()), list(b.probabilities.values()), atol=1e-5)
    assert together[1].pictures is not None and together[0].pictures is None


def test_an_unreadable_input_fails_its_own_future_and_the_stream_names_it(bundle):
    screener = Screener.load(bundle)
    with ScreeningService(screener) as service:
        bad = service.submit(Upload("bad", b"not an image", "files[1]"))
        with pytest.raises(ImageReadError, match=r"^files\[1\]: "):
            bad.result(timeout=30)
        stream = list(
            service.screen([Upload("a", png_bytes()), Upload("b", b"junk", "files[1]"), Upload("c", png_bytes())])
        )
    assert [p.name for p in stream] == ["a", "b", "c"]
    assert [p.error is None for p in stream] == [True, False, True] and stream[1].error.startswith("files[1]: ")


def test_a_data_set_parsed_by_the_caller_is_decoded_without_a_second_parse(bundle, tmp_path, monkeypatch):
    gray = np.random.default_rng(0).random((64, 64))
    data = make_xray_dicom(tmp_path / "x.dcm", gray).read_bytes()
    parsed = parse_dicom(data, "the image", 10**6)
    screener = Screener.load(bundle)
    expected = screener.score(["x"], [screener.read(Upload("x", data))])[0]
    parses = []
    real = pydicom.dcmread
    monkeypatch.setattr(pydicom, "dcmread", lambda *a, **k: parses.append(1) or real(*a, **k))
    with ScreeningService(screener) as service:
        got = service.submit(Upload("x", data, "the image", parsed)).result(timeout=30)
    assert parses == [] and got.probabilities == pytest.approx(expected.probabilities, abs=1e-6)


def test_kept_uploads_are_their_decoded_pixels_by_hash_and_nothing_else(bundle, tmp_path):
    import hashlib

    data = png_bytes(size=(64, 48), seed=3)
    with ScreeningService(Screener.load(bundle), keep=tmp_path) as service:
        service.submit(Upload("patient-name.png", data)).result(timeout=30)
    (kept,) = tmp_path.iterdir()
    assert kept.name == hashlib.sha256(data).hexdigest() + ".png" and (kept.stat().st_mode & 0o777) == 0o600
    pixels = np.asarray(Image.open(kept), np.float64) / 65535
    np.testing.assert_allclose(pixels, read_grayscale_bytes(data), atol=1 / 65535)
