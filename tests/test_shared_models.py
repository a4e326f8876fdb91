"""The shipped models and the paper's preset on the real data in ../shared (skipped without it): tests that
need none of test_shared_data.py's trained run, in a file of their own so that a second pytest-xdist worker
takes them while the first trains that run."""

import csv
import json

import pytest
from conftest import SHARED, needs_shared, run_ccad

pytestmark = [needs_shared, pytest.mark.shared]
MANIFEST = SHARED / "data" / "covid-cxr" / "manifest.csv"
DATASET_A = ["--data", str(MANIFEST), "--where", "paper_dataset_a=1", "--classes", "covid,normal"]
ALL_SOURCES = [
    "--data",
    str(MANIFEST),
    "--data",
    str(SHARED / "data" / "cohen-other" / "manifest.csv"),
    "--data",
    str(SHARED / "data" / "covid-cxr-rdb" / "manifest.csv"),
    "--relabel",
    "cohen-covid-chestxray:pneumonia=normal",
    "--classes",
    "covid,normal",
]


@pytest.mark.slow
def test_paper_a_preset_runs_end_to_end(tmp_path):
    out = tmp_path / "paper-a"
    run_ccad(
        [
            "train",
            *DATASET_A,
            "--out",
            str(out),
            "--preset",
            "paper-a",
            "--save-h5",
            "--epochs",
            "2",
            "--fine-tune-epochs",
            "1",
        ]
    )
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["augmentation"] == "paper" and config["config"]["dropout"] == 0.3
    assert config["config"]["batch_size"] == 30 and config["config"]["optimizer"] == "adam"
    assert config["parameters"]["total"] == 2_260_546  # the paper's count; trainable: the whole backbone but BatchNorm
    with open(out / "history.csv") as f:
        assert [row["phase"] for row in csv.DictReader(f)] == ["frozen"] * 2 + ["fine-tune"]
    for name in (
        "model.keras",
        "model.h5",
        "history.csv",
        "split.csv",
        "metrics.json",
        "report.html",
        "figures/training_curves.png",
        "figures/confusion_matrix.png",
        "figures/roc_curve.png",
        "figures/predictions.png",
    ):
        assert (out / name).is_file(), name


@pytest.mark.slow
def test_synthetic_model_learns_with_imagenet_features(synth_folders, tmp_path):
    """A model that learns: on synthetic X-rays the default recipe separates opacities from clear lungs."""
    from ccad.data.synthetic import generate

    out = tmp_path / "run"
    run_ccad(
        [
            "train",
            "--data",
            str(synth_folders / "manifest.csv"),
            "--out",
            str(out),
            "--input-size",
            "128",
            "--epochs",
            "15",
        ]
    )
    fresh = generate(tmp_path / "fresh", n_per_class=30, size=128, seed=99)
    run_ccad(["evaluate", "--model", str(out), "--data", str(fresh), "--out", str(tmp_path / "e")])
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["n"] == 60 and metrics["auc"]["value"] >= 0.85, metrics["auc"]


def test_shipped_lung_segmenter_keeps_its_held_out_dice():
    """The packaged segmenter, re-scored on the held-out patients of the mask set, matches its card."""
    import tempfile

    from ccad.models.lungs import default_segmenter
    from ccad.training.lung_segmenter import grouped_split, read_mask_manifest
    from ccad.training.lung_segmenter_scores import score_segmenter

    rows = read_mask_manifest(SHARED / "data" / "lung-masks" / "manifest.csv")
    test = [r for r, p in zip(rows, grouped_split([r["group"] for r in rows], 0)) if p == "test"]
    card = default_segmenter().card
    with tempfile.TemporaryDirectory() as tmp:
        scores = score_segmenter(default_segmenter().model_dir, test, tmp)
    assert scores["images"] == card["held_out"]["images"] == 56
    assert scores["dice_mean"] == pytest.approx(card["held_out"]["dice_mean"], abs=1e-3)
    assert scores["dice_mean"] >= 0.93 and scores["dice_p05"] >= 0.85


@pytest.mark.slow
def test_the_shipped_model_reproduces_its_cards_test_numbers_by_source(tmp_path):
    """The card's evaluation is what the recorded command's split gives: the same test split (covid-cxr's
    fixed one; the others split by seed 0, near-duplicates grouped), the same AUC and per-source rates."""
    from ccad.models.card import DEFAULT_BUNDLE, ModelCard

    card = ModelCard.load(DEFAULT_BUNDLE)
    assert card.preprocess.count("|") == 1 and card.decision["rule"] == "specificity-90"
    run_ccad(
        ["evaluate", "--model", str(DEFAULT_BUNDLE), *ALL_SOURCES, "--out", str(tmp_path / "ev"), "--by", "source"]
    )
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["n"] == card.evaluation["n"]
    assert metrics["confusion_matrix"] == card.evaluation["confusion_matrix"]
    assert abs(metrics["auc"]["value"] - card.evaluation["auc"]["value"]) < 1e-3
    by_source = {row["value"]: row for row in metrics["by"]["source"]}
    assert set(by_source) == {"cohen-covid-chestxray", "nih-chestxray8", "covid19-radiography-db"}
    assert by_source == {row["value"]: row for row in card.provenance["tested_on_by_source"]}
