"""``ccad evaluate``: a trained model scored on one split of labelled data, with a report.

Images are scored through :meth:`ccad.screening.Screener.screen`, exactly as ``ccad predict`` scores
them (decision rule, out-of-distribution guard and lung check included).
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ccad.data.datasets import Dataset, DataSpec, Sample, group_near_duplicates, label_indices
from ccad.data.splits import apply_split_file, assign_splits
from ccad.errors import DataError, ImageReadError
from ccad.evaluation.metrics import compute_metrics, ood_rate
from ccad.evaluation.reports import write_figures, write_report
from ccad.evaluation.subgroups import breakdown, breakdown_html, subgroup_values
from ccad.io.files import write_json, write_text
from ccad.scoring.predictor import run_folder
from ccad.screening import Screener
from ccad.screening.records import Prediction
from ccad.screening.results import RESULT_COLUMNS, TRUTH_COLUMNS

SPLIT_CHOICES = ("test", "val", "all")


@dataclass
class ScoredSet:
    """Labelled images scored by a model: the samples kept, their predictions, files skipped."""

    samples: list[Sample]
    predictions: list[Prediction]
    skipped: list[tuple[str, str]]
    classes: list[str]

    @property
    def y_true(self) -> np.ndarray:
        return label_indices(self.samples, self.classes)

    @property
    def probabilities(self) -> np.ndarray:
        """(N, k) after the decision rule's temperature, columns in ``classes`` order."""
        return np.array([[p.probabilities[c] for c in self.classes] for p in self.predictions]).reshape(
            -1, len(self.classes)
        )

    @property
    def predicted(self) -> np.ndarray:
        return np.array([self.classes.index(p.predicted_class) for p in self.predictions], dtype=np.int64)

    @property
    def in_distribution(self) -> np.ndarray:
        return np.array([p.in_distribution is not False for p in self.predictions])


def score_samples(
    screener: Screener, samples: Sequence[Sample], classes: Sequence[str], skip_bad: bool = False
) -> ScoredSet:
    """Score ``samples`` with ``screener`` as ``ccad predict`` does (:meth:`Screener.screen`: the same intake,
    the same service); an unreadable file raises, or with ``skip_bad`` is listed."""
    predictions = list(screener.screen([s.path for s in samples]))
    bad = [(s, p.error) for s, p in zip(samples, predictions) if p.error is not None]
    if bad and not skip_bad:
        raise ImageReadError(bad[0][1])
    kept = [(s, p) for s, p in zip(samples, predictions) if p.error is None]
    return ScoredSet([s for s, _ in kept], [p for _, p in kept], [(str(s.path), e) for s, e in bad], list(classes))


def evaluate(
    screener: Screener,
    dataset: Dataset,
    out: str | os.PathLike,
    split: str = "test",
    history: list[dict[str, float]] | None = None,
    skip_bad: bool = False,
    by: Sequence[str] = (),
    manifests: Sequence[str | os.PathLike] = (),
) -> dict[str, Any]:
    """Score ``screener`` on one split of ``dataset`` (``test``, ``val`` or ``all``); write metrics.json,
    predictions.csv, figures/ and report.html to ``out``. With an out-of-distribution guard the metrics
    also hold the share of images it flags. ``by`` names fields to break the results down by
    (:mod:`ccad.evaluation.subgroups`; manifest columns are read from ``manifests``). Returns the metrics
    dict."""
    out = Path(out)
    samples = dataset.samples if split == "all" else dataset.subset(split)
    if not samples:
        raise DataError(f"{dataset.source}: no images in the {split} split")
    scored = score_samples(screener, samples, dataset.classes, skip_bad)
    if not scored.samples:
        raise DataError(f"{dataset.source}: none of the {split} images could be read")
    metrics = _metrics(screener, dataset, scored, split, by, manifests)
    _write_outputs(out, screener, dataset, scored, split, metrics, history)
    return metrics


