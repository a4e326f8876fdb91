"""ccad reproduce-paper on a small synthetic manifest with the paper's subset columns."""

import csv
import json

import pytest
from conftest import write_csv

from ccad.cli import main


@pytest.mark.slow
def test_reproduce_paper_writes_the_cases_side_by_side(synth_folders, tmp_path):
    rows = list(csv.DictReader(open(synth_folders / "manifest.csv")))
    for i, row in enumerate(rows):
        row["path"] = str(synth_folders / row["path"])
        row["paper_dataset_a"] = "1"
        row["paper_dataset_b"] = "1" if i % 4 else "0"
    manifest = tmp_path / "paper.csv"
    write_csv(manifest, rows)
    out = tmp_path / "repro"
    assert main(["reproduce-paper", "--data", str(manifest), "--out", str(out), "--epochs", "1",
                 "--cases", "paper-a,paper-b"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [c["case"] for c in summary["cases"]] == ["paper-a", "paper-b"]
    a, b = summary["cases"]
    assert a["dataset"].startswith("Dataset A (24 COVID + 24 normal)")
    assert b["n_test"] < a["n_test"] + 1 and a["paper"]["accuracy"] == 0.958
    low, high = a["random_batch_accuracy_95_range"]
    assert 0.0 <= low <= high <= 1.0
    for case in ("paper-a", "paper-b"):
        for figure in ("training_curves.png", "confusion_matrix.png", "roc_curve.png", "predictions.png"):
            assert (out / case / "figures" / figure).is_file(), (case, figure)
        assert json.loads((out / case / "config.json").read_text())["config"]["preset"] == case
    table = (out / "paper-reproduction.md").read_text()
    assert "| paper-a | Dataset A" in table and "one batch" in table
