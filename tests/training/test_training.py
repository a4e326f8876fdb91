"""Training through the Python API: settings, presets, and a run whose records and predictor agree."""

import json

import numpy as np
import pytest

from ccad.data.datasets import DataSpec
from ccad.errors import ConfigError
from ccad.models.card import RunMetadata
from ccad.training.config import PRESETS, TrainConfig, make_config


def test_presets_and_overrides():
    paper = make_config("paper-a", epochs=3)
    assert (paper.preset, paper.epochs, paper.batch_size, paper.dropout, paper.preprocess) == ("paper-a", 3, 30, 0.3, "none")
    assert make_config(dropout=None).dropout == TrainConfig().dropout  # None: not given
    assert make_config().preprocess == TrainConfig.preprocess == "lungs+equalize+lowpass"
    assert set(PRESETS) >= {"default", "paper-a", "paper-b", "paper-b-10ep"}


@pytest.mark.parametrize("kwargs, match", [
    ({"preset": "paper-z"}, "unknown preset"),
    ({"learning_rate": 1e-3}, "unknown setting"),
    ({"epochs": 0}, "--epochs must be at least 1"),
    ({"dropout": 1.0}, "--dropout must be in"),
    ({"head": "svm", "fine_tune_epochs": 2}, "--fine-tune-epochs needs the dense head"),
    ({"preprocess": "blur"}, "unknown preprocessing step"),
])
def test_bad_settings_are_config_errors(kwargs, match):
    preset = kwargs.pop("preset", None)
    with pytest.raises(ConfigError, match=match):
        make_config(preset, **kwargs)


@pytest.mark.slow
def test_train_writes_a_run_its_metadata_and_predictor_describe(synth_folders, tmp_path):
    from ccad.training.run import train

    config = make_config(epochs=2, weights="none", input_size=96, feature_views=1, preprocess="none")
    result = train(DataSpec(synth_folders / "manifest.csv", classes=("covid", "normal")), tmp_path / "run", config, verbose=0)
    meta = RunMetadata.load(tmp_path / "run")
    assert meta.classes == ["covid", "normal"] and meta.input_size == 96 and meta.preprocess == "none"
    assert meta.decision == result.decision.to_dict() and meta.ood["file"] == "ood.npz"
    assert meta.config["epochs"] == 2 and meta.parameters["trainable"] == 1280 * 2 + 2
    assert len(result.history) == 2 and meta.best_epoch in (1, 2)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["n"] == result.metrics["n"]
    # the predictor training used scores the test split's first image as a fresh load of the run does
    from ccad.scoring.predictor import KerasPredictor

    test = result.dataset.subset("test")[:3]
    fresh = KerasPredictor.load(tmp_path / "run").predict_files([s.path for s in test])
    same = result.predictor.predict_files([s.path for s in test])
    for a, b in zip(fresh, same):
        assert a.predicted_class == b.predicted_class
        assert np.allclose(list(a.probabilities.values()), list(b.probabilities.values()), atol=1e-5)
