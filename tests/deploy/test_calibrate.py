"""ccad calibrate: a bundle's threshold refitted on a site's own images (ccad.deploy.calibrate)."""

import json
import math

import numpy as np
import pytest

from ccad.cli import main
from ccad.deploy.calibrate import minimum_images, threshold_for
from ccad.errors import ConfigError
from ccad.screening import Screener


def test_the_specificity_threshold_keeps_exactly_the_share_asked_below_it():
    negatives = np.arange(1, 101) / 100  # 0.01 .. 1.00
    threshold = threshold_for(negatives, "specificity", 0.90)
    assert (negatives < threshold).sum() == 90 and 0.90 < threshold < 0.91
    positives = np.arange(1, 51) / 50
    threshold = threshold_for(positives, "sensitivity", 0.90)
    assert (positives >= threshold).sum() == 45 and 0.10 < threshold < 0.12


def test_how_many_images_a_target_needs():
    assert (minimum_images(0.90), minimum_images(0.95), minimum_images(0.99)) == (50, 100, 500)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Another 'hospital': the synthetic generator with other patients, 60 a class."""
    from ccad.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("site") / "data", n_per_class=60, size=128, seed=21)


def test_calibrating_to_a_specificity_on_a_sites_normals(bundle, site, tmp_path, capsys):
    from ccad.models.card import ModelCard

    out = tmp_path / "site-bundle"
    assert (
        main(
            [
                "calibrate",
                "--model",
                str(bundle),
                "--data",
                str(site),
                "--classes",
                "normal",
                "--target",
                "specificity=0.90",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "specificity" in capsys.readouterr().out
    card = ModelCard.load(out)
    record = card.extra["site_calibration"]
    assert record["base"]["card_sha256"] and record["data"]["counts"] == {"covid": 0, "normal": 60}
    assert record["target"] == {"specificity": 0.9}
    low, high = record["threshold_bootstrap_ci95"]
    assert low <= record["threshold"] <= high
    assert card.decision["threshold"] == record["threshold"] and "at the site" in card.decision["rule"]
    # the new bundle decides with it: at least 90% of the site's normals (54 of 60) are called normal
    files = sorted((site / "normal").glob("*.png"))
    predictions = list(Screener.load(out).screen(files))
    kept = sum(p.predicted_class == "normal" for p in predictions)
    assert kept >= math.ceil(0.9 * 60) and record["achieved"]["specificity"]["k"] == kept
    covid = [p.probabilities["covid"] for p in predictions]
    assert all((p.predicted_class == "covid") == (c >= record["threshold"]) for p, c in zip(predictions, covid))


def test_a_calibrated_bundle_can_be_signed_and_still_verifies(bundle, site, tmp_path):
    assert main(["keys", "--out", str(tmp_path / "keys")]) == 0
    key, public = tmp_path / "keys" / "ccad-signing.key.pem", tmp_path / "keys" / "ccad-signing.pub.pem"
    out = tmp_path / "signed"
    assert (
        main(
            [
                "calibrate",
                "--model",
                str(bundle),
                "--data",
                str(site),
                "--target",
                "specificity=0.90",
                "--out",
                str(out),
                "--sign",
                str(key),
            ]
        )
        == 0
    )
    png = sorted((site / "covid").glob("*.png"))[0]
    assert main(["predict", "--model", str(out), "--verify", str(public), str(png)]) == 0
    record = json.loads((out / "ccad-model.json").read_text())["site_calibration"]
    assert record["achieved"]["sensitivity"]["n"] == 60  # both classes given: the other rate is reported


def test_too_few_normals_are_refused_in_one_line(bundle, site, tmp_path, capsys):
    from conftest import write_csv

    rows = [{"path": str(p), "label": "normal"} for p in sorted((site / "normal").glob("*.png"))[:30]]
    manifest = write_csv(tmp_path / "few.csv", rows)
    assert (
        main(
            [
                "calibrate",
                "--model",
                str(bundle),
                "--data",
                str(manifest),
                "--target",
                "specificity=0.90",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "30 non-covid images" in err[0] and "at least 50" in err[0]
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError):
        from ccad.deploy.calibrate import parse_target

        parse_target("specificity=90")


def test_the_guard_can_be_refitted_on_the_sites_own_images(bundle, site, tmp_path):
    from ccad.models.card import ModelCard

    out = tmp_path / "site-guard"
    assert (
        main(
            [
                "calibrate",
                "--model",
                str(bundle),
                "--data",
                str(site),
                "--target",
                "specificity=0.90",
                "--out",
                str(out),
                "--unlabelled",
                str(site / "normal"),
            ]
        )
        == 0
    )
    base, new = ModelCard.load(bundle), ModelCard.load(out)
    assert new.ood["cutoff"] != base.ood["cutoff"] and "site" in new.ood["cutoff_rule"]
    assert new.extra["site_calibration"]["ood"]["images"] == 60
    assert new.sha256["ood.npz"] != base.sha256["ood.npz"]
    # the base's drift reference was measured against the old guard: it goes; 12 held-back images are too few
    # to be the site's (their PSI noise alone would pass the alarm), so there is none, and the card says why
    from ccad.models.ood import OodGuard

    guard = OodGuard.load(out / "ood.npz")
    assert guard.reference_distances is None and guard.reference_scores is None
    assert new.extra["site_calibration"]["ood"]["drift_reference"].startswith("none: 12 held-back images")
