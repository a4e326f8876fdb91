"""``ccad cv``: patient-grouped, stratified k-fold cross-validation with the training settings of ``ccad train``.

Every fold trains a model exactly as ``ccad train`` does (its own grouped
validation split picks the best epoch and the decision threshold), then scores
its held-out fold. Out-of-fold predictions of all folds are pooled: every image
is scored once, by the model that never saw its patient. ``DIR/metrics.json``
holds the per-fold metrics and the pooled ones (95% grouped-bootstrap
intervals); ``DIR/report.html`` the out-of-fold ROC, confusion matrix and
reliability diagram; ``DIR/oof_predictions.csv`` each image's pooled score;
``DIR/fold-N/`` each fold's run folder.
"""

from __future__ import annotations

import csv
import html
import io
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ccad.data.datasets import DataSpec, label_indices
from ccad.data.splits import cross_validation_folds
from ccad.evaluation.evaluate import score_samples
from ccad.evaluation.metrics import BINARY_METRICS, compute_metrics
from ccad.evaluation.reports import write_figures, write_report
from ccad.io.files import write_json, write_text
from ccad.screening import Screener
from ccad.screening.results import RESULT_COLUMNS, TRUTH_COLUMNS
from ccad.training.config import TrainConfig
from ccad.training.run import train


def cross_validate(
    spec: DataSpec,
    out: str | os.PathLike,
    config: TrainConfig | None = None,
    folds: int = 5,
    seed: int = 0,
    keep_models: bool = False,
    group_by: str = "patient",
) -> dict[str, Any]:
    """Run k-fold grouped cross-validation (``group_by="source"``: leave one source out); write ``out`` and
    return its metrics dict. Each fold's held-out images are scored by the fold's model through the same
    scoring step as ``ccad predict``."""
    config = (config or TrainConfig()).validate()
    out = Path(out)
    dataset = spec.discover()
    positive = dataset.positive_class or dataset.classes[-1]
    rows: list[tuple[int, Any, np.ndarray, int]] = []  # (fold, sample, calibrated probabilities, predicted)
    per_fold = []
    start = time.perf_counter()
    fold_sets = cross_validation_folds(dataset, folds, seed, group_by)
    folds = len(fold_sets)
    for i, fold in enumerate(fold_sets, start=1):
        metrics, fold_rows = _run_fold(i, fold, dataset, out, config, spec.skip_bad, keep_models)
        per_fold.append(metrics)
        rows += fold_rows
    samples = [r[1] for r in rows]
    y_true = label_indices(samples, dataset.classes)
    probabilities = np.stack([r[2] for r in rows])
    predicted = np.array([r[3] for r in rows])
    pooled = compute_metrics(
        y_true, probabilities, dataset.classes, positive, _groups(dataset, samples), y_pred=predicted
    )
    pooled.update(
        split="out-of-fold (pooled)",
        data=dataset.source,
        decision={"text": "each fold's own threshold, chosen on that fold's validation split"},
    )
    summary = {
        "folds": folds,
        "seed": seed,
        "data": dataset.source,
        "classes": dataset.classes,
        "positive_class": positive,
        "grouping": (
            "source (leave one source out)"
            if group_by == "source"
            else "patient group"
            if dataset.layout in ("manifest", "pooled")
            else "image (no group column)"
        ),
        "config": config.__dict__,
        "elapsed_s": round(time.perf_counter() - start, 1),
        "pooled": pooled,
        "per_fold": per_fold,
        "fold_mean_sd": _mean_sd(per_fold),
    }
    write_json(out / "metrics.json", summary)
    _write_oof_csv(out / "oof_predictions.csv", rows, dataset.classes)
    _write_pooled_report(out, dataset, config, summary, y_true, probabilities, predicted, samples)
    return summary


