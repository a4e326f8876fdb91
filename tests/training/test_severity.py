"""Severity head: fitted on a bundle's features, attached, reported by predict."""

import csv
import json

import numpy as np
import pytest
from conftest import write_csv

from ccad.cli import main
from ccad.errors import DataError
from ccad.models.severity import SeverityHead, band_of
from ccad.training.severity import read_scored_rows


def test_bands_follow_the_documented_cut_offs():
    assert [band_of(x) for x in (0, 2.99, 3, 5.99, 6, 8)] == [
        "mild",
        "mild",
        "moderate",
        "moderate",
        "severe",
        "severe",
    ]


def test_head_clips_to_the_scale_and_gives_an_interval():
    head = SeverityHead(
        {
            "targets": {
                "geographic_extent": {"weights": [1.0, 0.0], "bias": 0.0, "range": [0, 8], "interval_halfwidth": 1.5},
                "opacity": {"weights": [0.0, 1.0], "bias": 1.0, "range": [0, 6], "interval_halfwidth": 1.0},
            }
        }
    )
    out = head(np.array([9.0, 2.0]))
    assert out["geographic_extent"] == {"value": 8.0, "interval95": [6.5, 8.0]}
    assert out["opacity"] == {"value": 3.0, "interval95": [2.0, 4.0]}
    assert out["band"] == "severe" and "not a clinical severity level" in out["note"]


def test_rows_without_scores_are_ignored_and_too_few_refused(tmp_path):
    manifest = tmp_path / "m.csv"
    rows = [
        {"path": f"{i}.png", "label": "covid", "geographic_extent": "" if i % 2 else str(i % 8), "opacity": str(i % 6)}
        for i in range(30)
    ]
    write_csv(manifest, rows)
    assert len(read_scored_rows(manifest)) == 15
    with pytest.raises(DataError, match="at least 10"):
        read_scored_rows_from(tmp_path, rows[:12])


def read_scored_rows_from(folder, rows):
    manifest = folder / "few.csv"
    write_csv(manifest, rows)
    return read_scored_rows(manifest)


@pytest.mark.slow
def test_severity_trains_attaches_and_shows_in_predict(run_and_bundle, synth_folders, tmp_path):
    import shutil

    _, bundle = run_and_bundle
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    covid = sorted((synth_folders / "covid").glob("*.png"))
    manifest, rows = _severity_manifest(bundle, covid, tmp_path)
    out = tmp_path / "sev"
    assert (
        main(
            [
                "severity",
                "train",
                "--model",
                str(copy),
                "--data",
                str(manifest),
                "--out",
                str(out),
                "--folds",
                "3",
                "--attach",
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == len(rows)
    extent = metrics["scores"]["geographic_extent"]
    assert extent["mae"]["value"] < extent["mae_predicting_mean"]["value"]
    assert (out / "report.html").read_text().count("data:image/png;base64") == 1
    card = json.loads((copy / "ccad-model.json").read_text())
    assert card["severity"]["scores"] == ["geographic_extent", "opacity"] and "severity.json" in card["sha256"]

    _check_severity_columns(copy, synth_folders, tmp_path / "pred.csv")
    # A changed severity.json is refused, like any other bundle file
    (copy / "severity.json").write_text((copy / "severity.json").read_text().replace("0", "1", 1))
    assert main(["predict", "--model", str(copy), str(covid[0])]) == 2


def _severity_manifest(bundle, covid, tmp_path):
    """A made-up severity that the images do show: where each image lies along the main axis of variation of
    the pooled features the severity head reads, spread over 0-8."""
    from ccad.screening import Screener
    from ccad.training.severity import pooled_features

    features = pooled_features(Screener.load(bundle), covid)
    centred = features - features.mean(axis=0)
    brightness = centred @ np.linalg.svd(centred, full_matrices=False)[2][0]
    scaled = 8 * (brightness - brightness.min()) / np.ptp(brightness)
    rows = [
        {
            "path": str(p),
            "label": "covid",
            "group": p.stem.rsplit("-", 1)[0],
            "geographic_extent": f"{extent:.2f}",
            "opacity": f"{extent * 0.75:.2f}",
        }
        for p, extent in zip(covid, scaled)
    ]
    manifest = tmp_path / "severity.csv"
    write_csv(manifest, rows)
    return manifest, rows


def _check_severity_columns(bundle, folder, results) -> None:
    """``ccad predict`` with the attached head: severity with its interval and band for images called COVID,
    empty for the others."""
    assert main(["predict", "--model", str(bundle), str(folder), "--out", str(results)]) == 0
    with open(results) as f:
        scored = list(csv.DictReader(f))
    assert {"geographic_extent", "geographic_extent_low", "opacity_high", "severity_band"} <= set(scored[0])
    for row in scored:
        if row["predicted_class"] == "covid":
            assert 0 <= float(row["geographic_extent_low"]) <= float(row["geographic_extent"]) <= 8
            assert row["severity_band"] in {"mild", "moderate", "severe"}
        else:
            assert row["geographic_extent"] == "" and row["severity_band"] == ""
    assert any(r["predicted_class"] == "covid" for r in scored)
