"""Metrics with 95% confidence intervals, and the ``evaluate`` step.

Binary metrics refer to the positive class (default ``covid``): sensitivity
(recall), specificity, precision, F1, ROC AUC. With more than two classes the
positive class is scored one-vs-rest, and per-class one-vs-rest metrics and
macro F1 are added. Intervals are percentile bootstrap intervals (1,000
resamples, seeded) that resample whole patient groups when groups are known,
so images of one patient move together. A metric that a set cannot define
(specificity with no negatives, AUC with one class) is ``null`` with a note.

scikit-learn has no grouped bootstrap, and SciPy's ``bootstrap`` resamples
observations, not groups, so the resampling loop is written here (~20 lines).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

BINARY_METRICS = ("accuracy", "sensitivity", "specificity", "precision", "f1", "auc")
CALIBRATION_METRICS = ("ece", "brier", "sensitivity_at_90_specificity", "sensitivity_at_95_specificity")
ECE_BINS = 10
N_BOOTSTRAP = 1000
CAVEAT = (
    "ccad is a screening aid for research, not a diagnosis. These numbers come only from the data named "
    "in this report; images from other hospitals or scanners can score far worse."
)


def _safe_div(a: float, b: float) -> float | None:
    return float(a) / float(b) if b else None


def binary_metrics(y_true: np.ndarray, y_pred: np.ndarray, score: np.ndarray) -> dict[str, float | None]:
    """Point estimates for boolean truth/prediction arrays (True = positive class) and positive scores."""
    tp = int(np.sum(y_true & y_pred))
    tn = int(np.sum(~y_true & ~y_pred))
    fp = int(np.sum(~y_true & y_pred))
    fn = int(np.sum(y_true & ~y_pred))
    sensitivity = _safe_div(tp, tp + fn)
    precision = _safe_div(tp, tp + fp)
    f1 = _safe_div(2 * tp, 2 * tp + fp + fn) if (tp + fn) else None
    return {
        "accuracy": _safe_div(tp + tn, len(y_true)),
        "sensitivity": sensitivity,
        "specificity": _safe_div(tn, tn + fp),
        "precision": precision,
        "f1": f1,
        "auc": _auc(y_true, score),
    }


def expected_calibration_error(y_true: np.ndarray, probability: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of a binary probability: sum over equal-width bins of |observed rate - mean probability| x bin share.

    scikit-learn has the reliability curve (``calibration_curve``) but no ECE, so this is the
    standard 10-bin version written out.
    """
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(probability, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        in_bin = index == b
        if in_bin.any():
            total += in_bin.mean() * abs(y_true[in_bin].mean() - probability[in_bin].mean())
    return float(total)


def calibration_metrics(y_true: np.ndarray, probability: np.ndarray) -> dict[str, float | None]:
    """ECE, Brier score, and sensitivity at 90% / 95% specificity (None where a class is missing)."""
    from sklearn.metrics import roc_curve

    out: dict[str, float | None] = {
        "ece": expected_calibration_error(y_true, probability),
        "brier": float(np.mean((probability - y_true) ** 2)),
        "sensitivity_at_90_specificity": None, "sensitivity_at_95_specificity": None,
    }
    if y_true.all() or not y_true.any():
        return out
    fpr, tpr, _ = roc_curve(y_true, probability)
    for spec, key in ((0.90, "sensitivity_at_90_specificity"), (0.95, "sensitivity_at_95_specificity")):
        out[key] = float(tpr[fpr <= 1 - spec + 1e-12].max())
    return out


def _auc(y_true: np.ndarray, score: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    if y_true.all() or not y_true.any():
        return None
    return float(roc_auc_score(y_true, score))


def bootstrap_intervals(
    statistic: Callable[[np.ndarray], dict[str, float | None]],
    n: int,
    groups: Sequence[str] | None = None,
    n_resamples: int = N_BOOTSTRAP,
    seed: int = 0,
) -> dict[str, list[float] | None]:
    """95% percentile intervals of each value ``statistic(indices)`` returns.

    Resamples whole groups with replacement (each image its own group when
    ``groups`` is None). Resamples where a value is undefined are left out.
    """
    groups = np.asarray(groups if groups is not None else np.arange(n))
    unique, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(unique))]
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(n_resamples):
        picked = rng.integers(0, len(unique), len(unique))
        indices = np.concatenate([members[g] for g in picked])
        for name, value in statistic(indices).items():
            if value is not None:
                draws.setdefault(name, []).append(value)
    out: dict[str, list[float] | None] = {}
    for name, values in draws.items():
        enough = len(values) >= n_resamples // 2
        out[name] = [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))] if enough else None
    return out


