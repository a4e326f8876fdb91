"""What a stored head needs at prediction time: the head names, and :class:`OnnxHead` for a non-linear one.

Fitting the heads (scikit-learn, WOA feature selection) is :mod:`ccad.training.heads`.
"""

from __future__ import annotations

import numpy as np

from ccad.errors import ConfigError

HEADS = ("dense", "logreg", "svm", "extra-trees")
FEATURE_SELECTIONS = ("none", "woa")
HEAD_FILE = "head.onnx"


def validate(head: str, feature_selection: str) -> None:
    if head not in HEADS:
        raise ConfigError(f"`head` must be one of {', '.join(HEADS)}, got {head!r}")
    if feature_selection not in FEATURE_SELECTIONS:
        raise ConfigError(
            f"`feature_selection` must be one of {', '.join(FEATURE_SELECTIONS)}, got {feature_selection!r}"
        )
    if feature_selection != "none" and head == "dense":
        raise ConfigError("`feature_selection` needs a scikit-learn head: `head` logreg, svm or extra-trees")


class OnnxHead:
    """A stored non-linear head: pooled features (N, D) -> probabilities (N, k), on ONNX Runtime.
    ``OnnxHead.load(path)`` opens one; the constructor stores the session."""

    def __init__(self, session):
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.output = next(o.name for o in session.get_outputs() if "prob" in o.name)

    @classmethod
    def load(cls, path) -> "OnnxHead":
        from ccad.io.onnx import cpu_session

        return cls(cpu_session(path, 1))

    def __call__(self, pooled: np.ndarray) -> np.ndarray:
        return self.session.run([self.output], {self.input_name: pooled.astype(np.float32)})[0]
