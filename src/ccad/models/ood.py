"""The out-of-distribution guard: is an image a frontal chest X-ray like those the model was built for?

    >>> guard = fit_ood_guard(film_features, foreign_features, cut_features)   # doctest: +SKIP  pooled features
    >>> guard.distance(features) <= guard.cutoff                              # doctest: +SKIP  in scope

The guard is a head on the pooled backbone features (the numbers the classifier reads): a logistic regression
trained to tell the training films from foreign inputs made from them (:mod:`ccad.data.foreign`: films turned by
90 or 180 degrees, inverted, a corner cropped, and screens of text). Its score is ``-ln p(film)``, 0 for an image
clearly like the films and growing as it looks foreign; the cut-off keeps 99% of the validation split's films.

Chosen by ``benchmarks/guard.py`` (issue 37; BENCHMARKS.md, "The guard") over a Mahalanobis distance from the
training films, which flagged the sickest lungs of unseen hospitals as often as foreign inputs: by
leave-one-source-out, the head flagged every foreign input (photos, CT, MR, US and NM images, other pictures,
screenshots, rotated, inverted and cropped films) and at most 3% of any unseen source's chest films, COVID or
not, against up to 9.4% (COVID films of an unseen source) for the distance at its 95% cut-off.

:class:`MahalanobisGuard` is the earlier guard, still read from older bundles (``load_guard``). Numpy only at
prediction time: nothing here imports TensorFlow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from ccad.errors import ModelError
from ccad.io.files import atomic_path

OOD_FILE = "ood.npz"
KEEP = 0.99
#: What the guard's flag means, in the words every output uses (the page, the API, the SR, the FHIR report).
FLAG_MEANING = "not a frontal chest X-ray like those the model was built for"
OUT_OF_DISTRIBUTION_TEXT = f"{FLAG_MEANING}: do not rely on this result"
#: The logistic head's regularization (scikit-learn's C on standardized features), as benchmarks/guard.py chose it.
HEAD_C = 0.1


@dataclass(frozen=True)
class OodGuard:
    """The frontal-chest head: ``distance = ln(1 + exp(features . coef + intercept))``, flagged above ``cutoff``."""

    coef: np.ndarray  # (d,) on the raw pooled features (the standardization folded in)
    intercept: float
    cutoff: float
    keep: float = KEEP
    #: What in-distribution images look like to the model, for the drift check (:mod:`ccad.deploy.live_metrics`):
    #: the validation split's (or a site's) distances and positive-class probabilities; None when there is none.
    reference_distances: np.ndarray | None = None
    reference_scores: np.ndarray | None = None

    kind = "frontal-chest head"
    reason = "image unlike a frontal chest X-ray"

    def distance(self, features: np.ndarray) -> np.ndarray:
        """``-ln p(film)`` of (N, d) (or (d,)) features: (N,) (or a float), 0 or more."""
        x = np.atleast_2d(np.asarray(features, np.float64))
        d = np.logaddexp(0.0, x @ self.coef + self.intercept)
        return d if np.ndim(features) > 1 else float(d[0])

    def save(self, path: str | os.PathLike) -> None:
        _save(path, self, coef=self.coef.astype(np.float64), intercept=self.intercept)

    def describe(self) -> dict:
        return _describe(
            self,
            "-ln p(a frontal chest film) from a logistic head on the pooled backbone features, trained on the "
            "training films against foreign inputs made from them (turned by 90 and 180 degrees, inverted, a "
            "corner cropped) and screens of text",
        )


@dataclass(frozen=True)
class MahalanobisGuard:
    """The earlier guard (bundles exported before issue 37): the Mahalanobis distance of the pooled features
    from the training images' under the Ledoit-Wolf shrunk covariance ``(1 - a) S + a m I``, stored as ``S``'s
    eigenvectors with a non-zero eigenvalue and the single eigenvalue ``a m`` of every other direction."""

    mean: np.ndarray  # (d,)
    vectors: np.ndarray  # (r, d) orthonormal eigenvectors of the sample covariance
    eigenvalues: np.ndarray  # (r,) their shrunk eigenvalues
    rest: float  # the shrunk eigenvalue of every other direction
    cutoff: float
    keep: float = 0.95
    reference_distances: np.ndarray | None = None
    reference_scores: np.ndarray | None = None

    kind = "Mahalanobis distance"
    reason = "image features unlike the training images"

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of (N, d) (or (d,)) features; (N,) (or a float)."""
        x = np.atleast_2d(np.asarray(features, np.float64)) - self.mean
        # in the stored vectors' precision (float32 from a file): casting them to float64 each call cost more
        # than the product (~10 ms an image for two views' 2,560 features)
        projected = (x.astype(self.vectors.dtype) @ self.vectors.T).astype(np.float64)
        inside = np.sum(projected**2 / self.eigenvalues, axis=1)
        outside = np.maximum(np.sum(x**2, axis=1) - np.sum(projected**2, axis=1), 0.0) / self.rest
        d = np.sqrt(inside + outside)
        return d if np.ndim(features) > 1 else float(d[0])

    def save(self, path: str | os.PathLike) -> None:
        _save(
            path,
            self,
            mean=self.mean.astype(np.float32),
            vectors=self.vectors.astype(np.float32),
            eigenvalues=self.eigenvalues,
            rest=self.rest,
        )

    def describe(self) -> dict:
        return _describe(
            self,
            "Mahalanobis distance of the pooled backbone features (Ledoit-Wolf shrunk covariance of the "
            "training split)",
        )


Guard = Union[OodGuard, MahalanobisGuard]


