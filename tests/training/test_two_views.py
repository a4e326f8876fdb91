"""The default recipe, a two-view model, end to end: train -> export -> predict on ONNX Runtime, heatmaps, the
frontal-chest guard and the card."""

import json

import numpy as np
import pytest
from conftest import run_ccad, small_training

from ccad.cli import main
from ccad.screening import Screener

pytestmark = pytest.mark.slow
VIEWS = "thorax+equalize+lowpass|lungs+equalize+lowpass"


@pytest.fixture(scope="module")
def two_view(synth_folders, tmp_path_factory):
    root = tmp_path_factory.mktemp("two-view")
    # In child processes: the worker keeps no memory of the training (the suite's peak, BENCHMARKS.md).
    run_ccad(small_training(synth_folders, root / "run", preset="default"))  # the default recipe: two views
    run_ccad(["export", "--model", str(root / "run"), "--out", str(root / "bundle")])
    return root / "run", root / "bundle"


def test_the_bundle_agrees_with_the_run_and_keeps_heatmaps_and_the_guard(two_view, synth_folders, tmp_path):

    run, bundle = two_view
    files = sorted((synth_folders / "covid").glob("*.png"))[:6] + sorted((synth_folders / "normal").glob("*.png"))[:6]
    keras_side = list(Screener.load(run).screen(files, with_heatmaps=True))
    onnx_side = list(Screener.load(bundle).screen(files, with_heatmaps=True))
    for k, o in zip(keras_side, onnx_side):
        assert abs(k.probabilities["covid"] - o.probabilities["covid"]) < 1e-4
        assert k.predicted_class == o.predicted_class
        assert o.in_distribution is not None and o.ood_distance is not None
        assert o.pictures.heatmap.shape == (64, 64) and o.pictures.image.shape == (64, 64)
    assert any(o.pictures.heatmap.max() > 0 for o in onnx_side)
    card = json.loads((bundle / "ccad-model.json").read_text())
    assert card["preprocess"] == VIEWS and card["input"]["views"] == 2 and card["input"]["shape"][-1] == 6
    assert card["ood"]["dimensions"] == 2560 and card["ood"]["kind"] == "frontal-chest head"
    assert card["decision"]["rule"] == "specificity-90" and card["training_config"]["preset"] == "default"
    assert [v["preprocess"] for v in card["preprocessing"]["views"]] == VIEWS.split("|")


def test_each_view_head_is_trained_as_its_own_run_would_train_it(two_view):
    """The history holds both views' epochs; the validation split's probabilities are written and are the
    run's own (the threshold was fitted on them)."""
    import csv

    run, _ = two_view
    phases = [row["phase"] for row in csv.DictReader(open(run / "history.csv"))]
    assert phases == ["view 1: thorax+equalize+lowpass"] * 3 + ["view 2: lungs+equalize+lowpass"] * 3
    rows = list(csv.DictReader(open(run / "val_predictions.csv")))
    from ccad.scoring.predictor import load_predictor

    predictor = load_predictor(run)
    again = list(Screener(predictor).screen([r["file"] for r in rows]))
    np.testing.assert_allclose([float(r["p_covid"]) for r in rows], [p.raw_probabilities[0] for p in again], atol=1e-5)


def test_predict_and_evaluate_take_the_two_view_bundle(two_view, synth_folders, tmp_path, capsys):
    _, bundle = two_view
    assert (
        main(
            [
                "predict",
                "--model",
                str(bundle),
                str(synth_folders / "covid"),
                "--out",
                str(tmp_path / "p.csv"),
                "--heatmap",
                str(tmp_path / "heat"),
            ]
        )
        == 0
    )
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 25
    assert len(list((tmp_path / "heat").glob("*.png"))) == 24
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(bundle),
                "--data",
                str(synth_folders),
                "--out",
                str(tmp_path / "ev"),
                "--by",
                "label",
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["n"] == 48 and {r["value"] for r in metrics["by"]["label"]} == {"covid", "normal"}


def test_the_guard_flags_turned_and_inverted_films_and_passes_the_test_films(two_view):
    """The frontal-chest guard of a ``ccad train`` run: fitted on the training films against foreign inputs made
    from them; judged here on the test split's films, which it never saw, and on those films made foreign."""
    import csv

    from ccad.models.classifier import imagenet_weights_available

    if not imagenet_weights_available(224):
        pytest.skip("the guard's features need the ImageNet weights (KERAS_HOME=../shared/keras-home)")
    run, bundle = two_view
    test = [row["path"] for row in csv.DictReader(open(run / "split.csv")) if row["split"] == "test"]
    screener = Screener.load(bundle)
    films = [screener.decode(path) for path in test]

    def flagged(grays):
        scored = screener.score([str(i) for i in range(len(grays))], [screener.prepare(g) for g in grays])
        return np.mean([p.in_distribution is False for p in scored])

    assert len(films) >= 8
    assert flagged(films) <= 0.2
    assert flagged([1 - g for g in films]) >= 0.8
    assert flagged([np.ascontiguousarray(np.rot90(g)) for g in films]) >= 0.8
