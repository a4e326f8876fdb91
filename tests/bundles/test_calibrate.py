"""ccad calibrate: a bundle's threshold refitted on a site's own images (ccad.bundles.calibrate)."""

import datetime
import json
import math
import re

import numpy as np
import pytest
from helpers import site_manifest

from ccad.bundles.calibrate import _achieved, _threshold_interval, _wilson, minimum_images, parse_target, threshold_for
from ccad.cli import main
from ccad.errors import ConfigError, DataError
from ccad.screening import Screener


def test_the_specificity_threshold_keeps_exactly_the_share_asked_below_it():
    negatives = np.arange(1, 101) / 100  # 0.01 .. 1.00
    threshold = threshold_for(negatives, "specificity", 0.90)
    assert (negatives < threshold).sum() == 90 and 0.90 < threshold < 0.91
    positives = np.arange(1, 51) / 50
    threshold = threshold_for(positives, "sensitivity", 0.90)
    assert (positives >= threshold).sum() == 45 and 0.10 < threshold < 0.12


def test_the_threshold_is_midway_between_the_last_image_kept_and_the_next():
    scores = np.array([0.7, 0.1, 0.9, 0.3, 1.0, 0.5, 0.2, 0.8, 0.4, 0.6])  # 0.1 .. 1.0, unsorted
    # specificity 0.80 of 10: ceil(8) = 8 kept below, the 8th (0.8) and the 9th (0.9): (0.8 + 0.9) / 2
    assert threshold_for(scores, "specificity", 0.80) == pytest.approx(0.85)
    # sensitivity 0.80 of 10: 8 at or above, from the 3rd (0.3) up; the 2nd is 0.2: (0.2 + 0.3) / 2
    assert threshold_for(scores, "sensitivity", 0.80) == pytest.approx(0.25)
    nine = np.arange(1, 10) / 10  # 0.1 .. 0.9
    # specificity 0.95 of 9: ceil(8.55) = 9, all of them: midway from 0.9 to 0.9 + 1e-6
    assert threshold_for(nine, "specificity", 0.95) == pytest.approx(0.9000005, abs=1e-12)
    # sensitivity 0.95 of 9: all 9 at or above: midway from 0.1 to half of it, 0.05: 0.075
    assert threshold_for(nine, "sensitivity", 0.95) == pytest.approx(0.075)


def test_how_many_images_a_target_needs():
    assert (minimum_images(0.90), minimum_images(0.95), minimum_images(0.99)) == (50, 100, 500)
    # 0.5: 5 / 0.5 = 10, under the floor of 50; 0.92: 5 / 0.08 = 62.5, up to 63; 0.97: 5 / 0.03 = 166.7, up to 167
    assert (minimum_images(0.5), minimum_images(0.92), minimum_images(0.97)) == (50, 63, 167)


def test_a_target_is_read_as_its_rate_and_value():
    assert parse_target("specificity=0.90") == ("specificity", 0.9)
    assert parse_target("sensitivity=0.5") == ("sensitivity", 0.5)  # the lowest allowed
    assert parse_target("sensitivity=0.999") == ("sensitivity", 0.999)


@pytest.mark.parametrize(
    "text",
    [
        "specificity=1.0",
        "specificity=0.49",
        "specificity=90",
        "sensitivity=nan",
        "specificity=high",
        "specificity=",
        "specificity0.90",
        "recall=0.90",
        "=0.90",
    ],
)
def test_a_target_outside_its_form_or_range_is_refused(text):
    with pytest.raises(ConfigError, match=re.escape("expected specificity=T or sensitivity=T with T in [0.5, 1)")):
        parse_target(text)


def _wilson_by_hand(k, n, z=1.959963984540054):
    """The Wilson score interval: (k + z^2/2) / (n + z^2) +- z sqrt(k (n - k) / n + z^2 / 4) / (n + z^2)."""
    centre = (k + z * z / 2) / (n + z * z)
    half = z * math.sqrt(k * (n - k) / n + z * z / 4) / (n + z * z)
    return [centre - half, centre + half]


def test_the_wilson_interval_of_a_proportion():
    # 9 of 10: centre (9 + 1.9207) / 13.8415 = 0.78899, half 1.96 sqrt(0.9 + 0.96037) / 13.8415 = 0.19314
    assert _wilson(9, 10) == {"value": 0.9, "k": 9, "n": 10, "ci95": pytest.approx([0.59585, 0.98212], abs=1e-5)}
    # 0 of 10: centre 1.9207 / 13.8415 = 0.13877 and half 1.96 sqrt(0.96037) / 13.8415 = 0.13877
    assert _wilson(0, 10)["ci95"] == pytest.approx([0.0, 0.27753], abs=1e-5)
    assert _wilson(18, 20)["ci95"] == pytest.approx(_wilson_by_hand(18, 20))