def compute_metrics(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    classes: Sequence[str],
    positive_class: str,
    groups: Sequence[str] | None = None,
    n_resamples: int = N_BOOTSTRAP,
    seed: int = 0,
    y_pred: np.ndarray | None = None,
) -> dict[str, Any]:
    """All metrics of one evaluation, as written to ``metrics.json``.

    Args:
        y_true: true class indices, shape (N,).
        probabilities: predicted probabilities, shape (N, k), columns in ``classes`` order.
        classes: class names.
        positive_class: the class binary metrics refer to.
        groups: patient group of each image (for the grouped bootstrap).
        y_pred: predicted class indices (default: the argmax of ``probabilities``;
            a :class:`ccad.decision.DecisionRule` gives thresholded ones).
    """
    from sklearn.metrics import confusion_matrix, f1_score

    y_true = np.asarray(y_true)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    k = len(classes)
    pos = list(classes).index(positive_class)
    y_pred = probabilities.argmax(axis=1) if y_pred is None else np.asarray(y_pred)

    def statistic(idx: np.ndarray) -> dict[str, float | None]:
        truth, score = y_true[idx] == pos, probabilities[idx, pos]
        return binary_metrics(truth, y_pred[idx] == pos, score) | calibration_metrics(truth, score) | (
            {"accuracy": float(np.mean(y_true[idx] == y_pred[idx]))} if k > 2 else {}
        )

    point = statistic(np.arange(len(y_true)))
    intervals = bootstrap_intervals(statistic, len(y_true), groups, n_resamples, seed)
    metrics: dict[str, Any] = {
        "n": int(len(y_true)),
        "classes": list(classes),
        "positive_class": positive_class,
        "counts": {c: int(np.sum(y_true == i)) for i, c in enumerate(classes)},
    }
    for name in BINARY_METRICS + CALIBRATION_METRICS:
        metrics[name] = {"value": point[name], "ci95": intervals.get(name) if point[name] is not None else None}
    metrics["calibration_bins"] = ECE_BINS
    metrics["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=list(range(k))).tolist()
    metrics["notes"] = _undefined_notes(point, positive_class)
    if k > 2:
        metrics["macro_f1"] = float(f1_score(y_true, y_pred, labels=list(range(k)), average="macro", zero_division=0))
        metrics["per_class"] = {
            c: binary_metrics(y_true == i, y_pred == i, probabilities[:, i]) for i, c in enumerate(classes)
        }
    metrics["bootstrap"] = {"resamples": n_resamples, "unit": "patient group" if groups is not None else "image",
                            "seed": seed, "method": "percentile"}
    return metrics


def _undefined_notes(point: dict[str, float | None], positive_class: str) -> list[str]:
    notes = []
    if point["specificity"] is None:
        notes.append(f"no negative (non-{positive_class}) images: specificity is undefined")
    if point["sensitivity"] is None:
        notes.append(f"no {positive_class} images: sensitivity is undefined")
    if point["auc"] is None:
        notes.append("AUC needs images of both the positive class and the others")
    return notes


def write_predictions(path: Path, samples, y_true: np.ndarray, probabilities: np.ndarray, predicted: np.ndarray,
                      classes: Sequence[str], in_distribution: np.ndarray | None = None) -> None:
    """One row per scored image: path, group, source, true and predicted class, probabilities, and
    ``in_distribution`` by the feature guard (blank when the model has none)."""
    import csv
    import io

    from ._files import write_text

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "group", "source", "label", "predicted"] + [f"p_{c}" for c in classes]
                    + ["in_distribution"])
    flags = [""] * len(samples) if in_distribution is None else [str(bool(v)).lower() for v in in_distribution]
    for s, t, p, k, flag in zip(samples, y_true, probabilities, predicted, flags):
        writer.writerow([s.path, s.group, s.source, classes[t], classes[k]] + [f"{v:.6f}" for v in p] + [flag])
    write_text(path, buffer.getvalue())


