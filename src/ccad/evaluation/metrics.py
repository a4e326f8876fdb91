"""Metrics with 95% confidence intervals (pure numpy and scikit-learn: no model here).

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
        "sensitivity_at_90_specificity": None,
        "sensitivity_at_95_specificity": None,
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
            a :class:`ccad.models.decision.DecisionRule` gives thresholded ones).
    """
    from sklearn.metrics import confusion_matrix

    y_true = np.asarray(y_true)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    k = len(classes)
    pos = list(classes).index(positive_class)
    y_pred = probabilities.argmax(axis=1) if y_pred is None else np.asarray(y_pred)

    def statistic(idx: np.ndarray) -> dict[str, float | None]:
        truth, score = y_true[idx] == pos, probabilities[idx, pos]
        return (
            binary_metrics(truth, y_pred[idx] == pos, score)
            | calibration_metrics(truth, score)
            | ({"accuracy": float(np.mean(y_true[idx] == y_pred[idx]))} if k > 2 else {})
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
        metrics.update(_multiclass(y_true, y_pred, probabilities, classes))
    metrics["bootstrap"] = {
        "resamples": n_resamples,
        "unit": "patient group" if groups is not None else "image",
        "seed": seed,
        "method": "percentile",
    }
    return metrics


def _multiclass(y_true, y_pred, probabilities, classes) -> dict[str, Any]:
    """Macro F1 and each class's one-vs-rest metrics, for more than two classes."""
    from sklearn.metrics import f1_score

    k = len(classes)
    return {
        "macro_f1": float(f1_score(y_true, y_pred, labels=list(range(k)), average="macro", zero_division=0)),
        "per_class": {c: binary_metrics(y_true == i, y_pred == i, probabilities[:, i]) for i, c in enumerate(classes)},
    }


def _undefined_notes(point: dict[str, float | None], positive_class: str) -> list[str]:
    notes = []
    if point["specificity"] is None:
        notes.append(f"no negative (non-{positive_class}) images: specificity is undefined")
    if point["sensitivity"] is None:
        notes.append(f"no {positive_class} images: sensitivity is undefined")
    if point["auc"] is None:
        notes.append("AUC needs images of both the positive class and the others")
    return notes


def wilson_share(k: int, n: int) -> dict[str, Any]:
    """``k`` of ``n`` as a share with its Wilson 95% interval (``n`` > 0)."""
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(method="wilson")
    return {"k": k, "n": n, "value": k / n, "ci95": [float(ci.low), float(ci.high)]}


OUTCOMES = ("true_positive", "false_negative", "true_negative", "false_positive")
MEASURES = ("sensitivity", "specificity", "ppv")


def outcome_of(called_positive: bool, truly_positive: bool) -> str:
    """One of :data:`OUTCOMES`: the model's call against the reader's finding."""
    return ("true_" if called_positive == truly_positive else "false_") + (
        "positive" if called_positive else "negative"
    )


def live_bounds(outcomes: dict[str, int]) -> dict[str, dict]:
    """Sensitivity, specificity and PPV (each with its Wilson 95% interval) of verdict counts by outcome; a
    measure without a case is left out."""
    tp, fn, tn, fp = (outcomes.get(o, 0) for o in OUTCOMES)
    pairs = {"sensitivity": (tp, tp + fn), "specificity": (tn, tn + fp), "ppv": (tp, tp + fp)}
    return {measure: wilson_share(k, n) for measure, (k, n) in pairs.items() if n}


def ood_rate(flagged: np.ndarray, guard) -> dict[str, Any]:
    """How many images the guard flags, with a Wilson 95% interval on the share."""
    from scipy.stats import binomtest

    k, n = int(np.sum(flagged)), int(len(flagged))
    low, high = None, None
    if n:
        interval = binomtest(k, n).proportion_ci(method="wilson")
        low, high = float(interval.low), float(interval.high)
    return {
        "flagged": k,
        "n": n,
        "rate": k / n if n else None,
        "ci95": [low, high],
        "rule": f"{guard.kind} > {guard.cutoff:.3g} (keeps {guard.keep:.0%} of the validation split), "
        "or the lung check found no lungs",
    }


def format_interval(entry: dict[str, Any], digits: int = 3, undefined: str = "undefined") -> str:
    """``value [low, high]`` for a ``{"value", "ci95"}`` entry (the value alone when it has no interval):
    how every command, report and table in ccad writes a number with its 95% interval."""
    value, interval = interval_cells(entry, digits, undefined)
    return value if interval in ("", "n/a") else f"{value} [{interval.replace(' - ', ', ')}]"


def interval_cells(entry: dict[str, Any], digits: int = 3, undefined: str = "undefined") -> tuple[str, str]:
    """(``value``, ``low - high``) for a table with the interval in its own column (``n/a`` without one)."""
    if entry.get("value") is None:
        return undefined, ""
    ci = entry.get("ci95")
    return f"{entry['value']:.{digits}f}", (f"{ci[0]:.{digits}f} - {ci[1]:.{digits}f}" if ci else "n/a")


def summary_line(metrics: dict[str, Any]) -> str:
    """``test split, n=N: accuracy v [lo, hi], ...``: the headline of an evaluation, for a terminal."""
    parts = [
        f"{name} {format_interval(metrics[name])}"
        for name in ("accuracy", "sensitivity", "specificity", "auc")
        if metrics[name]["value"] is not None
    ]
    return f"{metrics['split']} split, n={metrics['n']}: " + ", ".join(parts)
