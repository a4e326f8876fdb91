"""Has what arrives changed? The population stability index of a rolling window against a reference.

    >>> check = DriftCheck(reference_scores, reference_distances)        # doctest: +SKIP  the bundle's
    >>> change = check.add(score, distance)                             # doctest: +SKIP  "drift", "ok" or None

Two signals, each compared with the bundle's reference (its validation split's, or a site's, see
:class:`ccad.models.ood.OodGuard`): the model's probability of the positive class, and the out-of-distribution
distance of the image's features. Each is cut at the reference's octiles (8 bins); over the last ``window``
images,

    PSI = sum over bins of (window share - reference share) x ln(window share / reference share)

(shares smoothed by half an image per bin, so an empty bin is finite). The usual reading: under 0.10 no
change, 0.10-0.25 some, over 0.25 a real shift. The state turns to ``drift`` when either signal's PSI passes
``on`` (0.25) and back to ``ok`` when both are under ``off`` (0.10); until the window is full it is
``warming up``. In distribution, a window's PSI is about (bins - 1) x (1/window + 1/reference images) (the
noise of two finite samples): 0.06 for 8 bins, a window of 200 and the shipped bundle's 278 reference images,
and its maximum over a stream of 1,000 is what nears 0.25. Fewer bins are quieter and slower to see a change:
``benchmarks/monitoring.py`` measured 10, 8, 6 and 4 bins on the shipped bundle and chose 8 (BENCHMARKS.md). A
larger reference is quieter at no cost: ``ccad calibrate --unlabelled`` with a few hundred of the site's own
images makes one.

A PSI is a description of a shift, not a test: a change in the share of COVID-19 images (prevalence) moves
the score's PSI as much as a new scanner does. ``drift`` says "look at what arrives", not "the model is wrong".
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

OK, DRIFT, WARMING_UP = "ok", "drift", "warming up"
#: Bins of each signal (the reference's quantiles), and the rolling window, of the live check and ccad monitor.
BINS, WINDOW = 8, 200
SIGNALS = ("score", "distance")


def bin_edges(reference: np.ndarray, bins: int = BINS) -> np.ndarray:
    """The inner cut points: the reference's quantiles (ties merged)."""
    reference = np.asarray(reference, np.float64)
    return np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))


def counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """How many of ``values`` fall in each bin cut at ``edges`` (a value on an edge counts in the bin above)."""
    return np.bincount(np.searchsorted(edges, np.asarray(values, np.float64), side="right"), minlength=len(edges) + 1)


def shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Each bin's share of ``values``, smoothed by half a value per bin."""
    return _smoothed(counts(values, edges))


def _smoothed(n: np.ndarray) -> np.ndarray:
    return (n + 0.5) / (n.sum() + 0.5 * len(n))


def psi(reference: np.ndarray, values: np.ndarray, bins: int = BINS) -> float:
    """The population stability index of ``values`` against ``reference``: a :class:`Signal` that counted them."""
    signal = Signal.of(reference, bins)
    signal.counts += counts(values, signal.edges)
    return signal.psi()


@dataclass
class Signal:
    """One signal's reference shares and a window's counts in the reference's bins: the one PSI of the live
    check, of ``ccad monitor`` and of :func:`psi`."""

    edges: np.ndarray
    reference: np.ndarray  # the reference's smoothed shares
    counts: np.ndarray  # the window's counts per bin

    @classmethod
    def of(cls, reference: np.ndarray, bins: int) -> "Signal":
        edges = bin_edges(reference, bins)
        return cls(edges, shares(reference, edges), np.zeros(len(edges) + 1, np.int64))

    def bin(self, value: float) -> int:
        return int(np.searchsorted(self.edges, value, side="right"))

    def psi(self) -> float:
        now = _smoothed(self.counts)
        return float(np.sum((now - self.reference) * np.log(now / self.reference)))


class DriftCheck:
    """A rolling window of the last ``window`` images' scores and distances, and the state it puts them in."""

    def __init__(
        self,
        reference_scores: np.ndarray | None,
        reference_distances: np.ndarray | None,
        window: int = WINDOW,
        bins: int = BINS,
        on: float = 0.25,
        off: float = 0.10,
    ):
        self.reference_scores, self.reference_distances = reference_scores, reference_distances
        self.window, self.bins, self.on, self.off = window, bins, on, off
        self.state = WARMING_UP
        self.values: dict[str, float | None] = {name: None for name in SIGNALS}
        self._signals: dict[str, Signal] | None = None
        self._recent: deque = deque()

    @property
    def available(self) -> bool:
        return self.reference_scores is not None and self.reference_distances is not None

    def add(self, score: float | None, distance: float | None) -> str | None:
        """Take one image's score and distance (an image without either is not counted); the new state when it
        changed, else None."""
        if not self.available or score is None or distance is None:
            return None
        if self._signals is None:  # fitted on the first image, not in the constructor
            self._signals = {
                "score": Signal.of(self.reference_scores, self.bins),
                "distance": Signal.of(self.reference_distances, self.bins),
            }
        bins = (self._signals["score"].bin(score), self._signals["distance"].bin(distance))
        self._recent.append(bins)
        for signal, b in zip(self._signals.values(), bins):
            signal.counts[b] += 1
        if len(self._recent) > self.window:
            for signal, b in zip(self._signals.values(), self._recent.popleft()):
                signal.counts[b] -= 1
        if len(self._recent) < self.window:
            return None
        self.values = {name: signal.psi() for name, signal in self._signals.items()}
        worst = max(self.values.values())
        new = DRIFT if worst > self.on else OK if worst < self.off or self.state == WARMING_UP else self.state
        if new == self.state:
            return None
        self.state = new
        return new

    def describe(self) -> str:
        """One line for the log (no image is named)."""
        if not self.available:
            return "drift check unavailable: the model bundle has no reference distributions"
        values = ", ".join(f"{k} PSI {v:.3f}" for k, v in self.values.items() if v is not None)
        return f"drift state {self.state} over the last {self.window} images ({values}; drift past {self.on:g})"
