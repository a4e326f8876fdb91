"""The preprocessing table: steps run in one order, with the parameters the card records."""

import numpy as np
import pytest

from ccad.errors import ConfigError
from ccad.preprocessing.pipeline import Prepared, prepare_full
from ccad.preprocessing.steps import STEPS, describe, preprocessing_steps


def test_steps_run_in_the_tables_order_whatever_order_they_are_given_in():
    assert preprocessing_steps("lowpass+equalize+lungs") == ["lungs", "equalize", "lowpass"]
    assert preprocessing_steps("none") == [] and preprocessing_steps("") == []
    with pytest.raises(ConfigError, match="thorax or lungs, not both"):
        preprocessing_steps("thorax+lungs")
    with pytest.raises(ConfigError, match="unknown preprocessing step 'sharpen'"):
        preprocessing_steps("equalize+sharpen")


def test_the_card_records_each_step_with_its_parameters():
    described = describe("lungs+equalize+lowpass")
    assert [s["name"] for s in described["steps"]] == ["lungs", "equalize", "lowpass"]
    lungs = described["steps"][0]
    assert lungs["params"] == {"margin": 0.08, "interior_margin": 0.02} and lungs["stage"] == "region"
    assert described["steps"][2]["params"] == STEPS["lowpass"].params == {"factor": 2, "min_side": 8}
    assert describe("none")["steps"] == []


def test_a_steps_parameters_change_what_it_does():
    """The table's parameters are what runs: a stronger low-pass removes more detail."""
    rng = np.random.default_rng(0)
    gray = rng.random((64, 64)).astype(np.float32)
    plain = prepare_full(gray, 32, "lowpass").image
    original = STEPS["lowpass"]
    try:
        STEPS["lowpass"] = type(original)(original.name, original.stage, original.apply, {"factor": 8, "min_side": 2})
        stronger = prepare_full(gray, 32, "lowpass").image
    finally:
        STEPS["lowpass"] = original
    assert stronger.std() < plain.std()


def test_a_mask_follows_the_crop_onto_the_model_input():
    gray = np.zeros((100, 200), np.float32)
    prepared = Prepared(np.zeros((10, 10), np.float32), gray, (0, 100, 100, 200))  # the right half was kept
    region = np.zeros((100, 200), bool)
    region[:, 150:] = True  # the right half of the crop
    mask = prepared.to_input(region)
    assert mask.shape == (10, 10) and mask[:, 6:].all() and not mask[:, :4].any()


def _images_to_equalize():
    rng = np.random.default_rng(3)
    smooth = np.cumsum(np.cumsum(rng.normal(size=(90, 70)), 0), 1)
    yield rng.random((64, 48)).astype(np.float32), None
    yield ((smooth - smooth.min()) / np.ptp(smooth)).astype(np.float32), rng.random((90, 70)) > 0.6
    yield np.round(rng.random((40, 40)) * 255).astype(np.float32) / 255, None  # an 8-bit film: many ties
    yield (rng.random((30, 30)) > 0.5).astype(np.float32), None  # two values
    yield np.full((12, 12), 0.4, np.float32), None  # one value
    yield rng.random((50, 50)), rng.random((50, 50)) > 0.9  # float64, a small mask
    yield -rng.random((20, 33)).astype(np.float32), None  # outside [0, 1]
    # pixels on the bin centres and one float step either side, where rounding puts a value in a neighbour
    edges = np.linspace(np.float32(0.013), np.float32(0.987), 257, dtype=np.float32)
    centres = (edges[:-1] + edges[1:]) / 2
    on = np.concatenate([centres, np.nextafter(centres, 0), np.nextafter(centres, 1), edges[[0, -1]]])
    yield np.resize(on, (37, 21)).astype(np.float32), None


@pytest.mark.parametrize("image, mask", list(_images_to_equalize()))
def test_equalization_is_scikit_images_bit_for_bit(image, mask):
    """ccad's histogram equalization (written for speed) gives scikit-image's values exactly, so models
    trained before it see the same inputs."""
    import skimage.exposure

    from ccad.preprocessing.steps import equalize_hist

    expected = skimage.exposure.equalize_hist(image, nbins=256, mask=mask)
    got = equalize_hist(image, 256, mask)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def test_the_lungs_view_is_equalized_on_the_lungs_and_black_outside():
    """With ``lungs``, the histogram is that of the lung interior and everything outside it is 0: the same
    as equalizing with the mask and blanking afterwards (scikit-image's way)."""
    import skimage.exposure

    from ccad.models.lungs import LungFields
    from ccad.preprocessing.pipeline import _apply_steps

    rng = np.random.default_rng(5)
    gray = rng.random((120, 100)).astype(np.float32)
    mask = np.zeros((96, 96), bool)
    mask[20:80, 10:40] = mask[25:85, 55:88] = True
    fields = LungFields(mask)
    made = _apply_steps([STEPS["lungs"], STEPS["equalize"]], gray, fields, 64)
    top, bottom, left, right = made.box
    inside = fields.interior(*gray.shape)[top:bottom, left:right]
    work = gray[top:bottom, left:right]
    reference = np.where(inside, skimage.exposure.equalize_hist(work, nbins=256, mask=inside), 0.0)
    from ccad.io.images import resize

    np.testing.assert_array_equal(made.image, resize(reference.astype(np.float32), 64))
