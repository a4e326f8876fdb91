"""Shared fixtures: small synthetic data sets, and ../shared when it is there."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if (SHARED / "keras-home").is_dir():
    os.environ.setdefault("KERAS_HOME", str(SHARED / "keras-home"))

needs_shared = pytest.mark.skipif(
    not (SHARED / "data" / "covid-cxr" / "manifest.csv").is_file(),
    reason="../shared (real chest X-rays and ImageNet weights) is not beside the checkout",
)


@pytest.fixture(scope="session")
def synth_folders(tmp_path_factory):
    """covid/normal class folders, 24 images a class, 128 px."""
    from ccad.synthetic import generate

    return generate(tmp_path_factory.mktemp("synth") / "data", n_per_class=24, size=128, seed=1)


@pytest.fixture(scope="session")
def synth_paper_layout(tmp_path_factory):
    from ccad.synthetic import generate

    return generate(tmp_path_factory.mktemp("synth-paper") / "data", n_per_class=30, size=96, seed=2, layout="paper")


@pytest.fixture(scope="session")
def shared_dir():
    return SHARED
