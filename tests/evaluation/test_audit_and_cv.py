"""ccad cv and ccad audit on data where the right answers are known."""

import csv
import json

import numpy as np
import pytest
from conftest import write_csv
from PIL import Image

from ccad.cli import main
from ccad.data.synthetic import patient_anatomy, render_patient
from ccad.models.classifier import imagenet_weights_available


@pytest.fixture(scope="module")
def marker_shortcut_data(tmp_path_factory):
    """Both classes are normal radiographs; 'covid' images alone carry a bright burned-in marker in the
    top-left corner, outside the lungs, and come from another 'source'. A model can only learn the marker."""
    root = tmp_path_factory.mktemp("marker")
    rng = np.random.default_rng(5)
    rows = []
    for label, source in (("covid", "hospital-b"), ("normal", "hospital-a")):
        (root / label).mkdir()
        for i in range(36):
            image = render_patient(rng, "normal", size=128, anatomy=patient_anatomy(rng))
            if label == "covid":
                image[4:30, 4:30] = 1.0
            path = f"{label}/{label}-{i:03d}.png"
            Image.fromarray((image * 255).round().astype(np.uint8)).save(root / path)
            rows.append({"path": path, "label": label, "group": f"{label}-{i}", "source": source})
    write_csv(root / "manifest.csv", rows)
    return root / "manifest.csv"


def _weights():
    return "imagenet" if imagenet_weights_available(224) else "none"


@pytest.mark.slow
def test_audit_flags_a_model_that_reads_a_marker_outside_the_lungs(marker_shortcut_data, tmp_path):
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(marker_shortcut_data),
                "--out",
                str(run),
                "--weights",
                _weights(),
                "--input-size",
                "128",
                "--epochs",
                "10",
                "--feature-views",
                "1",
                "--augmentation",
                "none",
                "--preprocess",
                "none",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "audit",
                "--model",
                str(run),
                "--data",
                str(marker_shortcut_data),
                "--out",
                str(tmp_path / "audit"),
                "--split",
                "all",
            ]
        )
        == 0
    )
    result = json.loads((tmp_path / "audit" / "audit.json").read_text())
    lung_test = result["lung_test"]
    assert lung_test["original"]["auc"] > 0.9
    assert lung_test["no_lungs"]["auc"] > 0.80  # the marker survives blanking the lungs
    assert lung_test["lungs_only"]["auc"] < 0.75  # ...and is gone when only the lungs are shown
    assert result["verdict"][0].startswith("FAIL lung test")
    probe = result["source_probe"]
    assert probe["available"] and probe["confounded_with_label"]
    assert probe["all_images"]["balanced_accuracy"] > 0.9
    assert 0.0 <= result["heatmap"]["mass_in_lungs_mean"] <= 1.0
    report = (tmp_path / "audit" / "report.html").read_text()
    assert "FAIL lung test" in report and "Not a diagnosis" in report and "data:image/png;base64" in report


@pytest.mark.slow
def test_cross_validation_scores_every_image_once_with_disjoint_patients(synth_folders, tmp_path):
    out = tmp_path / "cv"
    assert (
        main(
            [
                "cv",
                "--data",
                str(synth_folders / "manifest.csv"),
                "--out",
                str(out),
                "--folds",
                "3",
                "--preset",
                "one-view-lungs",
                "--weights",
                _weights(),
                "--input-size",
                "64",
                "--epochs",
                "10",
                "--feature-views",
                "2",
            ]
        )
        == 0
    )
    summary = json.loads((out / "metrics.json").read_text())
    with open(out / "oof_predictions.csv") as f:
        rows = list(csv.DictReader(f))
    with open(synth_folders / "manifest.csv") as f:
        manifest = list(csv.DictReader(f))
    assert len(rows) == len(manifest) == summary["pooled"]["n"]
    assert len({r["file"] for r in rows}) == len(rows)  # each image scored once
    fold_of_group = {}
    for r in rows:
        assert fold_of_group.setdefault(r["group"], r["fold"]) == r["fold"]  # a patient sits in one fold
    assert [m["fold"] for m in summary["per_fold"]] == [1, 2, 3]
    assert sum(m["n"] for m in summary["per_fold"]) == len(rows)
    for fold in range(1, 4):
        split = list(csv.DictReader(open(out / f"fold-{fold}" / "split.csv")))
        test_paths = {r["path"] for r in split if r["split"] == "test"}
        assert test_paths == {r["file"] for r in rows if r["fold"] == str(fold)}
        assert not (out / f"fold-{fold}" / "model.keras").exists()
        assert json.loads((out / f"fold-{fold}" / "config.json").read_text())["decision"]["rule"] == "youden"
    assert summary["pooled"]["auc"]["value"] > 0.8
    assert summary["pooled"]["auc"]["ci95"] is not None
    assert "cross-validation" in (out / "report.html").read_text()
