"""The scoring contract, on a predictor whose network outputs the test sets: decision rule, guard, lung QC,
severity and heatmaps against hand-computed values; the typed cards; the result formats. No TensorFlow."""

import csv
import io
import json

import numpy as np
import pytest

from ccad.cli import main
from ccad.cli.tables import format_results
from ccad.errors import ModelError
from ccad.models.card import BUNDLE_CARD, ModelCard, RunMetadata
from ccad.models.decision import DecisionRule
from ccad.models.ood import MahalanobisGuard
from ccad.models.severity import SeverityHead
from ccad.preprocessing.pipeline import Prepared
from ccad.scoring.predictor import Predictor
from ccad.screening import Screener
from ccad.screening.records import Prediction
from ccad.screening.results import result_columns, result_row

CLASSES = ["covid", "normal"]


class FixedPredictor(Predictor):
    """p(covid) = the image's mean; a 2x2x3 feature map that is 1 in its top-left cell, 0 elsewhere."""

    def _network(self, batch):
        mean = batch.mean(axis=(1, 2, 3))
        features = np.zeros((len(batch), 2, 2, 3), np.float32)
        features[:, 0, 0, :] = 1.0
        return np.stack([mean, 1 - mean], axis=1), features


def card(**changes) -> ModelCard:
    values = dict(
        classes=CLASSES,
        positive_class="covid",
        input_size=8,
        preprocess="none",
        models={"float": "m"},
        decision={"positive_index": 0, "threshold": 0.3, "temperature": 1.0, "rule": "0.3", "fitted_on": "a test"},
    )
    return ModelCard(**{**values, **changes})


class QC:
    def __init__(self, *flags):
        self.qc_flags = flags


def prepared(value: float, flags=()) -> Prepared:
    image = np.full((8, 8), value, np.float32)
    return Prepared(image, image, (0, 8, 0, 8), QC(*flags) if flags else None)


def test_the_decision_rule_threshold_decides_not_the_argmax():
    predictor = FixedPredictor(card())
    low, mid, high = Screener(predictor).score(["a", "b", "c"], [prepared(0.2), prepared(0.35), prepared(0.8)])
    assert (low.predicted_class, mid.predicted_class, high.predicted_class) == ("normal", "covid", "covid")
    assert mid.probabilities == pytest.approx({"covid": 0.35, "normal": 0.65})
    assert low.in_distribution is None and low.lung_qc == [] and low.warning is None  # no guard, no QC flags


def test_temperature_changes_the_probabilities_it_reports():
    predictor = FixedPredictor(card(decision={"positive_index": 0, "threshold": None, "temperature": 2.0}))
    (result,) = Screener(predictor).score(["a"], [prepared(0.8)])
    # softmax(log p / T): 0.8^0.5 / (0.8^0.5 + 0.2^0.5) = 2/3
    assert result.probabilities["covid"] == pytest.approx(2 / 3, abs=1e-6)
    assert result.raw_probabilities[0] == pytest.approx(0.8)


def test_the_guard_and_the_lung_check_make_a_result_out_of_distribution():
    d = 3
    guard = MahalanobisGuard(mean=np.zeros(d), vectors=np.eye(d), eigenvalues=np.ones(d), rest=1.0, cutoff=0.5)
    predictor = FixedPredictor(card(), ood=guard)
    # pooled features: the 2x2 map's mean = 0.25 in each of 3 channels -> distance sqrt(3 x 0.25^2) = 0.433
    inside, no_lungs = Screener(predictor).score(["a", "b"], [prepared(0.5), prepared(0.5, ("no_lungs",))])
    assert inside.ood_distance == pytest.approx(0.433, abs=1e-3) and inside.in_distribution is True
    assert no_lungs.in_distribution is False and "no lungs" in no_lungs.warning and no_lungs.lung_qc == ["no_lungs"]
    far = FixedPredictor(card(), ood=MahalanobisGuard(np.zeros(d), np.eye(d), np.ones(d), 1.0, cutoff=0.1))
    (result,) = Screener(far).score(["a"], [prepared(0.5)])
    assert result.in_distribution is False and "unlike the training images" in result.warning


