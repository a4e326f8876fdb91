import numpy as np
import pytest

from ccad.errors import ConfigError
from ccad.preprocessing.augmentation import PRESETS, Augmenter, augment_numpy, get_spec


def batch(n=8, size=64, seed=0):
    rng = np.random.default_rng(seed)
    gray = rng.random((n, size, size)).astype(np.float32) * 0.5 + 0.25
    return np.repeat(gray[..., None], 3, axis=-1)


def test_paper_preset_is_table_4():
    spec = get_spec("paper")
    assert spec.horizontal_flip and spec.vertical_flip
    assert spec.rotation_degrees == 90 and spec.zoom == (-0.5, 0.0)
    assert spec.width_shift_px == 20 and spec.height_shift == 0.5
    assert spec.brightness == (0.5, 1.0) and spec.fill_mode == "nearest"
    assert spec.featurewise_center and spec.samplewise_center


def test_cxr_preset_never_flips_vertically():
    spec = get_spec("cxr")
    assert not spec.vertical_flip and not spec.horizontal_flip and spec.rotation_degrees <= 10


def test_none_is_identity():
    assert Augmenter("none", 64).is_identity
    x = batch()
    np.testing.assert_allclose(augment_numpy(Augmenter("none", 64), x), x)


def test_cxr_changes_images_mildly_and_stays_in_range():
    x = batch()
    y = augment_numpy(Augmenter("cxr", 64, seed=1), x)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert not np.allclose(x, y)
    assert abs(float(y.mean()) - float(x.mean())) < 0.1


def test_paper_preset_transforms_stay_in_range():
    y = augment_numpy(Augmenter("paper", 64, seed=2), batch())
    assert y.min() >= 0 and y.max() <= 1


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown augmentation"):
        get_spec("wild")
    assert set(PRESETS) == {"paper", "cxr", "robust", "none"}


def test_robust_preset_changes_acquisition_cues_but_keeps_the_range():
    rng = np.random.default_rng(0)
    images = rng.random((6, 64, 64, 1)).astype("float32") * 0.5 + 0.25
    out = augment_numpy(Augmenter("robust", 64, seed=3), images)
    assert out.shape == images.shape and out.min() >= 0.0 and out.max() <= 1.0
    assert not np.allclose(out, images, atol=0.02)
    # down/up-sampling, JPEG and blur remove high-frequency content: neighbouring pixels differ less
    assert np.abs(np.diff(out, axis=2)).mean() < np.abs(np.diff(images, axis=2)).mean()
