"""From a grayscale X-ray to what the model sees: one definition for training, evaluation and prediction.

:func:`prepare_full` takes a (H, W) grayscale image in [0, 1] (:func:`ccad.io.images.read_grayscale`),
applies the ``preprocess`` steps and resizes it to ``size x size`` (antialiased bilinear, aspect ratio not
kept). :func:`to_model_input` repeats it to 3 channels; the model itself does the backbone's scaling.

The steps (``--preprocess``, joined with ``+``, e.g. ``lungs+equalize+lowpass``; ``none`` is the paper's
plain resize) are the table of :mod:`ccad.preprocessing.steps`, which also reads ``--preprocess`` values and
describes them for the model card. Whatever order they are given in, they run in the table's order: the region
steps, then the intensity steps (on the image at most :data:`WORK_SIDE` px), then the resize, then the
output steps.

A model may look at an X-ray in two (or more) ways at once: ``--preprocess`` values joined with ``|``, e.g.
``thorax+equalize+lowpass|lungs+equalize+lowpass`` (:func:`~ccad.preprocessing.steps.preprocessing_views`). The
lung fields are found once; each view's image is one channel of :attr:`Prepared.image` (``(size, size, views)``),
and :func:`to_model_input` gives each view its three channels. :func:`load_images` does it for many files, on
threads (:func:`ccad.io.images.decode_workers` of them).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ccad.data.datasets import Sample
from ccad.errors import ImageReadError
from ccad.io.images import decode_workers, read_grayscale, resize, resize_hw
from ccad.io.pictures import to_rgb
from ccad.models.lungs import estimate_lung_fields
from ccad.preprocessing.steps import STEPS, WORK_SIDE, Step, _Work, preprocessing_steps, preprocessing_views, view_count


@dataclass(frozen=True)
class Prepared:
    """A model input and where it came from: ``gray`` is the image at the working resolution (at most
    :data:`WORK_SIDE`), ``box`` the (top, bottom, left, right) crop of ``gray`` the model saw (the whole
    image without ``thorax``/``lungs``), ``fields`` the lung fields (None when not asked for)."""

    image: np.ndarray
    gray: np.ndarray
    box: tuple[int, int, int, int]
    fields: Any | None = None

    @property
    def picture(self) -> np.ndarray:
        """The (size, size) image to show a reader: the first view of a multi-view input."""
        return self.image if self.image.ndim == 2 else self.image[..., 0]

    @property
    def qc_flags(self) -> tuple[str, ...]:
        """The lung-QC flags of the fields (none when the fields were not computed)."""
        return tuple(getattr(self.fields, "qc_flags", ()))

    def to_input(self, region: np.ndarray) -> np.ndarray:
        """A boolean mask of ``gray`` (or of the image it was reduced from) carried through the same crop and
        resize as the image, so it lines up with the model input."""
        mask = region.astype(np.float32)
        if mask.shape != self.gray.shape:
            mask = resize_hw(mask, *self.gray.shape)
        top, bottom, left, right = self.box
        return resize(mask[top:bottom, left:right], self.image.shape[0]) >= 0.5

    def to_original(self, heat: np.ndarray) -> np.ndarray:
        """A (size, size) map on the model input, placed back onto ``gray`` (zero outside the crop)."""
        top, bottom, left, right = self.box
        out = np.zeros(self.gray.shape, np.float32)
        out[top:bottom, left:right] = resize_hw(heat.astype(np.float32), bottom - top, right - left)
        return out.clip(0.0, 1.0)


def prepare_full(gray: np.ndarray, size: int, preprocess: str = "none", lung_fields: bool = False) -> Prepared:
    """The model input for a (H, W) grayscale image, keeping the working image, the crop box and (with
    ``lung_fields``, or when a step needs them) the lung fields of the packaged segmenter. A multi-view
    ``preprocess`` gives a (size, size, views) image, the lung fields found once."""
    views = preprocessing_views(preprocess)
    steps_of = [[STEPS[name] for name in preprocessing_steps(view)] for view in views]
    full = gray
    any_steps = any(steps_of)
    if max(gray.shape) > WORK_SIDE and (any_steps or lung_fields):
        scale = WORK_SIDE / max(gray.shape)
        gray = resize_hw(gray, max(1, round(gray.shape[0] * scale)), max(1, round(gray.shape[1] * scale)))
    needs = lung_fields or any(s.needs_lungs for steps in steps_of for s in steps)
    fields = estimate_lung_fields(gray) if needs else None
    whole = (0, gray.shape[0], 0, gray.shape[1])
    if not any_steps:  # the paper's plain resize, from full resolution as in training
        return Prepared(resize(full, size), gray, whole, fields)
    made = [_apply_steps(steps, gray, fields, size) for steps in steps_of]
    if len(made) == 1:
        return Prepared(made[0].image, gray, made[0].box, fields)
    return Prepared(np.stack([w.image for w in made], axis=-1), gray, made[0].box, fields)


def _apply_steps(steps: Sequence[Step], gray: np.ndarray, fields, size: int) -> _Work:
    w = _Work(gray, fields, (0, gray.shape[0], 0, gray.shape[1]), gray)
    for step in steps:
        if step.stage != "output":
            step.apply(w, **step.params)
    if w.outside is not None:
        w.work = np.where(w.outside, 0.0, w.work).astype(np.float32)
    w.image = resize(w.work, size)
    for step in steps:
        if step.stage == "output":
            step.apply(w, **step.params)
    return w


def prepare(gray: np.ndarray, size: int, preprocess: str = "none") -> np.ndarray:
    """(size, size) float32 model input in [0, 1] from a (H, W) grayscale image, after ``preprocess``."""
    return prepare_full(gray, size, preprocess).image


def prepare_with_region(
    gray: np.ndarray, size: int, preprocess: str = "none", region: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`prepare`, plus a boolean ``region`` of ``gray``'s shape carried through the same crop and
    resize (so it lines up with the model input); ``None`` when no region is given."""
    prepared = prepare_full(gray, size, preprocess)
    return prepared.image, None if region is None else prepared.to_input(region)