# Ten negatives, one of them (0.6) on the threshold, and five positives, one on it, interleaved:
# at 0.6, 6 negatives are below (specificity 6/10) and 4 positives at or above (sensitivity 4/5; missed 1/5)
NEGATIVES = [0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.6, 0.65, 0.8, 0.9]
POSITIVES = [0.3, 0.6, 0.7, 0.85, 0.95]
Y = np.array([0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0], bool)
SCORES = np.zeros(len(Y))
SCORES[~Y], SCORES[Y] = NEGATIVES, POSITIVES


@pytest.mark.parametrize("name", ["specificity", "sensitivity"])
def test_calibrate_reports_the_sensitivity_not_the_miss_rate(name):
    achieved = _achieved(SCORES, Y, 0.6, name)
    assert list(achieved) == [name, {"specificity": "sensitivity", "sensitivity": "specificity"}[name]]
    # 6 of 10 negatives: centre (6 + 1.9207) / 13.8415 = 0.57225, half 1.96 sqrt(2.4 + 0.96037) / 13.8415 = 0.25957
    assert achieved["specificity"] == {
        "value": 0.6,
        "k": 6,
        "n": 10,
        "ci95": pytest.approx([0.31267, 0.83182], abs=1e-5),
    }
    # 4 of 5 positives: centre (4 + 1.9207) / 8.8415 = 0.66966, half 1.96 sqrt(0.8 + 0.96037) / 8.8415 = 0.29412
    assert achieved["sensitivity"] == {
        "value": 0.8,
        "k": 4,
        "n": 5,
        "ci95": pytest.approx([0.37553, 0.96378], abs=1e-5),
    }


def test_without_the_other_class_only_the_targets_rate_is_reported():
    negatives = ~Y
    achieved = _achieved(SCORES[negatives], Y[negatives], 0.6, "specificity")
    assert achieved == {"specificity": _wilson(6, 10), "sensitivity": None}
    # one positive is still a count: found at 0.6, 1 of 1
    one = np.append(SCORES[negatives], 0.6), np.append(Y[negatives], True)
    assert _achieved(*one, 0.6, "specificity")["sensitivity"] == _wilson(1, 1)


def test_the_thresholds_interval_is_the_middle_95_percent_of_its_bootstrap_refits():
    scores = np.arange(1, 101) / 100  # 0.01 .. 1.00; specificity 0.90 puts the threshold at 0.905
    # a refit sits at or below j/100 when at least 91 of 100 draws are: P = binom.sf(90, 100, j/100), which
    # crosses 2.5% between 0.83 and 0.84 and 97.5% between 0.94 and 0.95 (so the ends are 0.835 and 0.95)
    assert _threshold_interval(scores, "specificity", 0.90, seed=0) == pytest.approx([0.835, 0.95])
    # the positives' side, around 0.105 (at most 10 of 100 draws below it)
    assert _threshold_interval(scores, "sensitivity", 0.90, seed=0) == pytest.approx([0.06, 0.175])
    assert _threshold_interval(scores, "specificity", 0.90, seed=1) == pytest.approx([0.84, 0.95])


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
    assert record["achieved"]["sensitivity"] is None  # no covid images given: nothing to report
    covid = [p.probabilities["covid"] for p in predictions]
    assert all((p.predicted_class == "covid") == (c >= record["threshold"]) for p, c in zip(predictions, covid))