def test_severity_only_for_images_called_positive():
    head = SeverityHead(
        {
            "targets": {
                "geographic_extent": {
                    "weights": [4.0, 0.0, 0.0],
                    "bias": 1.0,
                    "range": [0, 8],
                    "interval_halfwidth": 0.5,
                }
            }
        }
    )
    predictor = FixedPredictor(card(), severity=head)
    covid, normal = Screener(predictor).score(["a", "b"], [prepared(0.9), prepared(0.1)])
    assert covid.severity["geographic_extent"] == {"value": 2.0, "interval95": [1.5, 2.5]}  # 4 x 0.25 + 1
    assert covid.severity["band"] == "mild" and normal.severity is None


def test_heatmap_of_the_predicted_class_or_the_one_asked_for():
    weights = np.array([[1.0, -1.0], [1.0, -1.0], [1.0, -1.0]], np.float32)  # covid: positive, normal: negative
    predictor = FixedPredictor(card(), cam_weights=weights)
    (covid,) = Screener(predictor).score(["a"], [prepared(0.9)], with_heatmaps=True)
    heat = covid.pictures.heatmap
    assert heat.shape == (8, 8) and heat.max() == pytest.approx(1.0)
    assert heat[:4, :4].mean() > heat[4:, 4:].mean()  # the top-left cell holds the evidence
    (asked,) = Screener(predictor).score(["a"], [prepared(0.9)], with_heatmaps=True, heatmap_class="normal")
    assert asked.predicted_class == "covid" and not asked.pictures.heatmap.any()  # normal has no positive evidence
    assert covid.pictures.original.shape == (8, 8) and covid.pictures.lung_outline is None


def test_predictions_in_batches_and_unreadable_files_in_order(tmp_path):
    from PIL import Image

    files = []
    for i, value in enumerate((30, 200, 60, 250, 10, 128)):
        files.append(tmp_path / f"{i}.png")
        ramp = value + np.tile(np.array([-1, 1] * 8), (16, 1))  # mean = value, not blank
        Image.fromarray(ramp.astype(np.uint8)).save(files[-1])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    screener = Screener(FixedPredictor(card()))
    screener.prepare = lambda gray: prepared(float(gray.mean()))  # no lung segmenter needed here
    results = list(screener.screen([files[0], bad, *files[1:]]))
    assert [r.name for r in results] == [str(files[0]), str(bad), *map(str, files[1:])]
    assert "not a readable image" in results[1].error and results[1].predicted_class is None
    assert [r.predicted_class for r in results if not r.error] == [
        "normal",
        "covid",
        "normal",
        "covid",
        "normal",
        "covid",
    ]


def test_result_formats():
    predictor = FixedPredictor(card())
    (good,) = Screener(predictor).score(["x.png"], [prepared(0.35, ("uncertain",))])
    bad = Prediction("y.png", error="y.png: not a readable image")
    assert result_columns(CLASSES) == [
        "file",
        "predicted_class",
        "p_covid",
        "p_normal",
        "in_distribution",
        "ood_distance",
        "lung_qc",
        "decision_rule",
        "error",
    ]
    assert result_row(good, CLASSES, rule="R") == [
        "x.png",
        "covid",
        "0.350000",
        "0.650000",
        "",
        "",
        "uncertain",
        "R",
        "",
    ]
    rows = list(csv.reader(io.StringIO(format_results([good, bad], Screener(predictor), "csv"))))
    # the rule on every scored row, in words: the class, the threshold, how it was chosen
    assert rows[1][7] == "covid if p_covid >= 0.300, else the most likely other class (0.3, chosen on a test)"
    assert rows[2] == ["y.png", "", "", "", "", "", "", "", "y.png: not a readable image"]
    table = format_results([good, bad], Screener(predictor), "table")
    assert table.splitlines()[-1] == "decision: " + rows[1][7] and "decision_rule" not in table
    shown = json.loads(format_results([good, bad], Screener(predictor), "json"))
    assert shown[0] == {
        "file": "x.png",
        "predicted_class": "covid",
        "probabilities": good.probabilities,
        "lung_qc": ["uncertain"],
        "in_distribution": None,
    }
    assert shown[1] == {"file": "y.png", "error": "y.png: not a readable image"}
    table = format_results([good], Screener(predictor), "table").splitlines()
    assert table[0].split() == [c for c in result_columns(CLASSES) if c != "decision_rule"]
    assert table[1].split()[:2] == ["x.png", "covid"]


