"""The out-of-distribution guard: is an image like the ones the model was trained on?

    >>> guard = fit_ood_guard(train_features, val_features)   # doctest: +SKIP  pooled backbone features
    >>> guard.distance(features) <= guard.cutoff              # doctest: +SKIP  in distribution

The score is the Mahalanobis distance of an image's pooled backbone features
(the 1,280 numbers the classifier reads) from the training images' features,
under the Ledoit-Wolf shrunk covariance (scikit-learn's ``LedoitWolf`` picks the
shrinkage). The cut-off is the 95th percentile of the *validation* images'
distances, so about 95% of images like the validation split are kept and a
photo, a blank frame or a scan unlike any training image is flagged.

Stored compactly and exactly: the shrunk covariance is
``(1 - a) S + a m I`` (``S`` the sample covariance, ``m`` its mean eigenvalue),
so its inverse needs only ``S``'s eigenvectors with a non-zero eigenvalue (at
most one fewer than the training images) and the single eigenvalue ``a m`` of
the rest. Numpy only: nothing here imports TensorFlow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ccad.errors import ModelError
from ccad.io.files import atomic_path

OOD_FILE = "ood.npz"
KEEP = 0.95
OUT_OF_DISTRIBUTION_TEXT = "outside what this model was trained on: do not rely on this result"


@dataclass(frozen=True)
class OodGuard:
    mean: np.ndarray  # (d,)
    vectors: np.ndarray  # (r, d) orthonormal eigenvectors of the sample covariance
    eigenvalues: np.ndarray  # (r,) their shrunk eigenvalues
    rest: float  # the shrunk eigenvalue of every other direction
    cutoff: float
    keep: float = KEEP
    #: What in-distribution images look like to the model, for the drift check (:mod:`ccad.deploy.monitoring`):
    #: the validation split's (or a site's) distances and positive-class probabilities; None in older bundles.
    reference_distances: np.ndarray | None = None
    reference_scores: np.ndarray | None = None

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
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                references = {
                    k: np.asarray(v, np.float32)
                    for k, v in (
                        ("reference_distances", self.reference_distances),
                        ("reference_scores", self.reference_scores),
                    )
                    if v is not None
                }
                np.savez(
                    f,
                    mean=self.mean.astype(np.float32),
                    vectors=self.vectors.astype(np.float32),
                    eigenvalues=self.eigenvalues,
                    rest=self.rest,
                    cutoff=self.cutoff,
                    keep=self.keep,
                    **references,
                )

    @classmethod
    def load(cls, path: str | os.PathLike) -> "OodGuard":
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(
                    z["mean"],
                    z["vectors"],
                    z["eigenvalues"],
                    float(z["rest"]),
                    float(z["cutoff"]),
                    float(z["keep"]),
                    *(z[k] if k in z.files else None for k in ("reference_distances", "reference_scores")),
                )
        except (OSError, KeyError, ValueError) as e:
            raise ModelError(f"{path}: not a readable out-of-distribution guard ({type(e).__name__})") from e

    def describe(self) -> dict:
        out = {
            "file": OOD_FILE,
            "score": "Mahalanobis distance of the pooled backbone features (Ledoit-Wolf "
            "shrunk covariance of the training split)",
            "cutoff": self.cutoff,
            "cutoff_rule": f"keeps {self.keep:.0%} of the validation split",
            "dimensions": int(self.mean.size),
        }
        if self.reference_distances is not None:
            out["drift_reference"] = {
                "images": int(len(self.reference_distances)),
                "scores": self.reference_scores is not None,
            }
        return out


def fit_ood_guard(train_features: np.ndarray, val_features: np.ndarray, keep: float = KEEP) -> OodGuard:
    """Fit on the training split's features, set the cut-off on the validation split's."""
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
    guard = OodGuard(mean, vt[keepers], eigen, rest, cutoff=0.0, keep=keep)
    distances = guard.distance(np.asarray(val_features, np.float64))
    return OodGuard(
        mean, vt[keepers], eigen, rest, float(np.quantile(distances, keep)), keep, reference_distances=distances
    )


#: Lung-QC flags (:mod:`ccad.models.lungs`) that make a prediction out of distribution by themselves; the others
#: travel with it as cautions.
QC_OUT_OF_DISTRIBUTION = ("no_lungs",)


def screen(guard: OodGuard | None, pooled_features: np.ndarray, lung_qc=()) -> dict:
    """``in_distribution`` (True / False; None when the model has no guard and QC found nothing), the
    distance and cut-off, the lung-QC flags, and a ``warning`` when out of distribution."""
    flags = list(lung_qc or ())
    out: dict = {"lung_qc": flags}
    reasons = []
    if guard is not None:
        distance = float(guard.distance(pooled_features))
        out.update(ood_distance=round(distance, 3), ood_cutoff=round(guard.cutoff, 3))
        if distance > guard.cutoff:
            reasons.append("image features unlike the training images")
    reasons += [f"lung check: {f.replace('_', ' ')}" for f in flags if f in QC_OUT_OF_DISTRIBUTION]
    out["in_distribution"] = (not reasons) if (guard is not None or reasons) else None
    if reasons:
        out["warning"] = f"{OUT_OF_DISTRIBUTION_TEXT} ({'; '.join(reasons)})"
    return out
