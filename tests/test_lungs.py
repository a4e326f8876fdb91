"""The lung-field estimate, and the input normalizations built on it."""

import numpy as np
import pytest

from ccad.errors import ConfigError
from ccad.images import prepare, prepare_with_region
from ccad.lungs import TEMPLATE, blank, estimate_lung_fields
from ccad.synthetic import patient_anatomy, render_patient


@pytest.fixture(scope="module")
def xray():
    rng = np.random.default_rng(3)
    return render_patient(rng, "normal", size=256, anatomy=patient_anatomy(rng))


def test_estimate_finds_both_lungs_on_a_synthetic_radiograph(xray):
    fields = estimate_lung_fields(xray)
    assert fields.method == "ii"
    mask = fields.mask
    assert 0.10 < mask.mean() < 0.5
    left, right = mask[:, :128].mean(), mask[:, 128:].mean()
    assert left > 0.05 and right > 0.05
    # the lungs are the dark fields: darker inside the estimate than in the rest of the thorax
    assert xray[mask].mean() < xray[~mask].mean()


def test_a_blank_image_falls_back_to_the_template():
    fields = estimate_lung_fields(np.full((300, 200), 0.5, np.float32))
    assert fields.method == "tt"
    assert np.array_equal(fields.mask, TEMPLATE)
    assert fields.at(300, 200).shape == (300, 200)


def test_blank_fills_only_the_region():
    gray = np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10)
    region = np.zeros((10, 10), bool)
    region[:5] = True
    out = blank(gray, region)
    assert np.allclose(out[:5], gray.mean()) and np.array_equal(out[5:], gray[5:])


@pytest.mark.parametrize("preprocess", ["none", "clahe", "equalize", "thorax", "thorax+clahe", "lungs+equalize",
                                        "thorax+equalize+lowpass", "lowpass"])
def test_every_preprocessing_gives_a_model_input(xray, preprocess):
    x = prepare(xray, 96, preprocess)
    assert x.shape == (96, 96) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_region_follows_the_thorax_crop(xray):
    fields = estimate_lung_fields(xray)
    region = fields.at(*xray.shape)
    _, carried = prepare_with_region(xray, 128, "thorax", region)
    # after cropping to the lung box the lungs fill much more of the input than before
    assert carried.mean() > region.mean() * 1.3
    _, same = prepare_with_region(xray, 128, "none", region)
    assert abs(same.mean() - region.mean()) < 0.02


def test_lungs_only_blacks_out_everything_else(xray):
    x, carried = prepare_with_region(xray, 128, "lungs+clahe", estimate_lung_fields(xray).at(*xray.shape))
    assert x[~carried].mean() < 0.05 < x[carried].mean()


def test_unknown_preprocessing_is_refused(xray):
    with pytest.raises(ConfigError, match="preprocessing step 'sharpen'"):
        prepare(xray, 64, "thorax+sharpen")
    with pytest.raises(ConfigError, match="not both"):
        prepare(xray, 64, "thorax+lungs")


def test_equalize_gives_every_exposure_the_same_gray_levels(xray):
    darker, brighter = xray ** 1.6, xray ** 0.6
    a, b = prepare(darker, 96, "equalize"), prepare(brighter, 96, "equalize")
    assert abs(np.median(darker) - np.median(brighter)) > 0.1
    assert abs(np.median(a) - np.median(b)) < 0.02


def test_lowpass_removes_fine_grain(xray):
    rng = np.random.default_rng(0)
    noisy = np.clip(xray + rng.normal(0, 0.05, xray.shape), 0, 1).astype(np.float32)
    plain, smoothed = prepare(noisy, 128, "none"), prepare(noisy, 128, "lowpass")
    assert np.abs(np.diff(smoothed, axis=1)).mean() < 0.7 * np.abs(np.diff(plain, axis=1)).mean()
