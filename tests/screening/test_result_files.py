"""Predictions written down: the CSV columns and rows, the table, CSV and JSON texts, the heatmap pictures and
the streamed, resumable CSV, each compared with text written out by hand. No network: the tests' fake screener
(``helpers.fake_screener``)."""

import csv
import json

import numpy as np
import pytest
from helpers import fake_screener, mean_png
from PIL import Image

from ccad.cli.tables import format_results
from ccad.errors import ConfigError
from ccad.models.severity import BAND_NOTE, SeverityHead
from ccad.screening.records import Pictures, Prediction
from ccad.screening.results import (
    check_outputs,
    predict_to_csv,
    result_columns,
    result_row,
    save_overlay,
    save_overlays,
)

CLASSES = ["covid", "normal"]
RULE = "covid if p_covid >= 0.500, else the most likely other class (0.5, chosen on a test)"
SEVERITY = {
    "geographic_extent": {"value": 6.25, "interval95": [4.75, 7.75]},
    "opacity": {"value": 3.0, "interval95": [1.5, 4.5]},
    "band": "severe",
    "note": BAND_NOTE,
}


def scored(name="a.png", **fields) -> Prediction:
    values = dict(
        predicted_class="covid",
        probabilities={"covid": 0.8123456789, "normal": 0.1876543211},
        in_distribution=False,
        ood_distance=12.34567,
        lung_qc=["no_lungs", "small_fields"],
    )
    return Prediction(name, **{**values, **fields})


def test_the_columns_name_each_probability_severity_score_and_bound():
    assert result_columns(CLASSES) == [
        *("file", "predicted_class", "p_covid", "p_normal", "in_distribution", "ood_distance", "lung_qc"),
        *("decision_rule", "error"),
    ]
    assert result_columns(CLASSES, ["geographic_extent", "opacity"])[7:] == [
        *("geographic_extent", "geographic_extent_low", "geographic_extent_high"),
        *("opacity", "opacity_low", "opacity_high", "severity_band", "decision_rule", "error"),
    ]


def test_a_row_writes_each_field_in_its_column_at_its_precision():
    assert result_row(scored(), CLASSES)[-2:] == ["", ""]  # no rule given, none written
    assert result_row(scored(), CLASSES, rule=RULE) == [
        *("a.png", "covid", "0.812346", "0.187654", "false", "12.35", "no_lungs;small_fields", RULE, ""),
    ]
    row = result_row(scored(in_distribution=True, severity=SEVERITY), CLASSES, ["geographic_extent", "opacity"], RULE)
    assert row[4] == "true" and row[7:] == [
        *("6.25", "4.75", "7.75", "3.00", "1.50", "4.50", "severe", RULE, ""),
    ]
    unknown = Prediction("b.png", "normal", {"covid": 0.1, "normal": 0.9})  # no guard, no severity, no QC
    assert result_row(unknown, CLASSES, ["geographic_extent"], RULE) == [
        *("b.png", "normal", "0.100000", "0.900000", "", "", "", "", "", "", "", RULE, ""),
    ]
    failed = Prediction("c.png", error="c.png: not an image")
    assert result_row(failed, CLASSES, ["geographic_extent"], RULE) == [
        *("c.png", "", "", "", "", "", "", "", "", "", "", "", "c.png: not an image"),
    ]


def screener_with_severity():
    s = fake_screener(classes=CLASSES)
    head = {"weights": [10.0, 0.0, 0.0], "bias": 0.0, "range": [0.0, 8.0], "interval_halfwidth": 1.5}
    s.predictor.severity = SeverityHead({"targets": {"geographic_extent": head}})
    return s


