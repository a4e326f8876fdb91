"""The preprocessing table: steps run in one order, with the parameters the card records."""

import numpy as np
import pytest

from ccad.errors import ConfigError
from ccad.preprocessing.pipeline import STEPS, Prepared, describe, prepare_full, preprocessing_steps


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
