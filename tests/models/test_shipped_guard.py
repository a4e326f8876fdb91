"""The shipped bundle's guard: it flags what is not a frontal chest film and passes chest films, sick or not."""

import numpy as np
import pytest
from conftest import SHARED, needs_shared

from ccad.models.card import DEFAULT_BUNDLE, ModelCard
from ccad.screening import Intake, Screener


@pytest.fixture(scope="module")
def screener():
    return Screener.load(DEFAULT_BUNDLE, intake=Intake(score_anyway=True))  # a CT, as if a site routed one here


def _flags(screener, grays) -> list[bool]:
    scored = screener.score([str(i) for i in range(len(grays))], [screener.prepare(g) for g in grays])
    return [p.in_distribution is False for p in scored]


def test_the_card_says_which_guard_and_cites_its_evidence():
    ood = ModelCard.load(DEFAULT_BUNDLE).ood
    assert ood["kind"] == "frontal-chest head" and ood["cutoff_rule"] == "keeps 99% of the validation split"
    assert ood["fitted"]["same_data_as_the_model"] is True and ood["fitted"]["films"] == 1096
    evidence = ood["evaluation"]
    assert evidence["chosen"] == "frontal-chest head (keep 0.99)" and evidence["foreign_flagged"]["value"] == 1.0
    assert max(evidence["unseen_source_films_flagged"].values()) <= 0.05


def test_other_modalities_from_pydicoms_test_files_are_flagged(screener):
    """A CT, an MR, an ultrasound, a nuclear-medicine scan and a colour secondary capture, from the test files
    pydicom itself ships (its larger set, pydicom-data, is a download: benchmarks/guard.py uses it)."""
    from pathlib import Path

    import pydicom

    folder = Path(pydicom.__file__).parent / "data" / "test_files"
    files = ["CT_small.dcm", "MR_small.dcm", "examples_palette.dcm", "JPEG2000.dcm", "SC_rgb_jpeg_dcmd.dcm"]
    assert all(_flags(screener, [screener.decode(folder / name) for name in files]))


@needs_shared
def test_chest_films_pass_and_the_same_films_turned_inverted_or_a_photo_do_not(screener):
    import csv

    rows = list(csv.DictReader(open(SHARED / "data" / "covid-cxr" / "manifest.csv")))
    test = [r for r in rows if r["split"] == "test" and r["label"] in ("covid", "normal", "pneumonia")][::10]
    films = [screener.decode(SHARED / "data" / "covid-cxr" / r["path"]) for r in test]
    assert len(films) >= 20
    assert np.mean(_flags(screener, films)) <= 0.05  # COVID, normal and pneumonia films of the test split
    assert all(_flags(screener, [1 - g for g in films]))
    assert all(_flags(screener, [np.ascontiguousarray(np.rot90(g)) for g in films]))
    photos = [screener.decode(SHARED / "data" / "imagenet-sanity" / n) for n in ("cat.png", "grace_hopper.png")]
    assert all(_flags(screener, photos))