def _save(path: str | os.PathLike, guard: Guard, **parts) -> None:
    references = {
        k: np.asarray(v, np.float32)
        for k, v in (("reference_distances", guard.reference_distances), ("reference_scores", guard.reference_scores))
        if v is not None
    }
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, cutoff=guard.cutoff, keep=guard.keep, **parts, **references)


def _describe(guard: Guard, score: str) -> dict:
    out = {
        "file": OOD_FILE,
        "kind": guard.kind,
        "score": score,
        "cutoff": guard.cutoff,
        "cutoff_rule": f"keeps {guard.keep:.0%} of the validation split",
        "dimensions": int(np.size(guard.coef if isinstance(guard, OodGuard) else guard.mean)),
    }
    if guard.reference_distances is not None:
        out["drift_reference"] = {
            "images": int(len(guard.reference_distances)),
            "scores": guard.reference_scores is not None,
        }
    return out


def load_guard(path: str | os.PathLike) -> Guard:
    """The guard saved at ``path``: the frontal-chest head, or an older bundle's Mahalanobis guard."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            references = [z[k] if k in z.files else None for k in ("reference_distances", "reference_scores")]
            common = (float(z["cutoff"]), float(z["keep"]), *references)
            if "coef" in z.files:
                return OodGuard(z["coef"], float(z["intercept"]), *common)
            return MahalanobisGuard(z["mean"], z["vectors"], z["eigenvalues"], float(z["rest"]), *common)
    except (OSError, KeyError, ValueError) as e:
        raise ModelError(f"{path}: not a readable out-of-distribution guard ({type(e).__name__})") from e


def fit_ood_guard(films: np.ndarray, foreign: np.ndarray, cut: np.ndarray, keep: float = KEEP) -> OodGuard:
    """The frontal-chest head fitted on ``films`` (features of the training films) against ``foreign`` (features
    of foreign inputs made from them), its cut-off keeping ``keep`` of ``cut`` (the validation films)."""
    from sklearn.linear_model import LogisticRegression

    films, foreign = np.asarray(films, np.float64), np.asarray(foreign, np.float64)
    if len(films) < 2 or len(foreign) < 1 or len(cut) < 1:
        raise ModelError("the out-of-distribution guard needs 2 training films, 1 foreign input and 1 validation film")
    x = np.concatenate([films, foreign])
    y = np.r_[np.zeros(len(films)), np.ones(len(foreign))]
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale < 1e-12] = 1.0  # a constant feature: scikit-learn's StandardScaler leaves it unscaled too
    head = LogisticRegression(C=HEAD_C, max_iter=3000, class_weight="balanced").fit((x - mean) / scale, y)
    coef = head.coef_[0] / scale
    guard = OodGuard(coef, float(head.intercept_[0] - mean @ coef), cutoff=0.0, keep=keep)
    distances = guard.distance(np.asarray(cut, np.float64))
    return OodGuard(guard.coef, guard.intercept, float(np.quantile(distances, keep)), keep, distances)


def fit_mahalanobis_guard(train_features: np.ndarray, val_features: np.ndarray, keep: float = 0.95) -> MahalanobisGuard:
    """The earlier guard: fitted on the training split's features, the cut-off on the validation split's."""
    from sklearn.covariance import LedoitWolf

    x = np.asarray(train_features, np.float64)
    if len(x) < 2 or len(val_features) < 1:
        raise ModelError("the out-of-distribution guard needs at least 2 training and 1 validation image")
    mean = x.mean(axis=0)
    centred = x - mean
    shrinkage = LedoitWolf(assume_centered=True).fit(centred).shrinkage_
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    sample_eigen = singular**2 / len(x)
    mu = float(np.sum(centred**2) / len(x) / x.shape[1])  # trace(S) / d
    rest = max(shrinkage * mu, 1e-12)
    keepers = sample_eigen > 1e-10 * max(sample_eigen.max(), 1e-30)
    eigen = (1 - shrinkage) * sample_eigen[keepers] + rest
    guard = MahalanobisGuard(mean, vt[keepers], eigen, rest, cutoff=0.0, keep=keep)
    distances = guard.distance(np.asarray(val_features, np.float64))
    return MahalanobisGuard(mean, vt[keepers], eigen, rest, float(np.quantile(distances, keep)), keep, distances)


def significant(value: float) -> float:
    """``value`` to 4 significant digits, as every output reports a guard's score: the head's scores of films
    span 1e-7 to 0.2 (3 decimals would make 87% of the shipped bundle's validation films 0.000, and the drift
    check's live histogram unlike its reference)."""
    return float(f"{value:.4g}")


#: Lung-QC flags (:mod:`ccad.models.lungs`) that make a prediction out of distribution by themselves; the others
#: travel with it as cautions.
QC_OUT_OF_DISTRIBUTION = ("no_lungs",)


def screen(guard: Guard | None, pooled_features: np.ndarray, lung_qc=()) -> dict:
    """``in_distribution`` (True / False; None when the model has no guard and QC found nothing), the
    distance and cut-off, the lung-QC flags, and a ``warning`` when out of distribution."""
    flags = list(lung_qc or ())
    out: dict = {"lung_qc": flags}
    reasons = []
    if guard is not None:
        distance = float(guard.distance(pooled_features))
        out.update(ood_distance=significant(distance), ood_cutoff=significant(guard.cutoff))
        if distance > guard.cutoff:
            reasons.append(guard.reason)
    reasons += [f"lung check: {f.replace('_', ' ')}" for f in flags if f in QC_OUT_OF_DISTRIBUTION]
    out["in_distribution"] = (not reasons) if (guard is not None or reasons) else None
    if reasons:
        out["warning"] = f"{OUT_OF_DISTRIBUTION_TEXT} ({'; '.join(reasons)})"
    return out