def test_model_card_round_trip_keeps_unknown_keys(tmp_path):
    original = card(extra={"future_field": {"a": 1}})
    original.save(tmp_path)
    loaded = ModelCard.load(tmp_path)
    assert loaded == original and json.loads((tmp_path / BUNDLE_CARD).read_text())["future_field"] == {"a": 1}
    assert loaded.decision_rule().threshold == 0.3


@pytest.mark.parametrize(
    "content, match",
    [
        (
            {"format": "ccad-bundle/99", "classes": ["a", "b"]},
            "bundle format 'ccad-bundle/99' is not one this ccad reads",
        ),
        ({"classes": ["a", "b"]}, "bundle format None"),
        ({"format": "ccad-bundle/1", "classes": ["a", "b"], "positive_class": "a", "input_size": 8}, "no models"),
        (["a list"], "not a JSON object"),
        ("{not json", "not readable JSON"),
    ],
)
def test_a_card_ccad_cannot_read_is_refused(tmp_path, content, match):
    (tmp_path / BUNDLE_CARD).write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ModelError, match=match):
        ModelCard.load(tmp_path)


def test_predict_with_an_unknown_bundle_format_is_one_line_and_exit_2(tmp_path, capsys):
    bundle = tmp_path / "bundle"
    card().save(bundle.mkdir() or bundle)
    raw = json.loads((bundle / BUNDLE_CARD).read_text())
    (bundle / BUNDLE_CARD).write_text(json.dumps(dict(raw, format="ccad-bundle/2")))
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    assert main(["predict", "--model", str(bundle), str(image)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bundle format 'ccad-bundle/2' is not one this ccad reads" in err


def test_run_metadata_without_a_config_needs_the_class_names(tmp_path):
    with pytest.raises(ModelError, match="class names unknown"):
        RunMetadata.load(tmp_path)
    meta = RunMetadata.load(tmp_path, classes=["covid", "normal"], outputs=2)
    assert meta.positive_class == "covid" and meta.preprocess == "none"  # what runs before `preprocess` used
    with pytest.raises(ModelError, match="3 outputs but 2 classes"):
        RunMetadata.load(tmp_path, classes=["covid", "normal"], outputs=3)


def test_each_result_is_in_the_csv_as_soon_as_it_is_scored(tmp_path):
    """A crash between two images loses no row already scored: the file holds row k before image k+1 is
    even looked at (docs/training.md's promise; the CSV used to be flushed every 64 rows)."""
    from ccad.screening.records import Prediction
    from ccad.screening.results import predict_to_csv

    out = tmp_path / "p.csv"
    seen = []

    class Streaming:
        classes, positive_class = ["covid", "normal"], "covid"
        severity_scores = []
        decision = DecisionRule(0, 0.5, rule="youden", fitted_on="a test")

        def rule_text(self):
            return self.decision.describe(self.positive_class)

        def screen(self, paths, with_heatmaps=False):
            for i, path in enumerate(paths):
                seen.append(len(out.read_text().splitlines()) if out.exists() else 0)  # header + i rows
                yield Prediction(path, "covid", {"covid": 0.9, "normal": 0.1}, in_distribution=True)

    files = []
    for i in range(5):
        files.append(tmp_path / f"{i}.png")
        files[-1].write_bytes(b"x")
    predict_to_csv(Streaming(), files, out, progress=False)
    assert seen[1:] == [2, 3, 4, 5]  # before image k+1: the header and k rows