def test_the_table_aligns_its_columns_and_says_the_rule_once_below():
    s = fake_screener(classes=CLASSES)
    results = [scored("long-name.png"), Prediction("b.png", error="b.png: not an image")]
    assert format_results(results, s).splitlines() == [
        "file           predicted_class  p_covid   p_normal  in_distribution  ood_distance  lung_qc                "
        "error",
        "long-name.png  covid            0.812346  0.187654  false            12.35         no_lungs;small_fields",
        "b.png                                                                                                     "
        "b.png: not an image",
        f"decision: {RULE}",
    ]


def test_csv_and_json_texts():
    s = screener_with_severity()
    results = [scored(severity={**SEVERITY, "geographic_extent": SEVERITY["geographic_extent"]}), scored("z.png")]
    assert format_results(results, s, "csv").split("\r\n") == [
        "file,predicted_class,p_covid,p_normal,in_distribution,ood_distance,lung_qc,geographic_extent,"
        "geographic_extent_low,geographic_extent_high,severity_band,decision_rule,error",
        f'a.png,covid,0.812346,0.187654,false,12.35,no_lungs;small_fields,6.25,4.75,7.75,severe,"{RULE}",',
        f'z.png,covid,0.812346,0.187654,false,12.35,no_lungs;small_fields,,,,,"{RULE}",',
    ]
    text = format_results(results, s, "json")
    assert text == json.dumps([r.to_dict() for r in results], indent=2)
    assert json.loads(text)[1] == {
        "file": "z.png",
        "predicted_class": "covid",
        "probabilities": {"covid": 0.8123456789, "normal": 0.1876543211},
        "lung_qc": ["no_lungs", "small_fields"],
        "in_distribution": False,
        "ood_distance": 12.34567,
    }
    with pytest.raises(ConfigError) as raised:
        format_results(results, s, "xml")
    assert str(raised.value) == "`fmt` must be one of table, json, csv, got 'xml'"


def pictured(name: str) -> Prediction:
    gray = np.linspace(0, 1, 24 * 32, dtype=np.float32).reshape(24, 32)
    heat = np.zeros((24, 32), np.float32)
    heat[:12, :16] = 1.0
    outline = np.zeros((24, 32), bool)
    outline[4:20, 4:28] = True
    pictures = Pictures(gray[:8, :8], heat[:8, :8], gray, heat, outline)
    return Prediction(name, "covid", {"covid": 0.9, "normal": 0.1}, pictures=pictures)


def test_overlays_are_named_by_file_and_class_and_show_the_x_ray_with_its_heat(tmp_path):
    target = save_overlay(pictured("x/chest.dcm"), tmp_path)
    assert target == tmp_path / "chest.covid.heatmap.png"
    picture = np.asarray(Image.open(target))
    assert picture.shape == (24, 32, 3)
    hot, cold = picture[2, 2].astype(int), picture[22, 30].astype(int)
    assert hot[0] > 3 * hot[1] and hot[1] == hot[2]  # full heat: jet's dark red over the X-ray
    assert cold[0] == cold[1] == cold[2]  # no heat: the X-ray's gray
    assert (picture[4, 10] == 255).all()  # the lung outline, in white
    folder = tmp_path / "new" / "folder"
    assert save_overlays([pictured("a.png"), scored("b.png"), pictured("c.png")], folder) == 2
    assert sorted(p.name for p in folder.iterdir()) == ["a.covid.heatmap.png", "c.covid.heatmap.png"]
    assert save_overlays([pictured("d.png")], folder) == 1  # the folder exists now


def test_outputs_that_cannot_be_written_are_refused_before_any_work(tmp_path):
    a_file = tmp_path / "f.csv"
    a_file.write_text("x")
    refusals = {
        (None, True, None): "`resume` needs `out`",
        (str(tmp_path / "o.csv"), False, str(a_file)): f"`heatmap` {a_file}: is a file; give a folder for the "
        "heatmap pictures",
        (str(tmp_path), False, None): f"`out` {tmp_path}: is a folder; give a CSV file name",
    }
    for (out, resume, heatmaps), message in refusals.items():
        with pytest.raises(ConfigError) as raised:
            check_outputs(out, resume, heatmaps)
        assert str(raised.value) == message
    check_outputs(str(a_file), True, str(tmp_path / "heat"))  # a CSV to resume, a folder still to make
    check_outputs(str(tmp_path / "new.csv"), False, str(tmp_path))


