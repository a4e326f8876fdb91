"""How a model's probabilities become a decision: temperature and threshold, fitted on validation data.

A :class:`DecisionRule` is fitted once, after training, on the *validation*
split (never on test) and stored with the model (``config.json``, and the
bundle's model card), so evaluation, ``ccad predict`` and the web service all
decide the same way:

- *temperature scaling* (optional, ``--calibration temperature``; Guo et al.
  2017): probabilities p become softmax(log(p) / T), with T fitted to minimize
  the validation log-loss. It changes confidence, never the ranking (AUC).
- the *threshold* on the positive class's probability: the image is called
  positive when p(positive) >= threshold, otherwise the most likely of the other
  classes. Rules (``--threshold``): ``youden`` (default: maximizes sensitivity +
  specificity - 1 on validation), ``specificity-90`` / ``specificity-95`` (the
  lowest threshold whose validation specificity reaches 90% / 95%), ``sensitivity-85`` / ``-90`` / ``-95``
  (the highest threshold whose validation sensitivity reaches it: with a validation split pooled over several
  sources, the rule that transferred best to unseen sources, docs/generalization.md), ``argmax``
  (0.5 for two classes: the plain softmax decision), or a number.

A validation set has few images (tens of COVID cases), so the chosen threshold
is itself uncertain; reports show it with the data it was chosen on.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from ccad.errors import ConfigError

THRESHOLD_RULES = (
    "youden",
    "specificity-90",
    "specificity-95",
    "sensitivity-85",
    "sensitivity-90",
    "sensitivity-95",
    "argmax",
)
CALIBRATIONS = ("none", "temperature")


@dataclass(frozen=True)
class DecisionRule:
    """``threshold`` on p(positive) (None: argmax), softmax ``temperature``, and where they came from."""

    positive_index: int
    threshold: float | None = None
    temperature: float = 1.0
    rule: str = "argmax"
    fitted_on: str = ""

    def calibrate(self, probabilities: np.ndarray) -> np.ndarray:
        """Temperature-scaled probabilities (unchanged when T = 1)."""
        return apply_temperature(probabilities, self.temperature)

    def predict(self, probabilities: np.ndarray) -> np.ndarray:
        """Predicted class indices for calibrated probabilities (N, k)."""
        probabilities = np.asarray(probabilities)
        predicted = probabilities.argmax(axis=1)
        if self.threshold is None:
            return predicted
        others = probabilities.copy()
        others[:, self.positive_index] = -np.inf
        positive = probabilities[:, self.positive_index] >= self.threshold
        return np.where(positive, self.positive_index, others.argmax(axis=1))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_meta(cls, meta: dict[str, Any], classes: Sequence[str], positive_class: str | None) -> "DecisionRule":
        """The rule stored in a run's ``config.json`` or a bundle's card; argmax for models that have none."""
        stored = meta.get("decision")
        if stored:
            return cls(
                **{
                    k: stored[k]
                    for k in ("positive_index", "threshold", "temperature", "rule", "fitted_on")
                    if k in stored
                }
            )
        index = list(classes).index(positive_class) if positive_class in classes else 0
        return cls(positive_index=index)

    def describe(self, positive_class: str | None = None) -> str:
        """``p >= 0.732 (specificity-90, chosen on ...)``; with ``positive_class``, the whole rule:
        ``covid if p_covid >= 0.732, else the most likely other class (...)``."""
        if positive_class is not None:
            threshold = (
                "the most likely class"
                if self.threshold is None
                else f"{positive_class} if p_{positive_class} >= {self.threshold:.3f}, else the most likely other class"
            )
        else:
            threshold = "argmax" if self.threshold is None else f"p >= {self.threshold:.3f}"
        temperature = f", temperature {self.temperature:.2f}" if self.temperature != 1.0 else ""
        where = f" ({self.rule}, chosen on {self.fitted_on})" if self.fitted_on else ""
        return f"{threshold}{temperature}{where}"


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(p) / T) row by row."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if temperature == 1.0:
        return probabilities
    logits = np.log(np.clip(probabilities, 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=1, keepdims=True)


def fit_temperature(y_true: np.ndarray, probabilities: np.ndarray) -> float:
    """The temperature in [0.05, 20] minimizing the log-loss of ``y_true`` (class indices) (SciPy's bounded Brent)."""
    from scipy.optimize import minimize_scalar

    y_true = np.asarray(y_true)

    def nll(log_t: float) -> float:
        scaled = apply_temperature(probabilities, float(np.exp(log_t)))
        return -float(np.mean(np.log(np.clip(scaled[np.arange(len(y_true)), y_true], 1e-12, 1.0))))

    result = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))