def _run_fold(i: int, fold, dataset, out: Path, config: TrainConfig, skip_bad: bool, keep_models: bool):
    """Train fold ``i`` and score its held-out images as ``predict`` scores them: (its metrics, its rows of
    (fold, sample, calibrated probabilities, predicted class))."""
    positive = dataset.positive_class or dataset.classes[-1]
    result = train(fold, out / f"fold-{i}", config, skip_bad=skip_bad, evaluate_test=False, verbose=0)
    scored = score_samples(Screener(result.predictor), fold.subset("test"), dataset.classes, skip_bad)
    kept, probabilities, predicted = scored.samples, scored.probabilities, scored.predicted
    metrics = compute_metrics(
        scored.y_true, probabilities, dataset.classes, positive, _groups(dataset, kept), y_pred=predicted
    )
    metrics.update(
        fold=i,
        test_sources=sorted({s.source for s in kept}),
        decision=dict(result.decision.to_dict(), text=result.decision.describe()),
        skipped_files=[{"path": p, "error": e} for p, e in scored.skipped],
    )
    write_json(out / f"fold-{i}" / "metrics.json", metrics)
    if not keep_models:
        (out / f"fold-{i}" / "model.keras").unlink(missing_ok=True)
    return metrics, [(i, s, p, int(k)) for s, p, k in zip(kept, probabilities, predicted)]


def _write_pooled_report(out: Path, dataset, config, summary, y_true, probabilities, predicted, samples) -> None:
    pooled, folds, seed = summary["pooled"], summary["folds"], summary["seed"]
    figures = write_figures(
        out / "figures", pooled, y_true, probabilities, None, dataset.classes, predicted=predicted, originals=samples
    )
    meta = {"weights": config.weights, "config": config.__dict__, "cross_validation": f"{folds}-fold, seed {seed}"}
    write_report(
        out / "report.html",
        pooled,
        figures,
        _all_as(dataset, "test"),
        meta,
        "out-of-fold (pooled)",
        title=f"ccad {folds}-fold cross-validation",
        extra_html=_fold_table(summary["per_fold"], summary),
    )


def _groups(dataset, samples) -> list[str] | None:
    return [s.group for s in samples] if dataset.layout in ("manifest", "pooled") else None


def _all_as(dataset, split: str):
    from dataclasses import replace

    return replace(dataset, samples=[replace(s, split=split) for s in dataset.samples])


def _mean_sd(per_fold: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out = {}
    for name in BINARY_METRICS:
        values = [m[name]["value"] for m in per_fold if m[name]["value"] is not None]
        if values:
            out[name] = {
                "mean": float(np.mean(values)),
                "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            }
    return out


def _fold_table(per_fold: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    def cell(entry):
        return "undefined" if entry["value"] is None else f"{entry['value']:.3f}"

    head = "".join(f"<th>{h}</th>" for h in ["fold", "n", *BINARY_METRICS, "threshold"])
    body = "".join(
        "<tr>"
        + f"<td>{m['fold']}</td><td>{m['n']}</td>"
        + "".join(f"<td>{cell(m[k])}</td>" for k in BINARY_METRICS)
        + f"<td>{html.escape(str(m['decision'].get('threshold')))}</td></tr>"
        for m in per_fold
    )
    spread = ", ".join(f"{k} {v['mean']:.3f} ± {v['sd']:.3f}" for k, v in summary["fold_mean_sd"].items())
    return (
        f"<h2>Folds</h2><p>{summary['folds']} folds, grouped by {html.escape(summary['grouping'])}; "
        f"the metrics above pool every fold's held-out predictions. Mean ± SD over folds: {html.escape(spread)}.</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def _write_oof_csv(path: Path, rows, classes: Sequence[str]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([*RESULT_COLUMNS, *(f"p_{c}" for c in classes), *TRUTH_COLUMNS, "fold"])
    for fold, sample, p, k in rows:
        writer.writerow(
            [sample.path, classes[k], *(f"{v:.6f}" for v in p), sample.label, sample.group, sample.source, fold]
        )
    write_text(path, buffer.getvalue())
