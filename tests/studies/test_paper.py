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
    assert (
        main(
            [
                "reproduce-paper",
                "--data",
                str(manifest),
                "--out",
                str(out),
                "--epochs",
                "1",
                "--fine-tune-epochs",
                "1",
                "--cases",
                "paper-a,paper-b,paper-b-10ep",
            ]
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert [c["case"] for c in summary["cases"]] == ["paper-a", "paper-b", "paper-b-10ep"]
    a, b, b10 = summary["cases"]
    assert a["dataset"].startswith("Dataset A (24 COVID + 24 normal)")
    assert b["n_test"] < a["n_test"] + 1 and a["paper"]["table9"]["accuracy"] == 0.9375
    assert a["epochs_run"] == {"frozen": 1, "fine-tune": 1} and b10["epochs_run"] == {"frozen": 1, "fine-tune": 0}
    with open(out / "paper-a" / "history.csv") as f:
        assert [row["phase"] for row in csv.DictReader(f)] == ["frozen", "fine-tune"]
    ranges = a["batches_of_32"]["range95"]
    assert ranges["accuracy"] is not None  # others are None when undefined in every batch (no positive called)
    for metric, bounds in ranges.items():
        assert bounds is None or 0.0 <= bounds[0] <= bounds[1] <= 1.0, metric
    # the first batch of 32 is the first 32 rows of the case's predictions
    rows = list(csv.DictReader(open(out / "paper-a" / "predictions.csv")))[:32]
    right = sum(r["label"] == r["predicted_class"] for r in rows)
    assert a["batches_of_32"]["first"]["accuracy"] == pytest.approx(right / len(rows))
    assert sum(map(sum, a["batches_of_32"]["first_confusion_matrix"])) == len(rows)
    for case in ("paper-a", "paper-b", "paper-b-10ep"):
        for figure in ("training_curves.png", "confusion_matrix.png", "roc_curve.png", "predictions.png"):
            assert (out / case / "figures" / figure).is_file(), (case, figure)
        assert json.loads((out / case / "config.json").read_text())["config"]["preset"] == case
    table = (out / "paper-reproduction.md").read_text()
    for heading in ("Table 5", "Table 6", "Table 7", "Table 8", "Table 9"):
        assert f"## {heading}" in table, heading
    assert "| paper-a | A | Dataset A" in table and "| paper-a | AUC | 0.950 |" in table
    assert "Epochs overridden" in table and "![training curves](paper-a/figures/training_curves.png)" in table