def _metrics(screener: Screener, dataset: Dataset, scored: ScoredSet, split: str, by, manifests) -> dict[str, Any]:
    """The metrics with intervals (patient-grouped where the data names patients), the decision rule, the
    guard's flag rate and the breakdowns ``by``."""
    y_true, probabilities, predicted = scored.y_true, scored.probabilities, scored.predicted
    known_groups = dataset.layout in ("manifest", "pooled")
    metrics = compute_metrics(
        y_true,
        probabilities,
        dataset.classes,
        dataset.positive_class,
        [s.group for s in scored.samples] if known_groups else None,
        y_pred=predicted,
    )
    decision = screener.decision
    metrics["decision"] = dict(decision.to_dict(), text=decision.describe())
    metrics["split"] = split
    metrics["data"] = dataset.source
    metrics["skipped_files"] = [{"path": p, "error": e} for p, e in scored.skipped]
    if screener.ood is not None:
        metrics["out_of_distribution"] = ood_rate(~scored.in_distribution, screener.ood)
    positive_index = dataset.classes.index(dataset.positive_class)
    if by:
        metrics["by"] = {
            name: breakdown(
                subgroup_values(scored.samples, name, manifests),
                y_true,
                predicted,
                probabilities[:, positive_index],
                positive_index,
            )
            for name in by
        }
    return metrics


def _write_outputs(out: Path, screener: Screener, dataset: Dataset, scored: ScoredSet, split, metrics, history):
    """metrics.json, predictions.csv, figures/ and report.html."""
    y_true, probabilities, predicted = scored.y_true, scored.probabilities, scored.predicted
    in_distribution = scored.in_distribution if screener.ood is not None else None
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", metrics)
    write_predictions(
        out / "predictions.csv", scored.samples, y_true, probabilities, predicted, dataset.classes, in_distribution
    )
    figures = write_figures(
        out / "figures",
        metrics,
        y_true,
        probabilities,
        None,
        dataset.classes,
        history,
        predicted=predicted,
        originals=scored.samples,
    )
    write_report(
        out / "report.html",
        metrics,
        figures,
        dataset,
        screener.card.to_dict(),
        split,
        extra_html="".join(breakdown_html(name, rows) for name, rows in metrics.get("by", {}).items()),
    )


def write_predictions(
    path: Path,
    samples,
    y_true: np.ndarray,
    probabilities: np.ndarray,
    predicted: np.ndarray,
    classes: Sequence[str],
    in_distribution: np.ndarray | None = None,
) -> None:
    """One row per scored image, in ``ccad predict``'s columns (file, predicted_class, a probability per
    class, in_distribution: blank when the model has no guard), then the truth: label, group, source."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([*RESULT_COLUMNS, *(f"p_{c}" for c in classes), "in_distribution", *TRUTH_COLUMNS])
    flags = [""] * len(samples) if in_distribution is None else [str(bool(v)).lower() for v in in_distribution]
    for s, t, p, k, flag in zip(samples, y_true, probabilities, predicted, flags):
        writer.writerow([s.path, classes[k], *(f"{v:.6f}" for v in p), flag, classes[t], s.group, s.source])
    write_text(path, buffer.getvalue())


def scoring_set(
    screener: Screener, model: str | os.PathLike, spec: DataSpec, split: str | None = None, seed: int = 0
) -> tuple[Dataset, str]:
    """(dataset, split) to score ``screener`` on: the model's run ``split.csv`` when it covers every
    image, else the data's own splits, else a fresh grouped split (``seed``); ``split=None`` means
    ``test`` when the data has splits, else ``all``."""
    dataset = spec.discover(model_classes=screener.classes)
    recorded = apply_split_file(dataset, run_folder(model) / "split.csv")
    if recorded is not None:
        return recorded, split or "test"
    if any(s.split for s in dataset.samples):  # the data's own splits; an all-test set is scored as it is
        split = split or "test"
        if any(s.split is None for s in dataset.samples):
            # pooled sources, some split and some not: the others split as training splits them (near-duplicates
            # grouped, the same seed), so a model trained on the same data is scored on its own test split
            dataset = assign_splits(replace(dataset, samples=group_near_duplicates(dataset.samples)), seed=seed)
        elif split != "all" and not dataset.subset(split):
            dataset = assign_splits(dataset, seed=seed)
        return dataset, split
    split = split or "all"
    return (dataset if split == "all" else assign_splits(dataset, seed=seed)), split


def evaluate_model(
    model: str | os.PathLike,
    spec: DataSpec,
    out: str | os.PathLike,
    split: str | None = None,
    seed: int = 0,
    by: Sequence[str] = (),
) -> dict[str, Any]:
    """``ccad evaluate``: score a bundle, run folder or model file on labelled data (see :func:`scoring_set`
    for the split)."""
    screener = Screener.load(model)
    dataset, split = scoring_set(screener, model, spec, split, seed)
    manifests = [spec.data] if isinstance(spec.data, (str, os.PathLike)) else list(spec.data)
    for name in by:  # an unknown field is refused before anything is scored
        subgroup_values([], name, manifests)
    return evaluate(screener, dataset, out, split=split, skip_bad=spec.skip_bad, by=by, manifests=manifests)