def predict_probabilities(model, images: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """Softmax outputs of a Keras classifier for (N, H, W) grayscale images in [0, 1]."""
    from .training import INFERENCE_BATCH, image_batches

    batch_size = batch_size or INFERENCE_BATCH
    if len(images) == 0:
        return np.zeros((0, model.output_shape[-1]), np.float32)
    return model.predict(image_batches(images, None, batch_size, model.output_shape[-1]), verbose=0)


def _scorer(model):
    """(images -> probabilities, input size) for a Keras model, a Classifier or an ONNX Predictor."""
    if hasattr(model, "predict_images"):
        return model.predict_images, int(model.input_size)
    return (lambda images: predict_probabilities(model, images)), int(model.input_shape[1])


def evaluate(
    model,
    dataset,
    out: str | os.PathLike,
    split: str = "test",
    meta: dict[str, Any] | None = None,
    history: list[dict[str, float]] | None = None,
    skip_bad: bool = False,
    ood=None,
) -> dict[str, Any]:
    """Score ``model`` (Keras model, Classifier or ONNX Predictor) on one split of ``dataset``;
    write metrics.json, figures/ and report.html to ``out``.

    ``split`` is ``test``, ``val`` or ``all``. With an out-of-distribution guard (``ood``, or the model's
    own) the metrics also hold the share of images it flags, and predictions.csv each image's flag.
    Returns the metrics dict.
    """
    from ._files import write_json
    from .data import label_indices, load_images
    from .decision import DecisionRule
    from .errors import DataError
    from .reporting import write_figures, write_report

    out = Path(out)
    meta = meta if meta is not None else getattr(model, "meta", {})
    samples = dataset.samples if split == "all" else dataset.subset(split)
    if not samples:
        raise DataError(f"{dataset.source}: no images in the {split} split")
    predict, size = _scorer(model)
    images, kept, bad = load_images(samples, size, skip_bad, preprocess=meta.get("preprocess", "none"))
    if not kept:
        raise DataError(f"{dataset.source}: none of the {split} images could be read")
    y_true = label_indices(kept, dataset.classes)
    decision = DecisionRule.from_meta(meta, dataset.classes, dataset.positive_class)
    probabilities = decision.calibrate(predict(images))
    known_groups = dataset.layout in ("manifest", "pooled")
    metrics = compute_metrics(y_true, probabilities, dataset.classes, dataset.positive_class,
                              [s.group for s in kept] if known_groups else None, y_pred=decision.predict(probabilities))
    metrics["decision"] = dict(decision.to_dict(), text=decision.describe())
    metrics["split"] = split
    metrics["data"] = dataset.source
    metrics["skipped_files"] = [{"path": p, "error": e} for p, e in bad]
    guard = ood if ood is not None else getattr(model, "ood", None)
    in_distribution = None
    if guard is not None:
        in_distribution = guard.distance(pooled_features(model, images)) <= guard.cutoff
        metrics["out_of_distribution"] = ood_rate(~in_distribution, guard)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", metrics)
    write_predictions(out / "predictions.csv", kept, y_true, probabilities, decision.predict(probabilities),
                      dataset.classes, in_distribution)
    figures = write_figures(out / "figures", metrics, y_true, probabilities, images, kept, dataset.classes, history,
                            predicted=decision.predict(probabilities))
    write_report(out / "report.html", metrics, figures, dataset, meta or {}, split)
    return metrics


def pooled_features(model, images: np.ndarray) -> np.ndarray:
    """(N, d) pooled backbone features of (N, H, W) grayscale images, for a Predictor, Classifier or Keras model."""
    if hasattr(model, "pooled_features"):
        return model.pooled_features(images)
    from .model import feature_extractor

    return predict_probabilities(feature_extractor(model), images)


def ood_rate(flagged: np.ndarray, guard) -> dict[str, Any]:
    """How many images the guard flags, with a Wilson 95% interval on the share."""
    from scipy.stats import binomtest

    k, n = int(np.sum(flagged)), int(len(flagged))
    low, high = None, None
    if n:
        interval = binomtest(k, n).proportion_ci(method="wilson")
        low, high = float(interval.low), float(interval.high)
    return {"flagged": k, "n": n, "rate": k / n if n else None, "ci95": [low, high],
            "rule": f"feature distance > {guard.cutoff:.3f} (keeps {guard.keep:.0%} of the validation split); "
                    "lung QC not included"}


def evaluate_classifier(
    model: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    split: str | None = None,
    classes: Sequence[str] | None = None,
    where: Sequence[str] = (),
    positive_class: str | None = "covid",
    skip_bad: bool = False,
    seed: int = 0,
    relabel: Sequence[str] = (),
) -> dict[str, Any]:
    """``ccad evaluate``: score a run folder or model file on labelled data.

    The split: the run's own ``split.csv`` when it covers every image (so
    ``evaluate`` on the training data scores exactly the run's test split), else
    the data's split column or folders, else a fresh grouped split (``seed``).
    ``split=None`` means ``test`` when the data has splits, else ``all``.
    """
    from .inference import load_classifier

    classifier = load_classifier(model)
    dataset, split = scoring_set(classifier, model, data, split, classes, where, positive_class, seed, relabel)
    return evaluate(classifier, dataset, out, split=split, meta=classifier.meta, skip_bad=skip_bad)


def scoring_set(classifier, model, data, split: str | None = None, classes: Sequence[str] | None = None,
                where: Sequence[str] = (), positive_class: str | None = "covid", seed: int = 0,
                relabel: Sequence[str] = ()):
    """(dataset, split) to score ``classifier`` on: the model's run ``split.csv`` when it covers every
    image, else the data's own splits, else a fresh grouped split (``seed``); ``split=None`` means
    ``test`` when the data has splits, else ``all``."""
    from .data import apply_split_file, assign_splits, discover
    from .inference import run_folder

    dataset = discover(data, classes, where, positive_class, model_classes=classifier.classes, relabel=relabel)
    recorded = apply_split_file(dataset, run_folder(model) / "split.csv")
    has_splits = recorded is not None or any(s.split for s in dataset.samples)
    split = split or ("test" if has_splits else "all")
    if recorded is not None:
        dataset = recorded
    elif split != "all":
        dataset = assign_splits(dataset, seed=seed)
    return dataset, split