@pytest.mark.parametrize("target", ["specificity=0.90", "sensitivity=0.90"])
def test_the_card_records_the_rates_counted_at_the_new_threshold(bundle, site, tmp_path, capsys, target):
    from ccad.models.card import ModelCard

    out = tmp_path / "site-bundle"
    assert main(["calibrate", "--model", str(bundle), "--data", str(site), "--target", target, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    # the base bundle's p(covid) of each of the site's 60 covid and 60 normal images, counted here by hand
    base = Screener.load(bundle)
    score = {
        c: np.array([p.probabilities["covid"] for p in base.screen(sorted((site / c).glob("*.png")))])
        for c in ("covid", "normal")
    }
    name = target.split("=")[0]
    if name == "specificity":  # 54 of 60 normals below: midway from the 54th to the 55th
        normal = np.sort(score["normal"])
        threshold = (normal[53] + normal[54]) / 2
    else:  # 54 of 60 covid at or above: midway from the 7th lowest to the 6th
        covid = np.sort(score["covid"])
        threshold = (covid[6] + covid[5]) / 2
    kept, found = int((score["normal"] < threshold).sum()), int((score["covid"] >= threshold).sum())
    assert (kept if name == "specificity" else found) == 54
    assert found not in (0, 30, 60) and kept not in (0, 30, 60)  # the rate and its complement differ
    card = ModelCard.load(out)
    record = card.extra["site_calibration"]
    assert (
        record["threshold"] == pytest.approx(threshold, abs=1e-9) and card.decision["threshold"] == record["threshold"]
    )
    assert card.decision["rule"] == f"{name}-0.90 at the site"
    assert card.decision["fitted_on"].endswith("(n=60 non-covid)" if name == "specificity" else "(n=60 covid)")
    achieved = record["achieved"]
    assert {k: achieved["specificity"][k] for k in ("value", "k", "n")} == {"value": kept / 60, "k": kept, "n": 60}
    assert {k: achieved["sensitivity"][k] for k in ("value", "k", "n")} == {"value": found / 60, "k": found, "n": 60}
    assert achieved["specificity"]["ci95"] == pytest.approx(_wilson_by_hand(kept, 60), abs=1e-9)
    assert achieved["sensitivity"]["ci95"] == pytest.approx(_wilson_by_hand(found, 60), abs=1e-9)
    low, high = record["threshold_bootstrap_ci95"]
    assert low <= threshold <= high and low < high
    # and the command says the same
    for rate, k in {"specificity": kept, "sensitivity": found}.items():
        lo, hi = _wilson_by_hand(k, 60)
        label = rate if rate == name else f"{rate} at it:"
        assert f"{label} {k / 60:.3f} [{lo:.3f}, {hi:.3f}]" in printed, printed


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
        from ccad.bundles.calibrate import parse_target

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
    assert "site" in new.ood["cutoff_rule"]
    # the guard is the one fitted on the site's 60 normals, 48 against the foreign inputs made from them and 12
    # for the cut-off (seed 0), worked out again here from the base bundle's features of the same files
    from ccad.io.inputs import list_inputs
    from ccad.screening.guard import fit_guard

    screener = Screener.load(bundle)
    paths = [str(p) for p in list_inputs([site / "normal"])]
    pooled = np.stack([s.pooled for s in screener.screen(paths)])
    order = np.random.default_rng(0).permutation(60)
    expected = fit_guard(screener, pooled[order[:48]], pooled[order[48:]], [paths[i] for i in order[:48]], 0)
    assert new.ood["cutoff"] == pytest.approx(expected.cutoff, rel=1e-5) != base.ood["cutoff"]
    assert new.ood["kind"] == "frontal-chest head"
    assert new.ood["cutoff_rule"] == "keeps 99% of the site's held-back images"
    assert new.extra["site_calibration"]["ood"]["images"] == 60
    assert new.sha256["ood.npz"] != base.sha256["ood.npz"]
    # the base's drift reference was measured against the old guard: it goes; 12 held-back images are too few
    # to be the site's (their PSI noise alone would pass the alarm), so there is none, and the card says why
    from ccad.models.ood import load_guard

    guard = load_guard(out / "ood.npz")
    assert guard.reference_distances is None and guard.reference_scores is None
    assert new.extra["site_calibration"]["ood"]["drift_reference"].startswith("none: 12 held-back images")


def _with_a_card_field(bundle, copy):
    """The tests' bundle copied, with a field of its own in the card (``site_note``), to be kept."""
    import shutil

    shutil.copytree(bundle, copy)
    card = json.loads((copy / "ccad-model.json").read_text())
    (copy / "ccad-model.json").write_text(json.dumps({**card, "site_note": "kept"}))
    return copy


def test_the_site_calibration_record_names_its_base_data_target_and_rates(bundle, site, tmp_path):

    from ccad import __version__
    from ccad.bundles.calibrate import calibrate_bundle
    from ccad.data.datasets import DataSpec
    from ccad.io.files import sha256
    from ccad.models.card import ModelCard

    bundle = _with_a_card_field(bundle, tmp_path / "base")
    bad = {"a-empty.png": b"", "b-junk.png": b"not an image at all"}
    manifest = site_manifest(site, tmp_path / "site", 50, bad)  # exactly the 50 normals specificity 0.90 needs
    with pytest.raises(DataError) as raised:
        calibrate_bundle(bundle, DataSpec(manifest), "specificity=0.90", tmp_path / "refused")
    first = tmp_path / "site" / "a-empty.png"
    why = "not a readable image (allowed: PNG, JPEG, TIFF, BMP or DICOM)"
    assert str(raised.value) == f"{first}: {first}: {why} (pass `skip_bad` to leave unreadable files out)"
    out = tmp_path / "out"
    spec = DataSpec(manifest, skip_bad=True)
    record = calibrate_bundle(bundle, spec, "specificity=0.90", out)
    base, screener = ModelCard.load(bundle), Screener.load(bundle)
    assert datetime.datetime.fromisoformat(record.pop("date")).utcoffset() == datetime.timedelta(0)
    ci95 = record.pop("threshold_bootstrap_ci95")
    achieved = record.pop("achieved")
    assert record == {
        "ccad": __version__,
        "base": {
            "card_sha256": sha256(bundle / "ccad-model.json"),
            "model_sha256": base.sha256["model.onnx"],
            "decision": screener.decision.to_dict(),
        },
        "data": {
            "source": spec.discover(model_classes=screener.classes).source,
            "sha256": spec.discover(model_classes=screener.classes).fingerprint(),
            "images": 110,
            "unreadable": 2,
            "counts": {"covid": 60, "normal": 50},
        },
        "target": {"specificity": 0.9},
        "threshold": record["threshold"],
        "note": "measured on the images the threshold was fitted on; check it on others of the site",
    }
    # the threshold's bootstrap (seed 0) over the 50 readable normals in the data's order
    samples = [s for s in spec.discover(model_classes=screener.classes).samples if s.label == "normal"]
    normals = np.array([p.probabilities["covid"] for p in screener.screen([s.path for s in samples]) if not p.error])
    assert len(normals) == 50 and ci95 == _threshold_interval(normals, "specificity", 0.9, 0)
    assert achieved["specificity"]["n"] == 50 and achieved["sensitivity"]["n"] == 60
    card = ModelCard.load(out)
    assert card.ood == base.ood  # no --unlabelled: the guard as it was
    assert base.extra["site_note"] == card.extra["site_note"] == "kept" and card.extra["site_calibration"]["ccad"]
    with pytest.raises(ConfigError) as raised:
        calibrate_bundle(bundle, spec, "specificity=0.90", out)
    assert str(raised.value) == f"{out}: already exists (choose another `out` or remove it)"
    calibrate_bundle(bundle, spec, "specificity=0.90", out, overwrite=True)
    refused = site_manifest(site, tmp_path / "site49", 49)
    with pytest.raises(DataError, match="49 non-covid images cannot support specificity 0.90"):
        calibrate_bundle(bundle, DataSpec(refused), "specificity=0.90", tmp_path / "out49")


def _pngs(folder, count: int):
    from helpers import mean_png

    folder.mkdir()
    for i in range(count):
        (folder / f"{i:03d}.png").write_bytes(mean_png(20 + (i * 37) % 211))
    return folder


def test_the_sites_guard_is_fitted_on_80_percent_cut_at_the_rest_and_needs_50_images(tmp_path):
    from helpers import fake_screener

    from ccad.bundles.calibrate import _refit_guard
    from ccad.screening.guard import fit_guard

    s = fake_screener()
    few = _pngs(tmp_path / "few", 49)
    with pytest.raises(DataError) as raised:
        _refit_guard(s, few, 0)
    assert str(raised.value) == f"{few}: 49 readable images; refitting the guard needs at least 50"
    fifty = _pngs(tmp_path / "fifty", 50)
    (fifty / "zz-bad.png").write_bytes(b"junk")  # unreadable: left out
    guard, record = _refit_guard(s, fifty, 3)
    pooled = np.array([[m, 0.25, 1 - m] for m in ((20 + (i * 37) % 211) / 255 for i in range(50))])
    order = np.random.default_rng(3).permutation(50)
    films = [str(fifty / f"{i:03d}.png") for i in order[:40]]
    expected = fit_guard(s, pooled[order[:40]], pooled[order[40:]], films, 3)
    assert guard.cutoff == pytest.approx(expected.cutoff, rel=1e-5)
    assert np.allclose(guard.coef, expected.coef, atol=1e-5) and guard.intercept == pytest.approx(
        expected.intercept, abs=1e-5
    )
    assert record == {
        "source": str(fifty),
        "images": 50,
        "reference": 40,
        "cutoff_images": 10,
        "cutoff": guard.cutoff,
        "drift_reference": "none: 10 held-back images, under 100 (use 500 or more)",
    }
    assert guard.reference_distances is None  # too few to be quiet: no drift check


def test_five_hundred_site_images_make_the_drift_reference_of_the_held_back_hundred(tmp_path):
    from helpers import fake_screener

    from ccad.bundles.calibrate import _refit_guard

    guard, record = _refit_guard(fake_screener(), _pngs(tmp_path / "many", 500), 0)
    assert (record["reference"], record["cutoff_images"], record["drift_reference"]) == (400, 100, 100)
    held = np.random.default_rng(0).permutation(500)[400:]
    covid = np.array([(20 + (i * 37) % 211) / 255 for i in range(500)])[held]  # p(covid): the image's mean
    np.testing.assert_allclose(guard.reference_scores, covid, atol=1e-6)
    pooled = np.stack([covid, np.full(100, 0.25), 1 - covid], axis=1)
    np.testing.assert_allclose(guard.reference_distances, guard.distance(pooled), atol=1e-5)
