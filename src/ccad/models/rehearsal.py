"""A sample of a model's own training features, kept in its bundle so that ``ccad adapt`` can rehearse them.

    save_rehearsal(run_dir, pooled_train_features, train_labels, classes)    # at training time
    features, labels = load_rehearsal(bundle_dir / REHEARSAL_FILE)           # at adaptation time

Up to :data:`PER_CLASS` images a class, drawn at random (a fixed seed), as float16 pooled backbone features
(1,280 numbers a view): about 1 MB a view for 400 images. Features, not images: nothing in it shows a patient,
and the public training sets' images stay where they came from.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ccad.errors import ModelError
from ccad.io.files import atomic_path

REHEARSAL_FILE = "rehearsal.npz"
PER_CLASS = 200


def save_rehearsal(
    folder: str | os.PathLike,
    features: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    per_class: int = PER_CLASS,
    seed: int = 0,
) -> Path:
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    keep = np.concatenate([rng.permutation(np.flatnonzero(labels == k))[:per_class] for k in range(len(classes))])
    target = Path(folder) / REHEARSAL_FILE
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as f:
            np.savez(
                f,
                features=np.asarray(features)[keep].astype(np.float16),
                labels=labels[keep].astype(np.int16),
                classes=np.array(list(classes)),
            )
    return target


def load_rehearsal(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(features (n, d) float32, labels (n,), classes)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return z["features"].astype(np.float32), z["labels"].astype(np.int64), [str(c) for c in z["classes"]]
    except (OSError, KeyError, ValueError) as e:
        raise ModelError(f"{path}: not a readable rehearsal file ({type(e).__name__})") from e
