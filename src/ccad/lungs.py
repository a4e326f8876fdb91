"""A simple, documented estimate of the lung fields on a frontal chest X-ray.

No lung-segmentation model can be downloaded here, so the lung fields are
estimated from intensity inside an anatomical prior (the classic thresholding
approach; scikit-image and SciPy do the image operations):

1. resize to 256 x 256, histogram-equalize, Gaussian blur (sigma 2 px);
2. keep the pixels darker than Otsu's threshold (computed on the central
   3/4 of the image) that lie inside the *prior*: two ellipses covering where
   the lungs of a centred PA/AP film lie (centres at 30% / 70% of the width,
   50% of the height; semi-axes 22% x 38%);
3. open with a 4-px disk, then on each side (patient's right = image left)
   keep the largest connected region, close it (6-px disk) and fill its holes;
4. a side whose region is under 3% of the image falls back to a fixed
   *template* ellipse (semi-axes 15% x 28%).

It is crude: it can take in air above the shoulders or miss consolidated
(white) lung. :attr:`LungFields.method` says, per side, whether the intensity
estimate (``i``) or the template (``t``) was used, and audit reports show the
estimate drawn on examples so a reader can judge it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import skimage.exposure
import skimage.filters
import skimage.measure
import skimage.morphology  # explicit submodule imports: skimage's lazy loading is not thread-safe
from scipy import ndimage

WORK_SIZE = 256
MIN_SIDE_FRACTION = 0.03
INTERIOR_MARGIN = 5


def _ellipse(cx: float, cy: float, ax: float, ay: float, size: int = WORK_SIZE) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    return ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 <= 1.0


PRIOR = _ellipse(0.30, 0.50, 0.22, 0.38) | _ellipse(0.70, 0.50, 0.22, 0.38)
TEMPLATE = _ellipse(0.31, 0.48, 0.15, 0.28) | _ellipse(0.69, 0.48, 0.15, 0.28)


@dataclass(frozen=True)
class LungFields:
    """A boolean mask at :data:`WORK_SIZE` and how each side was found (``"ii"``, ``"it"``, ...)."""

    mask: np.ndarray
    method: str

    def at(self, height: int, width: int) -> np.ndarray:
        """The mask resized (nearest) to ``height x width``."""
        rows = (np.arange(height) * WORK_SIZE // height).clip(0, WORK_SIZE - 1)
        cols = (np.arange(width) * WORK_SIZE // width).clip(0, WORK_SIZE - 1)
        return self.mask[rows][:, cols]

    def interior(self, height: int, width: int, margin_px: int = INTERIOR_MARGIN) -> np.ndarray:
        """The mask shrunk by ``margin_px`` (at 256 px), resized to ``height x width``: the lungs without
        their edges (ribs, heart and diaphragm borders that a loose estimate takes in)."""
        shrunk = ndimage.binary_erosion(self.mask, skimage.morphology.disk(margin_px))
        return LungFields(shrunk if shrunk.any() else self.mask, self.method).at(height, width)

    def box(self, height: int, width: int, margin: float = 0.08) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) of the lung fields in a ``height x width`` image, widened by ``margin``."""
        rows, cols = np.flatnonzero(self.mask.any(axis=1)), np.flatnonzero(self.mask.any(axis=0))
        top, bottom = rows[0] / WORK_SIZE, (rows[-1] + 1) / WORK_SIZE
        left, right = cols[0] / WORK_SIZE, (cols[-1] + 1) / WORK_SIZE
        dy, dx = margin * (bottom - top), margin * (right - left)
        top, bottom = max(0.0, top - dy), min(1.0, bottom + dy)
        left, right = max(0.0, left - dx), min(1.0, right + dx)
        return (int(top * height), max(int(top * height) + 1, int(round(bottom * height))),
                int(left * width), max(int(left * width) + 1, int(round(right * width))))


def estimate_lung_fields(gray: np.ndarray) -> LungFields:
    """Estimate the lung fields of a (H, W) grayscale X-ray in [0, 1] (see the module docstring)."""
    from .images import resize

    exposure, filters, measure, morphology = skimage.exposure, skimage.filters, skimage.measure, skimage.morphology

    g = resize(gray, WORK_SIZE)
    smooth = filters.gaussian(exposure.equalize_hist(g), sigma=2)
    core = smooth[WORK_SIZE // 8:-WORK_SIZE // 8, WORK_SIZE // 8:-WORK_SIZE // 8]
    threshold = filters.threshold_otsu(core) if np.ptp(core) > 0 else -np.inf  # flat: nothing dark
    dark = ndimage.binary_opening((smooth < threshold) & PRIOR, morphology.disk(4))
    labels, _ = ndimage.label(dark)
    regions = measure.regionprops(labels)
    mask = np.zeros((WORK_SIZE, WORK_SIZE), bool)
    method = ""
    columns = np.arange(WORK_SIZE)[None, :] / WORK_SIZE
    for lo, hi in ((0.0, 0.5), (0.5, 1.0)):
        side = [r for r in regions if lo <= r.centroid[1] / WORK_SIZE < hi]
        best = max(side, key=lambda r: r.area, default=None)
        if best is not None and best.area >= MIN_SIDE_FRACTION * WORK_SIZE ** 2:
            region = ndimage.binary_closing(labels == best.label, morphology.disk(6), border_value=0)
            mask |= ndimage.binary_fill_holes(region)
            method += "i"
        else:
            mask |= TEMPLATE & (columns >= lo) & (columns < hi)
            method += "t"
    return LungFields(mask, method)


def blank(gray: np.ndarray, region: np.ndarray, value: float | None = None) -> np.ndarray:
    """A copy of ``gray`` with ``region`` (a boolean mask of the same shape) set to ``value`` (default: the image mean)."""
    out = gray.copy()
    out[region] = float(gray.mean()) if value is None else value
    return out
