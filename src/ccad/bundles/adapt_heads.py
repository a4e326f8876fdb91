"""The Dense softmax heads that ``ccad adapt`` refits: where they are in an exported ONNX graph, and the fit.

:func:`head_initializers` finds each view's head (a MatMul, then an Add, then a Softmax) in the graph;
:func:`fit_head` refits one by L-BFGS on the weighted cross-entropy plus an L2 pull towards its old weights (the
"L2-SP" prior of Li et al. 2018); :class:`HeadFit` refits every view's head on the site's features with the
rehearsal features, and makes the out-of-fold predictions the decision threshold is refitted on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

FOLDS = 5


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_head(
    x: np.ndarray, y: np.ndarray, weight: np.ndarray, w0: np.ndarray, b0: np.ndarray, l2: float
) -> tuple[np.ndarray, np.ndarray]:
    """A Dense softmax head (``w0`` (d, k), ``b0`` (k,)) refitted on (x, y) with per-image ``weight``: the
    weighted mean cross-entropy + ``l2`` x the squared distance of the weights from ``w0``."""
    from scipy.optimize import minimize

    x, d, k = np.asarray(x, np.float64), w0.shape[0], w0.shape[1]
    onehot = np.eye(k)[y]
    weight = np.asarray(weight, np.float64) / np.sum(weight)

    def loss(theta):
        w, b = theta[: d * k].reshape(d, k), theta[d * k :]
        p = softmax(x @ w + b)
        value = -np.sum(weight * np.log(np.clip(np.sum(p * onehot, axis=1), 1e-12, None))) + l2 * np.sum((w - w0) ** 2)
        residual = (p - onehot) * weight[:, None]
        grad_w = x.T @ residual + 2 * l2 * (w - w0)
        return value, np.concatenate([grad_w.ravel(), residual.sum(axis=0)])

    theta = minimize(
        loss, np.concatenate([w0.ravel(), b0]).astype(np.float64), jac=True, method="L-BFGS-B", options={"maxiter": 500}
    ).x
    return theta[: d * k].reshape(d, k).astype(np.float32), theta[d * k :].astype(np.float32)


def head_initializers(model, classes: int) -> list[tuple[str, str]]:
    """(weight, bias) initializer names of each Dense softmax head in an exported ONNX graph, in view order:
    a MatMul by a (d, classes) initializer, then an Add of a (classes,) one, then a Softmax."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    heads = []
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits or inits[node.input[1]].shape[-1:] != (classes,):
            continue
        add = next((n for n in consumers.get(node.output[0], []) if n.op_type == "Add"), None)
        bias = next((i for i in (add.input if add is not None else []) if i in inits), None)
        if bias is not None and any(n.op_type == "Softmax" for n in consumers.get(add.output[0], [])):
            heads.append((node.name, node.input[1], bias))

    # in view order: Keras names a multi-view model's heads classifier_0, classifier_1, ... (numbers, not text:
    # classifier_10 after classifier_9)
    def view(name: str) -> tuple[int, str]:
        match = re.search(r"classifier_(\d+)", name)
        return (int(match.group(1)) if match else -1, name)

    return [(w, b) for _, w, b in sorted(heads, key=lambda h: view(h[0]))]


def head_probabilities(heads, x: np.ndarray) -> np.ndarray:
    """The mean over views of each view's softmax head on its slice of the pooled features."""
    d = x.shape[1] // len(heads)
    return np.mean([softmax(x[:, v * d : (v + 1) * d] @ w + b) for v, (w, b) in enumerate(heads)], axis=0)


@dataclass
class HeadFit:
    """Refit each view's head on site features with the rehearsal features (half the weight each) and an L2 pull
    towards ``old``."""

    old: list
    rehearsal: tuple[np.ndarray, np.ndarray]
    l2: float

    def fit(self, x_local: np.ndarray, y_local: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        r_x, r_y = self.rehearsal
        x = np.concatenate([x_local, r_x])
        w = np.concatenate([np.full(len(x_local), 1.0 / len(x_local)), np.full(len(r_x), 1.0 / max(len(r_x), 1))])
        yy = np.concatenate([y_local, r_y])
        d = x.shape[1] // len(self.old)
        return [fit_head(x[:, v * d : (v + 1) * d], yy, w, *self.old[v], self.l2) for v in range(len(self.old))]

    def out_of_fold(self, x: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int) -> np.ndarray:
        """Each image's probabilities from heads fitted without its patient group's fold."""
        from sklearn.model_selection import StratifiedGroupKFold

        out = np.zeros((len(x), self.old[0][0].shape[1]))
        for fit_rows, held in StratifiedGroupKFold(FOLDS, shuffle=True, random_state=seed).split(x, y, groups):
            out[held] = head_probabilities(self.fit(x[fit_rows], y[fit_rows]), x[held])
        return out
