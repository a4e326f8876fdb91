"""Hybrid scikit-learn heads (logreg, svm, extra-trees, WOA selection), backbones, and ccad compare."""

import json

import numpy as np
import pytest

from ccad.cli import main
from ccad.errors import ConfigError
from ccad.models.classifier import imagenet_weights_available
from ccad.screening import Screener


def _weights():
    return "imagenet" if imagenet_weights_available(224) else "none"


@pytest.mark.parametrize("head", ["logreg", "svm"])
def test_linear_heads_become_an_exact_dense_softmax(head):
    from ccad.training.heads import _linear_head

    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (120, 20)) + np.r_[np.zeros((60, 20)), np.ones((60, 20)) * 0.4]
    y = np.r_[np.zeros(60, int), np.ones(60, int)]
    kernel, bias = _linear_head(x, y, x[::3], y[::3], 2, head, seed=0)
    logits = x @ kernel + bias
    softmax = np.exp(logits - logits.max(1, keepdims=True))
    softmax /= softmax.sum(1, keepdims=True)
    if head == "logreg":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        reference = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=3000)).fit(x, y)
        np.testing.assert_allclose(softmax, reference.predict_proba(x), atol=1e-6)
    else:
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import LinearSVC

        reference = make_pipeline(StandardScaler(), LinearSVC(C=0.01, random_state=0, max_iter=10000)).fit(x, y)
        assert np.array_equal(softmax.argmax(1), (reference.decision_function(x) > 0).astype(int))


def test_head_settings_are_checked():
    from ccad.training.config import make_config

    with pytest.raises(ConfigError, match="`head`"):
        make_config(head="forest")
    with pytest.raises(ConfigError, match="scikit-learn head"):
        make_config(feature_selection="woa")
    with pytest.raises(ConfigError, match="unknown backbone"):
        make_config(backbone="alexnet")
    assert make_config(backbone="inception_v3").input_size == 299


@pytest.mark.slow
def test_extra_trees_with_woa_trains_exports_and_predicts_the_same(synth_folders, tmp_path):
    run, bundle = tmp_path / "run", tmp_path / "bundle"
    assert (
        main(
            [
                "train",
                "--data",
                str(synth_folders / "manifest.csv"),
                "--out",
                str(run),
                "--weights",
                _weights(),
                "--input-size",
                "64",
                "--feature-views",
                "1",
                "--preset",
                "one-view-lungs",  # a scikit-learn head reads one view
                "--head",
                "extra-trees",
                "--feature-selection",
                "woa",
            ]
        )
        == 0
    )
    config = json.loads((run / "config.json").read_text())
    head = config["head"]
    assert head["kind"] == "extra-trees" and head["file"] == "head.onnx" and (run / "head.onnx").is_file()
    assert 0 < head["features_kept"] < 1280 == len(head["selected_features"]) + (1280 - head["features_kept"])
    assert json.loads((run / "metrics.json").read_text())["auc"]["value"] >= 0.8
    assert main(["export", "--model", str(run), "--out", str(bundle)]) == 0
    card = json.loads((bundle / "ccad-model.json").read_text())
    assert card["head"]["kind"] == "extra-trees" and "head.onnx" in card["sha256"]
    assert card["heatmap"]["available"] is False

    files = sorted((synth_folders / "covid").glob("*.png"))[:5] + sorted((synth_folders / "normal").glob("*.png"))[:5]
    keras_results = list(Screener.load(run).screen(files))
    onnx_results = list(Screener.load(bundle).screen(files))
    for a, b in zip(keras_results, onnx_results):
        assert a.predicted_class == b.predicted_class
        assert abs(a.probabilities["covid"] - b.probabilities["covid"]) < 1e-4


@pytest.mark.slow
def test_compare_scores_backbones_and_heads_on_one_split(synth_folders, tmp_path):
    out = tmp_path / "cmp"
    assert (
        main(
            [
                "compare",
                "--data",
                str(synth_folders / "manifest.csv"),
                "--out",
                str(out),
                "--backbones",
                "mobilenet_v2,mobilenet",
                "--heads",
                "dense,logreg",
                "--input-size",
                "64",
                "--feature-selection",
                "woa",
                "--epochs",
                "3",
                "--feature-views",
                "1",
                "--weights",
                _weights(),
            ]
        )
        == 0
    )
    summary = json.loads((out / "comparison.json").read_text())
    rows = {(r["backbone"], r["head"]): r for r in summary["rows"]}
    assert set(rows) == {
        ("mobilenet_v2", "dense"),
        ("mobilenet_v2", "logreg"),
        ("mobilenet", "dense"),
        ("mobilenet", "logreg"),
    }
    assert rows[("mobilenet_v2", "dense")]["parameters"] == 2_257_984 + 1280 * 2 + 2
    assert rows[("mobilenet", "dense")]["trainable"] == 1024 * 2 + 2
    # MobileNet (v1) has no ImageNet weights offline here: the row says so instead of failing
    if rows[("mobilenet", "dense")]["weights"] == "none":
        assert "no ImageNet weights" in rows[("mobilenet", "dense")]["note"]
    splits = {json.dumps(sorted(line.strip() for line in open(f"{r['run']}/split.csv"))) for r in summary["rows"]}
    assert len(splits) == 1  # one split for every row
    assert all(r["n_test"] == summary["n_test"] > 0 for r in summary["rows"])
    assert rows[("mobilenet_v2", "logreg")]["feature_selection"] == "woa"  # WOA on the sklearn heads
    assert rows[("mobilenet_v2", "logreg")]["features_kept"] < 1280
    assert rows[("mobilenet_v2", "dense")]["feature_selection"] == "none"
    table = (out / "comparison.md").read_text()
    assert "| mobilenet | logreg |" in table and "latency" in table
    # Table 3: the networks as published (1000-class top) count what the paper printed
    assert rows[("mobilenet_v2", "dense")]["imagenet_original_parameters"] == 3_538_984
    assert rows[("mobilenet", "dense")]["imagenet_original_parameters"] == 4_253_864
    assert "| mobilenet_v2 | 3,538,984 | 3,538,984 | 14 | 2,260,546 |" in table