def choose_threshold(is_positive: np.ndarray, score: np.ndarray, rule: str) -> float | None:
    """A threshold on ``score`` by ``rule`` (None for ``argmax``); needs both classes in the data."""
    from sklearn.metrics import roc_curve

    if rule == "argmax":
        return None
    if rule not in THRESHOLD_RULES:
        return _number(rule)
    if is_positive.all() or not is_positive.any():
        raise ConfigError(f"`threshold` {rule} needs validation images of both the positive class and the others")
    fpr, tpr, thresholds = roc_curve(is_positive, score, drop_intermediate=False)  # every distinct score
    finite = np.isfinite(thresholds)
    fpr, tpr, thresholds = fpr[finite], tpr[finite], thresholds[finite]
    if rule == "youden":
        best = int(np.argmax(tpr - fpr))
    elif rule.startswith("sensitivity-"):
        sensitivity = int(rule.rsplit("-", 1)[1]) / 100
        best = int(np.flatnonzero(tpr >= sensitivity - 1e-12)[0])  # highest threshold reaching it
    else:
        specificity = int(rule.rsplit("-", 1)[1]) / 100
        keeping = np.flatnonzero(1.0 - fpr >= specificity - 1e-12)
        if not len(keeping):  # the top score is a negative's, and one is more than 1 - target of them
            top = float(thresholds[0])  # only above it is the target kept: midway to 1, or just past it
            return (top + 1.0) / 2 if top < 1.0 else float(np.nextafter(top, np.inf))
        best = int(keeping[-1])  # lowest threshold keeping it
    # Midway to the next lower validation score: the same validation decisions, with a margin on both sides
    # (a threshold equal to one image's score flips on float rounding).
    lower = thresholds[best + 1] if best + 1 < len(thresholds) else thresholds[best] / 2
    return float((thresholds[best] + lower) / 2)


def _number(rule: str) -> float:
    try:
        value = float(rule)
    except ValueError:
        raise ConfigError(
            f"`threshold` must be one of {', '.join(THRESHOLD_RULES)} or a number in (0, 1), got {rule!r}"
        ) from None
    if not 0.0 < value < 1.0:
        raise ConfigError(f"`threshold` must be in (0, 1), got {value}")
    return value


def validate_settings(threshold: str, calibration: str) -> None:
    if threshold not in THRESHOLD_RULES:
        _number(threshold)
    if calibration not in CALIBRATIONS:
        raise ConfigError(f"`calibration` must be one of {', '.join(CALIBRATIONS)}, got {calibration!r}")


def fit_decision(
    y_val: np.ndarray,
    probabilities: np.ndarray,
    classes: Sequence[str],
    positive_class: str,
    threshold: str = "youden",
    calibration: str = "none",
    fitted_on: str = "validation split",
) -> DecisionRule:
    """Fit temperature (optional), then the threshold on the calibrated validation probabilities."""
    positive = list(classes).index(positive_class)
    temperature = fit_temperature(y_val, probabilities) if calibration == "temperature" else 1.0
    calibrated = apply_temperature(probabilities, temperature)
    value = choose_threshold(np.asarray(y_val) == positive, calibrated[:, positive], threshold)
    return DecisionRule(positive, value, temperature, threshold, f"{fitted_on} (n={len(y_val)})")


def threshold_for(scores: np.ndarray, name: str, target: float) -> float:
    """The threshold on p(positive) that reaches ``target`` on ``scores`` (the negatives' for specificity, the
    positives' for sensitivity), midway to the next score so that no image sits on it."""
    ordered = np.sort(np.asarray(scores, np.float64))
    n = len(ordered)
    if name == "specificity":  # keep ceil(T n) negatives strictly below
        k = math.ceil(target * n - 1e-9)
        above = ordered[k] if k < n else min(1.0, ordered[-1] + 1e-6)
        return float((ordered[k - 1] + above) / 2) if k > 0 else float(ordered[0] / 2)
    k = math.ceil(target * n - 1e-9)  # find ceil(T n) positives at or above
    below = ordered[n - k - 1] if n - k - 1 >= 0 else ordered[0] / 2
    return float((ordered[n - k] + below) / 2)


SITE_RULE = re.compile(r"^(specificity|sensitivity)-(0\.\d+) at the site$")


def site_target(rule: str) -> tuple[str, float] | None:
    """("specificity", 0.9) for a rule ``ccad calibrate`` wrote ("specificity-0.90 at the site"), else None."""
    match = SITE_RULE.match(rule or "")
    return (match.group(1), float(match.group(2))) if match else None
