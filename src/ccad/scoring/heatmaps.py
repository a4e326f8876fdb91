"""Class activation maps (Zhou et al. 2016): the one place a heatmap is computed.

For global average pooling followed by a dense layer, a class's score is the spatial mean of
``feature_map @ w_class``, so the map ``max(feature_map @ w_class, 0)`` is exact, not an approximation.
"""

from __future__ import annotations

import numpy as np

from ccad.io.images import resize_hw


def upsample_map(cam: np.ndarray, size: int) -> np.ndarray:
    """Scale a (h, w) map to [0, 1] by its maximum and resize it bilinearly to (size, size)."""
    cam = cam.astype(np.float32)
    if cam.max() > 0:
        cam = cam / cam.max()
    return np.clip(resize_hw(cam, size, size), 0.0, 1.0)


def class_activation_map(feature_map: np.ndarray, weights: np.ndarray, size: int) -> np.ndarray:
    """The (size, size) map in [0, 1] of one image's (h, w, d) feature map for one class's (d,) weights
    (all zero where the class has no positive evidence)."""
    cam = np.maximum(feature_map @ weights, 0.0)
    if cam.max() <= 0:
        return np.zeros((size, size), np.float32)
    return upsample_map(cam, size)