def images(tmp_path, *means: int) -> list:
    paths = []
    for i, m in enumerate(means):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(mean_png(m))
    return paths


def test_the_csv_streams_a_row_per_file_and_counts_errors(tmp_path, capsys):
    paths = images(tmp_path, 230, 20)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    out = tmp_path / "deep" / "er" / "p.csv"
    s = screener_with_severity()
    counts = predict_to_csv(s, [*paths, tmp_path / "bad.png"], out, progress=False)
    assert counts == {"scored": 2, "errors": 1, "skipped_done": 0}
    assert capsys.readouterr().err == ""  # no progress bar when not asked
    rows = list(csv.reader(open(out, newline="")))
    assert rows[0] == result_columns(CLASSES, ["geographic_extent"]) and len(rows) == 4
    assert [r[1] for r in rows[1:]] == ["covid", "normal", ""]
    assert rows[1][7:11] == ["8.00", "6.50", "8.00", "severe"] and rows[2][7:11] == ["", "", "", ""]
    assert rows[3][-1].startswith(f"{tmp_path / 'bad.png'}: ") and rows[3][-2] == ""
    assert rows[1][-2] == s.rule_text()
    predict_to_csv(s, paths, tmp_path / "q.csv")  # a progress bar by default, on stderr
    assert capsys.readouterr().err.startswith("\rpredict: 0img [")


def test_a_resumed_run_knows_a_file_whose_name_holds_a_carriage_return(tmp_path):
    odd = tmp_path / "a\rb.png"
    odd.write_bytes(mean_png(230))
    out = tmp_path / "p.csv"
    s = fake_screener(classes=CLASSES)
    predict_to_csv(s, [odd], out, progress=False)
    assert predict_to_csv(s, [odd], out, resume=True, progress=False) == {"scored": 0, "errors": 0, "skipped_done": 1}


def test_heatmaps_are_written_beside_the_csv_when_asked(tmp_path):
    s = fake_screener(classes=CLASSES)
    s.predictor.cam_weights = np.array([[0, 0], [1, 0], [0, 1]], np.float32)
    heat = tmp_path / "heat" / "maps"
    (tmp_path / "bad.png").write_bytes(b"not a png")  # an error row: no picture
    inputs = [*images(tmp_path, 230, 20), tmp_path / "bad.png"]
    assert predict_to_csv(s, inputs, tmp_path / "p.csv", heatmap_dir=heat, progress=False)["errors"] == 1
    assert sorted(p.name for p in heat.iterdir()) == ["0.covid.heatmap.png", "1.normal.heatmap.png"]
    predict_to_csv(s, inputs[:1], tmp_path / "q.csv", heatmap_dir=heat, progress=False)  # into a folder that exists


def test_a_resumed_csv_loses_a_half_written_row_and_keeps_one_header(tmp_path):
    paths = images(tmp_path, 230, 20, 120)
    out = tmp_path / "p.csv"
    s = fake_screener(classes=CLASSES)
    predict_to_csv(s, paths[:2], out, progress=False)
    whole = out.read_bytes()
    out.write_bytes(whole + f"{paths[2]},cov".encode())  # killed while writing the third row
    assert predict_to_csv(s, paths, out, resume=True, progress=False)["scored"] == 1
    rows = list(csv.reader(open(out, newline="")))
    assert [r[0] for r in rows] == ["file", *map(str, paths)] and out.read_bytes().startswith(whole)
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")  # created by a run that died before its header: resumed with one
    assert predict_to_csv(s, paths[:1], empty, resume=True, progress=False)["scored"] == 1
    assert [r[0] for r in csv.reader(open(empty, newline=""))] == ["file", str(paths[0])]
