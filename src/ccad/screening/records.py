"""What screening an image gives: a :class:`Prediction` (and its :class:`Pictures` when heatmaps are asked for).

:class:`ccad.screening.Screener` makes them; every adapter writes them out (CSV, JSON, DICOM SR, FHIR).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


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
