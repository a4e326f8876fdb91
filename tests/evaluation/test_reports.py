"""Figures and HTML reports from known numbers: what a reader sees is what was computed."""

import html
from pathlib import Path

import numpy as np
import pytest

from ccad.data.datasets import Dataset, Sample
from ccad.evaluation.metrics import CAVEAT, compute_metrics, format_interval
from ccad.evaluation.reports import html_page, write_figures, write_report


def test_format_interval():
    assert format_interval({"value": 0.8125, "ci95": [0.7, 0.9]}) == "0.812 [0.700, 0.900]"
    assert format_interval({"value": 1.5, "ci95": None}, digits=2) == "1.50"
    assert format_interval({"value": None, "ci95": None}) == "undefined"


def test_page_escapes_its_title_and_always_says_not_a_diagnosis():
    page = html_page("a <b> report", "<p>body</p>")
    assert "<title>a &lt;b&gt; report</title>" in page and "<p>body</p>" in page
    assert "Not a diagnosis." in page and html.escape(CAVEAT) in page


@pytest.fixture()
def scored(tmp_path):
    rng = np.random.default_rng(0)
    y = np.array([0] * 20 + [1] * 20)
    p_covid = np.clip(np.where(y == 0, 0.7, 0.3) + rng.normal(0, 0.2, 40), 0.01, 0.99)
    probabilities = np.stack([p_covid, 1 - p_covid], axis=1)
    samples = [Sample(Path(f"x{i}.png"), ["covid", "normal"][t], f"g{i // 2}", "test") for i, t in enumerate(y)]
    dataset = Dataset(samples, ["covid", "normal"], "covid", "manifest", "test data")
    metrics = compute_metrics(y, probabilities, dataset.classes, "covid", [s.group for s in samples])
    metrics.update(split="test", data="test data")
    return dataset, y, probabilities, metrics


def test_figures_are_written(scored, tmp_path):
    dataset, y, probabilities, metrics = scored
    images = np.random.default_rng(1).random((40, 16, 16)).astype(np.float32)
    history = [
        {"accuracy": 0.6, "loss": 0.7, "val_accuracy": 0.55, "val_loss": 0.72, "phase": "frozen"},
        {"accuracy": 0.7, "loss": 0.6, "val_accuracy": 0.65, "val_loss": 0.66, "phase": "frozen"},
    ]
    figures = write_figures(tmp_path / "figures", metrics, y, probabilities, images, dataset.classes, history)
    assert set(figures) == {
        "Training curves",
        "Confusion matrix",
        "ROC curve",
        "Reliability diagram",
        "Predictions (as stored, lung outline in cyan)",
    }
    for path in figures.values():
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_shows_the_numbers_with_their_intervals(scored, tmp_path):
    dataset, y, probabilities, metrics = scored
    write_report(tmp_path / "report.html", metrics, {}, dataset, {"weights": "imagenet", "preprocess": "none"}, "test")
    text = (tmp_path / "report.html").read_text()
    low, high = metrics["auc"]["ci95"]
    assert f"<td>{metrics['auc']['value']:.3f}</td><td>{low:.3f} - {high:.3f}</td>" in text
    assert "n = 40 images (covid: 20, normal: 20)" in text
    assert "resamples by\npatient group" in text and "Not a diagnosis." in text
    assert str(metrics["confusion_matrix"]) in text
