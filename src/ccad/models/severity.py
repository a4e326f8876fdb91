"""The stored severity head at prediction time: scores, intervals and band from pooled features (numpy only).

Fitting and scoring it is :mod:`ccad.training.severity` (``ccad severity train``), which documents the
scales and the bands.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SCORES = {"geographic_extent": (0.0, 8.0), "opacity": (0.0, 6.0)}
BAND_SCORE = "geographic_extent"
BANDS = ((3.0, "mild"), (6.0, "moderate"), (np.inf, "severe"))
SEVERITY_FILE = "severity.json"
BAND_NOTE = (
    "X-ray involvement band (ccad cut-offs on geographic extent 0-8: mild < 3, moderate 3 to < 6, "
    "severe >= 6); not a clinical severity level"
)


def band_of(extent: float) -> str:
    return next(name for limit, name in BANDS if extent < limit)


class SeverityHead:
    """The stored linear severity model: scores, intervals and band from pooled features (numpy only)."""

    def __init__(self, head: dict[str, Any]):
        self.targets = {
            name: (np.asarray(t["weights"], np.float64), float(t["bias"]), t["range"], float(t["interval_halfwidth"]))
            for name, t in head["targets"].items()
        }
        self.band_score = head.get("band_score", BAND_SCORE)

    def __call__(self, pooled: np.ndarray) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, (weights, bias, (lo, hi), half) in self.targets.items():
            value = float(np.clip(pooled @ weights + bias, lo, hi))
            out[name] = {
                "value": round(value, 2),
                "interval95": [round(max(lo, value - half), 2), round(min(hi, value + half), 2)],
            }
        if self.band_score in out:
            out["band"] = band_of(out[self.band_score]["value"])
        out["note"] = BAND_NOTE
        return out
