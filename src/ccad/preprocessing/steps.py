"""The preprocessing steps and the ``--preprocess`` values that name them.

The steps are the table :data:`STEPS`: each a small function with its parameters, which the model card
records (:func:`describe`). A ``--preprocess`` value is steps joined with ``+`` (e.g. ``lungs+equalize+lowpass``;
``none`` is the paper's plain resize, :func:`preprocessing_steps`); whatever order they are given in, they run in
the table's order: the region steps, then the intensity steps (on the image at most :data:`WORK_SIDE` px), then
the resize, then the output steps (:func:`ccad.preprocessing.pipeline.prepare_full` runs them). Values joined
with ``|`` are the views of a multi-view model (:func:`preprocessing_views`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ccad.errors import ConfigError
from ccad.io.images import resize
from ccad.models.lungs import INTERIOR_MARGIN, LungFields

#: Side at which the lung segmenter and the intensity steps work (larger images are first reduced to this).
WORK_SIDE = 512


@dataclass
class _Work:
    """The image as the steps pass it on: ``work`` is the part of ``gray`` (the working-resolution image)
    inside ``box`` that the model will see; ``outside`` marks pixels of ``work`` to set to black."""

    gray: np.ndarray
    fields: LungFields | None
    box: tuple[int, int, int, int]
    work: np.ndarray
    outside: np.ndarray | None = None
    image: np.ndarray | None = None  # the (size, size) result, from the resize on


def _crop(w: _Work, margin: float) -> None:
    w.box = w.fields.box(*w.gray.shape, margin=margin)
    top, bottom, left, right = w.box
    w.work = w.gray[top:bottom, left:right]


def _thorax(w: _Work, margin: float) -> None:
    _crop(w, margin)


def _lungs(w: _Work, margin: float, interior_margin: float) -> None:
    _crop(w, margin)
    top, bottom, left, right = w.box
    w.outside = ~w.fields.interior(*w.gray.shape, margin=interior_margin)[top:bottom, left:right]


def _clahe(w: _Work, clip_limit: float) -> None:
    import skimage.exposure

    w.work = skimage.exposure.equalize_adapthist(w.work, clip_limit=clip_limit).astype(np.float32)


def _equalize(w: _Work, nbins: int) -> None:
    if w.outside is None:
        w.work = equalize_hist(w.work, nbins=nbins).astype(np.float32)
        return
    if w.outside.all():  # no lungs found: nothing to equalize
        return
    # Inside the lungs only: the histogram is theirs, and what lies outside is set to black after the
    # intensity steps anyway (so it is set now, and not interpolated first).
    inside = ~w.outside
    out = np.zeros(w.work.shape, np.float32)
    out[inside] = equalize_hist(w.work[inside], nbins=nbins)
    w.work = out


def equalize_hist(image: np.ndarray, nbins: int = 256, mask: np.ndarray | None = None) -> np.ndarray:
    """``skimage.exposure.equalize_hist(image, nbins, mask)`` of a float image, the same values, in about a
    fifth of the time (written here for speed; the tests compare the two value for value).

    scikit-image takes the histogram of the (masked) pixels, its cumulative distribution at the bin centres,
    and ``np.interp`` of every pixel on it; ``np.interp`` searches for each pixel's interval, which is 90% of
    the time (2.5 ms of 2.8 on a 207 x 252 crop). The centres here are evenly spaced, so the interval comes
    from the value itself, and the interpolation is numpy's own formula (slope per interval,
    ``slope * (x - x_j) + y_j``, in float64). Float rounding can put a value that lies within a rounding
    error of a centre in the neighbouring interval, whose line meets the same point there: the float32
    result is the same."""
    values = image if mask is None else image[np.asarray(mask, bool)]
    hist, edges = np.histogram(values.ravel(), bins=nbins)
    dtype = np.float32 if image.dtype in (np.float16, np.float32) else np.float64
    centres = ((edges[:-1] + edges[1:]) / 2.0).astype(np.float64)
    counts = hist.cumsum()
    cdf = (counts / float(counts[-1])).astype(dtype).astype(np.float64)
    x = image.astype(np.float64).ravel()
    last = len(centres) - 1
    if last == 0:
        return np.full(image.shape, cdf[0], dtype)
    f = (x - centres[0]) * (last / (centres[-1] - centres[0]))
    j = np.maximum(np.minimum(f, last - 1, out=f), 0, out=f).astype(np.intp)  # floor, as f >= 0
    slopes = np.diff(cdf) / np.diff(centres)
    out = slopes[j] * (x - centres[j]) + cdf[j]
    out[x <= centres[0]] = cdf[0]
    out[x >= centres[-1]] = cdf[-1]
    return out.reshape(image.shape).astype(dtype)


def _lowpass(w: _Work, factor: int, min_side: int) -> None:
    size = w.image.shape[0]
    w.image = resize(resize(w.image, max(min_side, size // factor)), size)


@dataclass(frozen=True)
class Step:
    """One preprocessing step: ``stage`` (region, intensity or output) says when it runs."""

    name: str
    stage: str
    apply: Callable[..., None]
    params: dict[str, Any] = field(default_factory=dict)
    doc: str = ""
    needs_lungs: bool = False

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "stage": self.stage, "params": dict(self.params), "what": self.doc}


#: The steps, in the order they run.
STEPS: dict[str, Step] = {
    s.name: s
    for s in (
        Step(
            "thorax",
            "region",
            _thorax,
            {"margin": 0.08},
            needs_lungs=True,
            doc="crop to the lung fields of the shipped segmenter plus a margin (a fraction of their extent): "
            "drops borders, collimation, most burned-in text and markers",
        ),
        Step(
            "lungs",
            "region",
            _lungs,
            {"margin": 0.08, "interior_margin": INTERIOR_MARGIN},
            needs_lungs=True,
            doc="thorax, and everything outside the lung fields (shrunk by interior_margin of the side, so their "
            "borders with ribs, heart and diaphragm are left out too) set to black",
        ),
        Step(
            "clahe",
            "intensity",
            _clahe,
            {"clip_limit": 0.01},
            doc="contrast-limited adaptive histogram equalization (scikit-image)",
        ),
        Step(
            "equalize",
            "intensity",
            _equalize,
            {"nbins": 256},
            doc="global histogram equalization (scikit-image's values, by equalize_hist here; inside the lungs "
            "with lungs): every image gets the same gray-level distribution, whatever the exposure and "
            "processing of its scanner",
        ),
        Step(
            "lowpass",
            "output",
            _lowpass,
            {"factor": 2, "min_side": 8},
            doc="down- then up-sampling by factor at the input size: removes the fine texture (noise grain, JPEG "
            "blocks, sharpening) by which scanners differ, keeps opacities",
        ),
    )
}
#: Step names in run order (for messages and ``--help``).
PREPROCESSING_STEPS = tuple(STEPS)


#: Joins the views of a multi-view ``--preprocess`` value.
VIEW_SEPARATOR = "|"


def preprocessing_views(preprocess: str) -> list[str]:
    """The views of a ``--preprocess`` value (one for a plain value), each validated. Views must crop the
    same region (``thorax`` or ``lungs``, whose crop boxes are the same), so that their heatmaps line up."""
    views = [v.strip() for v in preprocess.split(VIEW_SEPARATOR)]
    for view in views:
        preprocessing_steps(view)
    if len(views) > 1:
        if len(set(views)) < len(views):
            raise ConfigError(f"`preprocess` {preprocess!r}: a view is given twice")
        for view in views:
            regions = [name for name in preprocessing_steps(view) if STEPS[name].stage == "region"]
            if not regions:
                raise ConfigError(
                    f"`preprocess` {preprocess!r}: every view of a multi-view model crops to the "
                    f"lungs (thorax or lungs); {view!r} does not"
                )
        if (
            len(
                {
                    STEPS[name].params["margin"]
                    for view in views
                    for name in preprocessing_steps(view)
                    if STEPS[name].stage == "region"
                }
            )
            > 1
        ):
            raise ConfigError(f"`preprocess` {preprocess!r}: the views must crop the same box")
    return views


def view_count(preprocess: str) -> int:
    """How many views a ``--preprocess`` value has (channels of :attr:`Prepared.image`)."""
    return len(preprocessing_views(preprocess))


def preprocessing_steps(preprocess: str) -> list[str]:
    """The steps of a single-view ``--preprocess`` value, validated, in run order (``none`` -> [])."""
    if preprocess in ("", "none"):
        return []
    if VIEW_SEPARATOR in preprocess:
        raise ConfigError(f"`preprocess` {preprocess!r}: several views here are not supported")
    steps = [s.strip() for s in preprocess.split("+")]
    for step in steps:
        if step not in STEPS:
            raise ConfigError(
                f"unknown preprocessing step {step!r} in {preprocess!r} "
                f"(none, or steps joined with +: {', '.join(STEPS)})"
            )
    if "thorax" in steps and "lungs" in steps:
        raise ConfigError("`preprocess`: use thorax or lungs, not both")
    return [name for name in STEPS if name in steps]


def describe(preprocess: str) -> dict[str, Any]:
    """The exact preprocessing of a model, as its card records it."""
    views = preprocessing_views(preprocess)
    if len(views) > 1:
        return {
            **describe(views[0]),
            "preprocess": preprocess,
            "steps": None,
            "views": [
                {"preprocess": v, "steps": [STEPS[name].describe() for name in preprocessing_steps(v)]} for v in views
            ],
            "channels": "each view's gray repeated to 3 channels, views one after the other (3 x views "
            "channels), NHWC float32 in [0, 1]; the lung fields are found once for all views",
        }
    return {
        "read": "grayscale; 8-bit images / 255; deeper images (16-bit, DICOM after modality and VOI LUT) "
        "min-max to [0, 1]; DICOM MONOCHROME1 inverted; alpha dropped (ccad.io.images.read_grayscale)",
        "preprocess": preprocess,
        "steps": [STEPS[name].describe() for name in preprocessing_steps(preprocess)],
        "work_side": WORK_SIDE,
        "resize": "Pillow bilinear (antialiased) to input_size x input_size, aspect ratio not kept",
        "channels": "gray repeated to 3 channels, NHWC float32 in [0, 1]",
        "in_model": "centering (paper presets) and the backbone's own input scaling are inside the model",
        "function": "ccad.preprocessing.pipeline.prepare_full",
    }
