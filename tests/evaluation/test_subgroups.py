"""Results broken down by a field: ``ccad evaluate --by`` (ccad.evaluation.subgroups)."""

import csv
import json
import math

import numpy as np
import pytest
from conftest import write_csv
from helpers import make_xray_dicom

from ccad.cli import main
from ccad.evaluation.subgroups import MISSING, breakdown


def _wilson(k, n, z=1.959963984540054):
    centre = (k + z * z / 2) / (n + z * z)
    half = z * math.sqrt(k * (n - k) / n + z * z / 4) / (n + z * z)
    return centre - half, centre + half


def test_breakdown_against_hand_counted_values():
    # covid = index 0. AP: 3 covid (2 called covid), 1 normal (called covid); PA: 1 covid (missed), 3 normals kept.
    values = ["AP", "AP", "AP", "AP", "PA", "PA", "PA", "PA"]
    y_true = np.array([0, 0, 0, 1, 0, 1, 1, 1])
    predicted = np.array([0, 0, 1, 0, 1, 1, 1, 1])
    scores = np.array([0.9, 0.8, 0.3, 0.7, 0.4, 0.1, 0.2, 0.3])
    ap, pa = breakdown(values, y_true, predicted, scores, positive_index=0)
    assert (ap["value"], ap["n"], ap["positives"], ap["negatives"]) == ("AP", 4, 3, 1)
    assert (ap["sensitivity"]["k"], ap["sensitivity"]["n"], ap["specificity"]["k"]) == (2, 3, 0)
    assert ap["sensitivity"]["value"] == pytest.approx(2 / 3)
    assert ap["sensitivity"]["ci95"] == pytest.approx(_wilson(2, 3), abs=1e-9)
    assert ap["specificity"]["ci95"] == pytest.approx(_wilson(0, 1), abs=1e-9)
    assert ap["auc"] == pytest.approx(2 / 3)  # 0.7 (the normal) beats one of the three covid scores
    assert pa["sensitivity"]["value"] == 0.0 and pa["specificity"]["value"] == 1.0
    assert pa["auc"] == pytest.approx(1.0)  # 0.4 above every normal: ranked right, missed by the rule
    assert "only 3 positive images" in "; ".join(ap["notes"])


def test_a_subgroup_with_one_class_has_no_auc_and_its_other_rate_is_undefined():
    (row,) = breakdown(["x"] * 3, np.array([1, 1, 1]), np.array([1, 0, 1]), np.array([0.1, 0.9, 0.2]), 0)
    assert row["auc"] is None and row["sensitivity"]["value"] is None
    assert row["specificity"]["value"] == pytest.approx(2 / 3)


def test_evaluate_by_a_manifest_column_and_by_source(bundle, synth_folders, tmp_path, capsys):
    rows = list(csv.DictReader(open(synth_folders / "manifest.csv")))
    for i, row in enumerate(rows):
        row["path"], row["view"] = str((synth_folders / row["path"]).resolve()), "AP" if i % 3 == 0 else "PA"
    manifest = write_csv(tmp_path / "manifest-views.csv", rows)
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(bundle),
                "--data",
                str(manifest),
                "--split",
                "all",
                "--out",
                str(tmp_path / "ev"),
                "--by",
                "view",
                "--by",
                "source",
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    scored = list(csv.DictReader(open(tmp_path / "ev" / "predictions.csv")))
    view_of = {r["path"]: r["view"] for r in rows}
    for entry in metrics["by"]["view"]:
        mine = [r for r in scored if view_of[r["file"]] == entry["value"]]
        covid = [r for r in mine if r["label"] == "covid"]
        normal = [r for r in mine if r["label"] == "normal"]
        assert entry["n"] == len(mine) and entry["positives"] == len(covid)
        assert entry["sensitivity"]["k"] == sum(r["predicted_class"] == "covid" for r in covid)
        assert entry["specificity"]["k"] == sum(r["predicted_class"] == "normal" for r in normal)
    assert sorted(e["value"] for e in metrics["by"]["view"]) == ["AP", "PA"]
    assert [e["n"] for e in metrics["by"]["source"]] == [48]
    out = capsys.readouterr().out
    assert "by view:" in out and "AP: n=16" in out
    assert "By view" in (tmp_path / "ev" / "report.html").read_text()


def test_evaluate_by_dicom_attributes_counts_a_missing_one(bundle, tmp_path):
    from ccad.data.synthetic import patient_anatomy, render_patient

    rng = np.random.default_rng(5)
    for label in ("covid", "normal"):
        (tmp_path / "d" / label).mkdir(parents=True)
        for i in range(6):
            view = "AP" if i % 3 < 2 else None  # every third file has no ViewPosition at all
            make_xray_dicom(
                tmp_path / "d" / label / f"{i}.dcm",
                render_patient(rng, label, 128, patient_anatomy(rng)),
                ViewPosition=view,
                Modality="CR" if i < 3 else "DX",
            )
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(bundle),
                "--data",
                str(tmp_path / "d"),
                "--out",
                str(tmp_path / "ev"),
                "--by",
                "ViewPosition",
                "--by",
                "Modality",
            ]
        )
        == 0
    )
    by = json.loads((tmp_path / "ev" / "metrics.json").read_text())["by"]
    assert {e["value"]: e["n"] for e in by["ViewPosition"]} == {"AP": 8, MISSING: 4}
    assert {e["value"]: (e["positives"], e["negatives"]) for e in by["Modality"]} == {"CR": (3, 3), "DX": (3, 3)}


def test_an_unknown_field_is_refused_in_one_line_before_scoring(bundle, synth_folders, tmp_path, capsys):
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(bundle),
                "--data",
                str(synth_folders / "manifest.csv"),
                "--out",
                str(tmp_path / "ev"),
                "--by",
                "scanner",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--by scanner" in err[0]
    assert not (tmp_path / "ev").exists()