def to_model_input(gray: np.ndarray, views: int = 1) -> np.ndarray:
    """Repeat a (..., H, W) grayscale array into (..., H, W, 3) channels; with ``views`` > 1, a
    (..., H, W, views) array into (..., H, W, 3 x views), each view's three channels together."""
    if views == 1:
        return to_rgb(gray)
    if gray.shape[-1] != views:
        raise ValueError(f"expected {views} views in the last axis, got shape {gray.shape}")
    return np.repeat(np.asarray(gray, np.float32), 3, axis=-1)


def load_grayscale_input(path: str | os.PathLike, size: int, preprocess: str = "none") -> np.ndarray:
    """(size, size) float32 in [0, 1]: the single-channel form stored for training."""
    return prepare(read_grayscale(path), size, preprocess)


def load_model_input(path: str | os.PathLike, size: int, preprocess: str = "none") -> np.ndarray:
    """The model's input for one file: (size, size, 3) float32 in [0, 1]."""
    return to_model_input(load_grayscale_input(path, size, preprocess), view_count(preprocess))


def load_images(
    samples: Sequence[Sample],
    size: int,
    skip_bad: bool = False,
    workers: int | None = None,
    preprocess: str = "none",
    transform=None,
) -> tuple[np.ndarray, list[Sample], list[tuple[str, str]]]:
    """Decode, ``preprocess`` and resize ``samples`` on several threads.

    ``transform``, if given, maps each full-resolution grayscale image before preprocessing.

    Returns (images (N, size, size) float32 in [0, 1], or (N, size, size, views) for a multi-view
    ``preprocess``, the samples kept, the files skipped with their
    error). Without ``skip_bad`` the first unreadable file raises :class:`ImageReadError`.
    """

    def load(sample: Sample) -> np.ndarray:
        gray = read_grayscale(sample.path)
        return prepare(gray if transform is None else transform(gray), size, preprocess)

    images, kept, bad = _load_each(load, samples, skip_bad, workers)
    views = view_count(preprocess)
    empty = np.zeros((0, size, size) if views == 1 else (0, size, size, views), np.float32)
    return (np.stack(images) if kept else empty), kept, bad


def _load_each(load, samples: Sequence[Sample], skip_bad: bool, workers: int | None):
    """(what ``load`` made of each readable sample, the samples kept, (path, error) of the others), on
    several threads; without ``skip_bad`` the first unreadable file raises."""

    def attempt(sample: Sample):
        try:
            return load(sample), None
        except ImageReadError as e:
            if not skip_bad:
                raise
            return None, str(e)

    with ThreadPoolExecutor(workers or decode_workers()) as pool:
        results = list(pool.map(attempt, samples))
    kept = [s for s, (made, _) in zip(samples, results) if made is not None]
    bad = [(str(s.path), error) for s, (made, error) in zip(samples, results) if made is None]
    return [made for made, _ in results if made is not None], kept, bad
