"""Hybrid heads (the paper's future work): scikit-learn classifiers on the frozen backbone's pooled features,
optionally after Whale Optimization Algorithm feature selection.

``--head``:

- ``dense`` (default): the paper's Dropout + Dense softmax, trained by Keras;
- ``logreg``: logistic regression (scikit-learn) on standardized features;
- ``svm``: a linear support vector machine (scikit-learn ``LinearSVC``); its
  decision values become probabilities through a softmax with a temperature
  fitted on the validation split (Platt-style scaling, one parameter);
- ``extra-trees``: scikit-learn ``ExtraTreesClassifier`` (300 trees).

``logreg`` and ``svm`` are linear in the pooled features, so they are written
*into the model's Dense layer* (standardization folded into the weights, the
features WOA dropped given weight 0): the saved model, the ONNX bundle, the
heatmaps (CAM) and every command work unchanged. ``extra-trees`` is not
linear: it is stored beside the model as ONNX (``head.onnx``, converted by
skl2onnx), run after the backbone by evaluation, ``predict`` and the bundle; it
has no class activation map.

``--feature-selection woa`` picks features with the Whale Optimization
Algorithm (Mirjalili & Lewis 2016; :mod:`ccad.training.woa`): each whale is a vector in [-1, 1]^D, a
feature is kept where its entry is > 0; the cost of a subset is the 3-fold
cross-validated error of a logistic regression on the *training split only*
plus 0.01 x the share of features kept. WOA is a weak optimizer in 1,280
dimensions (it drifts toward the origin); the number of features it kept is
recorded and compared.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ccad.models.classifier import CLASSIFIER_LAYER
from ccad.models.decision import fit_temperature
from ccad.models.heads import HEAD_FILE
from ccad.training.woa import whale_optimization

WOA_EPOCHS, WOA_POPULATION, WOA_SIZE_PENALTY = 20, 16, 0.01


@dataclass
class HeadFit:
    """A fitted scikit-learn head: what the run records, and for extra-trees its ONNX bytes."""

    kind: str
    feature_selection: str
    mask: np.ndarray
    fit_s: float
    onnx: bytes | None = None

    @property
    def features_kept(self) -> int:
        return int(self.mask.sum())

    @property
    def file(self) -> str | None:
        return HEAD_FILE if self.onnx is not None else None

    def record(self) -> dict[str, Any]:
        """The ``head`` entry of the run metadata and model card."""
        out = {
            "kind": self.kind,
            "feature_selection": self.feature_selection,
            "features_kept": self.features_kept,
            "selected_features": np.flatnonzero(self.mask).tolist(),
        }
        if self.file:
            out["file"] = self.file
        return out


def woa_select(features: np.ndarray, labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """A boolean mask of the features kept by WOA (fitted on these training features only)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.preprocessing import StandardScaler

    x = StandardScaler().fit_transform(features)
    folds = StratifiedKFold(3, shuffle=True, random_state=seed)
    dim = x.shape[1]

    def cost(solution: np.ndarray) -> float:
        keep = solution > 0
        if not keep.any():
            return 1.0 + WOA_SIZE_PENALTY
        accuracy = cross_val_score(LogisticRegression(C=0.1, max_iter=500), x[:, keep], labels, cv=folds).mean()
        return float(1.0 - accuracy + WOA_SIZE_PENALTY * keep.mean())

    position, _ = whale_optimization(cost, dim, WOA_EPOCHS, WOA_POPULATION, seed)
    mask = position > 0
    return mask if mask.any() else np.ones(dim, bool)


def fit_head(
    model,
    f_train: np.ndarray,
    y_train: np.ndarray,
    f_val: np.ndarray,
    y_val: np.ndarray,
    num_classes: int,
    head: str,
    feature_selection: str,
    seed: int,
    f_train_original: np.ndarray,
    y_train_original: np.ndarray,
) -> HeadFit:
    """Fit a scikit-learn head; write linear heads into ``model``'s Dense layer (extra-trees: ONNX bytes)."""

    start = time.perf_counter()
    dim = f_train.shape[1]
    mask = woa_select(f_train_original, y_train_original, seed) if feature_selection == "woa" else np.ones(dim, bool)
    onnx = None
    if head == "extra-trees":
        from sklearn.ensemble import ExtraTreesClassifier

        trees = ExtraTreesClassifier(n_estimators=300, random_state=seed, n_jobs=-1)
        trees.fit(f_train[:, mask], y_train)
        onnx = _trees_to_onnx(trees, mask, dim)
    else:
        kernel, bias = _linear_head(f_train[:, mask], y_train, f_val[:, mask], y_val, num_classes, head, seed)
        full = np.zeros((dim, num_classes), np.float32)
        full[mask] = kernel
        model.get_layer(CLASSIFIER_LAYER).set_weights([full, bias.astype(np.float32)])
    return HeadFit(head, feature_selection, mask, time.perf_counter() - start, onnx)


def _linear_head(x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, k: int, head: str, seed: int):
    """(kernel (d, k), bias (k,)) of softmax logits equal to the fitted classifier's, on raw features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    scaler = StandardScaler().fit(x)
    xs = scaler.transform(x)
    if head == "logreg":
        classifier = LogisticRegression(C=0.05, max_iter=3000).fit(xs, y)
        scale = 1.0
    else:
        classifier = LinearSVC(C=0.01, random_state=seed, max_iter=10000).fit(xs, y)
        scale = None
    coef, intercept = np.atleast_2d(classifier.coef_), np.atleast_1d(classifier.intercept_)
    if k == 2 and coef.shape[0] == 1:  # one decision value z for class 1: softmax([0, z]) = sigmoid(z)
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.array([0.0, intercept[0]])
    if scale is None:  # SVM: logits = decision values / T, T fitted on validation
        logits = scaler.transform(x_val) @ coef.T + intercept
        p = np.exp(logits - logits.max(1, keepdims=True))
        temperature = fit_temperature(y_val, p / p.sum(1, keepdims=True))
        scale = 1.0 / temperature
    kernel = (coef / scaler.scale_).T * scale
    bias = (intercept - (coef / scaler.scale_) @ scaler.mean_) * scale
    return kernel, bias


def _trees_to_onnx(trees, mask: np.ndarray, dim: int) -> bytes:
    """The trees on the full feature vector (selection as a fixed column gather), as ONNX bytes."""
    from skl2onnx import to_onnx
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import make_pipeline

    pipeline = make_pipeline(ColumnTransformer([("kept", "passthrough", np.flatnonzero(mask).tolist())]), trees)
    # The pipeline is already fitted through its parts: fit the (stateless) selector on a dummy row.
    pipeline.steps[0][1].fit(np.zeros((1, dim), np.float32))
    onx = to_onnx(
        pipeline,
        np.zeros((1, dim), np.float32),
        options={id(trees): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    return onx.SerializeToString()
