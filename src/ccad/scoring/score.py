"""The scoring step every command shares: network outputs -> :class:`Prediction` records.

:func:`score_batch` applies, in this order, the model's decision rule (temperature, threshold), the
out-of-distribution guard with the lung-QC flags, the severity head (for images called positive) and,
when asked, the class activation map placed back onto the X-ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ccad.models.ood import screen
from ccad.preprocessing.pipeline import Prepared


@dataclass
class Pictures:
    """The images of one prediction (with heatmaps): ``image`` is what the model saw and ``heatmap`` its
    class activation map; ``original`` the X-ray (at most 512 px) with ``original_heatmap`` mapped onto it
    and ``lung_outline`` (a boolean mask on ``original``, None when the lung fields were not computed)."""

    image: np.ndarray
    heatmap: np.ndarray
    original: np.ndarray
    original_heatmap: np.ndarray
    lung_outline: np.ndarray | None = None


@dataclass
class Prediction:
    """One image's result; ``error`` is set (and nothing else) for a file that could not be read."""

    name: str
    predicted_class: str | None = None
    probabilities: dict[str, float] | None = None
    in_distribution: bool | None = None
    ood_distance: float | None = None
    ood_cutoff: float | None = None
    lung_qc: list[str] = field(default_factory=list)
    warning: str | None = None
    severity: dict[str, Any] | None = None
    error: str | None = None
    pictures: Pictures | None = None
    #: The model's probabilities before the decision rule's temperature (what AUC and audits use).
    raw_probabilities: np.ndarray | None = field(default=None, repr=False)
    pooled: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self, key: str = "file") -> dict[str, Any]:
        """The JSON form (``ccad predict --format json``, the REST API): the file under ``key``, then the
        fields that are set; no arrays."""
        if self.error is not None:
            return {key: self.name, "error": self.error}
        out: dict[str, Any] = {
            key: self.name,
            "predicted_class": self.predicted_class,
            "probabilities": self.probabilities,
            "lung_qc": self.lung_qc,
            "in_distribution": self.in_distribution,
        }
        for name in ("ood_distance", "ood_cutoff", "warning", "severity"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out


def score_batch(
    predictor,
    names: Sequence[str],
    prepared: Sequence[Prepared],
    with_heatmaps: bool = False,
    heatmap_class: str | None = None,
) -> list[Prediction]:
    """Run ``predictor`` (a :class:`ccad.scoring.predictor.Predictor`) on prepared images and describe each.

    The heatmap is of the predicted class, or of ``heatmap_class`` when given (the audit uses the positive
    class)."""
    if not prepared:
        return []
    probabilities, features = predictor.predict(predictor.model_input(np.stack([p.image for p in prepared])))
    calibrated = predictor.decision.calibrate(probabilities)
    predicted = predictor.decision.predict(calibrated)
    classes = predictor.classes
    results = []
    for name, prep, raw, p, k, fmap in zip(names, prepared, probabilities, calibrated, predicted, features):
        pooled = fmap.mean(axis=(0, 1))
        guard = screen(predictor.ood, pooled, prep.qc_flags)
        result = Prediction(
            name,
            classes[int(k)],
            {c: float(v) for c, v in zip(classes, p)},
            in_distribution=guard["in_distribution"],
            ood_distance=guard.get("ood_distance"),
            ood_cutoff=guard.get("ood_cutoff"),
            lung_qc=guard["lung_qc"],
            warning=guard.get("warning"),
            raw_probabilities=raw,
            pooled=pooled,
        )
        if predictor.severity is not None and result.predicted_class == predictor.positive_class:
            result.severity = predictor.severity(pooled)
        if with_heatmaps:
            heat = predictor.heatmap(fmap, classes.index(heatmap_class or result.predicted_class))
            outline = prep.fields.at(*prep.gray.shape) if prep.fields is not None else None
            result.pictures = Pictures(prep.picture, heat, prep.gray, prep.to_original(heat), outline)
        results.append(result)
    return results
