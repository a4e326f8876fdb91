"""Training through the Python API: settings, presets, and a run whose records and predictor agree."""

import json

import numpy as np
import pytest

from ccad.data.datasets import DataSpec
from ccad.errors import ConfigError
from ccad.models.card import RunMetadata
from ccad.screening import Screener
from ccad.training.config import PRESETS, TrainConfig, make_config


def test_presets_and_overrides():
    paper = make_config("paper-a", epochs=3)
    assert (paper.preset, paper.epochs, paper.batch_size, paper.dropout, paper.preprocess) == (
        "paper-a",
        3,
        30,
        0.3,
        "none",
    )
    assert make_config(dropout=None).dropout == TrainConfig().dropout  # None: not given
    # the default is the shipped model's recipe; the earlier one-view defaults are presets
    default = make_config()
    two_views = "thorax+equalize+lowpass|lungs+equalize+lowpass"
    assert (default.preprocess, default.threshold) == (two_views, "specificity-90")
    assert (TrainConfig.preprocess, TrainConfig.threshold) == (default.preprocess, default.threshold)
    for preset, view in (("one-view-lungs", "lungs"), ("one-view-thorax", "thorax")):
        one = make_config(preset)
        assert (one.preprocess, one.threshold) == (f"{view}+equalize+lowpass", "youden")
        assert make_config(preset, head="svm", fine_tune_epochs=0).head == "svm"  # one view takes any head
    assert set(PRESETS) >= {"default", "paper-a", "paper-b", "paper-b-10ep", "paper-methods"}


def test_paper_presets_are_the_papers_two_phases():
    for name, dropout in (("paper-a", 0.3), ("paper-b", 0.4)):
        c = make_config(name)
        assert (c.epochs, c.optimizer, c.lr, c.batch_size, c.dropout) == (10, "adam", 1e-3, 30, dropout)
        assert (c.fine_tune_epochs, c.fine_tune_lr, c.fine_tune_from) == (31, 1e-5, "all")
    assert make_config("paper-b-10ep").fine_tune_epochs == 0 and make_config("paper-b-10ep").dropout == 0.5
    methods = make_config("paper-methods")
    assert (
        methods.optimizer,
        methods.lr,
        methods.batch_size,
        methods.input_size,
        methods.epochs,
        methods.fine_tune_epochs,
    ) == ("rmsprop", 1e-4, 32, 128, 10, 0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"preset": "paper-z"}, "unknown preset"),
        ({"learning_rate": 1e-3}, "unknown setting"),
        ({"epochs": 0}, "`epochs` must be at least 1"),
        ({"dropout": 1.0}, "`dropout` must be in"),
        ({"preset": "one-view-lungs", "head": "svm", "fine_tune_epochs": 2}, "`fine_tune_epochs` needs the dense head"),
        ({"head": "svm"}, r"a multi-view `preprocess` trains the dense head \(one view: `preset` one-view-lungs"),
        ({"fine_tune_epochs": 2}, r"trains the frozen phase only: add `fine_tune_epochs` 0 \(one view: `preset`"),
        ({"preset": "paper-a", "distributed": True}, "`distributed` trains the frozen phase only"),
        ({"preprocess": "blur"}, "unknown preprocessing step"),
    ],
)
def test_bad_settings_are_config_errors(kwargs, match):
    preset = kwargs.pop("preset", None)
    with pytest.raises(ConfigError, match=match):
        make_config(preset, **kwargs)


@pytest.mark.slow
def test_train_writes_a_run_its_metadata_and_predictor_describe(synth_folders, tmp_path):
    from ccad.training.run import train

    config = make_config(epochs=2, weights="none", input_size=96, feature_views=1, preprocess="none")
    result = train(
        DataSpec(synth_folders / "manifest.csv", classes=("covid", "normal")), tmp_path / "run", config, verbose=0
    )
    meta = RunMetadata.load(tmp_path / "run")
    assert meta.classes == ["covid", "normal"] and meta.input_size == 96 and meta.preprocess == "none"
    assert meta.decision == result.decision.to_dict() and meta.ood["file"] == "ood.npz"
    assert meta.config["epochs"] == 2 and meta.parameters["trainable"] == 1280 * 2 + 2
    assert len(result.history) == 2 and meta.best_epoch in (1, 2)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["n"] == result.metrics["n"]
    # the predictor training used scores the test split's first image as a fresh load of the run does

    test = result.dataset.subset("test")[:3]
    fresh = list(Screener.load(tmp_path / "run").screen([s.path for s in test]))
    same = list(Screener(result.predictor).screen([s.path for s in test]))
    for a, b in zip(fresh, same):
        assert a.predicted_class == b.predicted_class
        assert np.allclose(list(a.probabilities.values()), list(b.probabilities.values()), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("fine_tune_lr", [1e-4, 50.0])  # 50: fine-tuning diverges, the frozen phase's best returns
def test_paper_preset_runs_both_phases_and_keeps_the_best_epoch_of_either(synth_folders, tmp_path, fine_tune_lr):
    import csv

    from ccad.models.classifier import backbone_of, imagenet_weights_available
    from ccad.preprocessing.batches import image_batches
    from ccad.preprocessing.pipeline import load_images
    from ccad.training.run import train

    if not imagenet_weights_available(224):  # a random backbone gives every image the same output: no best epoch
        pytest.skip("needs the ImageNet MobileNetV2 weights (KERAS_HOME=../shared/keras-home)")
    config = make_config(
        "paper-a",
        epochs=2,
        fine_tune_epochs=2,
        fine_tune_lr=fine_tune_lr,
        input_size=128,
        augmentation="none",
        batch_size=8,
    )
    result = train(
        DataSpec(synth_folders / "manifest.csv", classes=("covid", "normal")),
        tmp_path / "run",
        config,
        verbose=0,
        evaluate_test=False,
    )
    with open(tmp_path / "run" / "history.csv") as f:
        history = list(csv.DictReader(f))
    assert [row["phase"] for row in history] == ["frozen", "frozen", "fine-tune", "fine-tune"]
    meta = RunMetadata.load(tmp_path / "run")
    assert meta.config["fine_tune_epochs"] == 2 and meta.config["fine_tune_from"] == "all"
    backbone = backbone_of(result.model)
    bn = sum(
        int(np.prod(w.shape))
        for layer in backbone.layers
        if "BatchNormalization" in type(layer).__name__
        for w in layer.trainable_weights + layer.non_trainable_weights
    )
    assert meta.parameters["trainable"] == meta.parameters["total"] - bn  # the whole backbone but BatchNorm
    val_losses = [float(row["val_loss"]) for row in history]
    assert len({round(v, 4) for v in val_losses}) == 4  # four different epochs to choose from
    assert meta.best_epoch == 1 + int(np.argmin(val_losses))
    if fine_tune_lr == 50.0:
        assert meta.best_epoch <= 2  # fine-tuning diverged: the frozen phase's best epoch is kept
    images, kept, _ = load_images(result.dataset.subset("val"), 128, preprocess="none")
    from ccad.data.datasets import label_indices

    labels = label_indices(kept, result.dataset.classes)
    result.model.compile(loss="categorical_crossentropy")
    kept_loss = result.model.evaluate(image_batches(images, labels, 8, 2), verbose=0, return_dict=True)["loss"]
    assert kept_loss == pytest.approx(min(val_losses), rel=1e-4)
