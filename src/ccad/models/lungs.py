"""The lung fields of a frontal chest X-ray, from the learned segmenter shipped in the package.

    >>> from ccad.models.lungs import estimate_lung_fields
    >>> fields = estimate_lung_fields(gray)          # doctest: +SKIP  (H, W) float in [0, 1]
    >>> fields.at(*gray.shape), fields.qc_flags       # doctest: +SKIP  boolean mask, ["one_lung", ...]

The segmenter (``ccad/models/lung-segmenter.onnx``, its card beside it) is a
U-Net on the MobileNetV2 encoder trained on human-drawn lung masks
(:mod:`ccad.training.lung_segmenter`; ``ccad lungs train`` rebuilds it). It runs on ONNX
Runtime alone: nothing here imports TensorFlow.

After the network, :func:`postprocess` keeps the largest region on each side of
the image and fills holes, and :func:`quality_flags` says when the result is
implausible for a frontal chest film:

``no_lungs``        less than 8% of the image is lung (a non-chest image, a lateral view, a blank);
``lung_area_large`` more than 70% of the image is lung;
``one_lung``        one side has no lung region, or under a quarter of the other side's area;
``off_centre``      the lungs' centre lies outside the middle 60% of the image;
``uncertain``       over a third of the lung area has probability between 0.2 and 0.8.

The limits are set from the training masks (lung fraction 0.09-0.62, median 0.37)
with room for other views; the flags travel with every prediction.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ccad.errors import ImageReadError, ModelError
from ccad.io.files import sha256, write_text
from ccad.io.images import read_grayscale, resize_hw
from ccad.io.inputs import iter_inputs
from ccad.io.onnx import cpu_session
from ccad.io.pictures import overlay as draw
from ccad.io.pictures import save_png

#: Where the shipped segmenter and its card live.
PACKAGED_MODEL_DIR = Path(__file__).parent
MODEL_FILE = "lung-segmenter.onnx"
CARD_FILE = "lung-segmenter.json"
#: Interior margin, as a fraction of the side: ``lungs`` preprocessing leaves the lung borders out.
INTERIOR_MARGIN = 0.02
MIN_REGION_FRACTION = 0.005
QC_MIN_AREA, QC_MAX_AREA, QC_SIDE_RATIO, QC_CENTRE, QC_UNCERTAIN = 0.08, 0.70, 0.25, (0.2, 0.8), 1 / 3
QC_FLAGS = ("no_lungs", "lung_area_large", "one_lung", "off_centre", "uncertain")


def equalize(x: np.ndarray) -> np.ndarray:
    """Histogram equalization to [0, 1] by rank (ties share a value): any monotone change of
    exposure or gamma gives the same output."""
    flat = x.ravel()
    values, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    if len(values) < 2:
        return np.zeros_like(x, dtype=np.float32)
    cdf = np.cumsum(counts).astype(np.float64)
    cdf = (cdf - cdf[0]) / (cdf[-1] - cdf[0])
    return cdf[inverse].reshape(x.shape).astype(np.float32)


def segmenter_input(gray: np.ndarray, size: int) -> np.ndarray:
    """(size, size) float32: the grayscale image resized (bilinear) and histogram-equalized."""
    return equalize(resize_hw(gray, size, size).clip(0.0, 1.0))


@dataclass(frozen=True)
class LungFields:
    """A boolean lung mask at the segmenter's size, its probability map and quality-control flags."""

    mask: np.ndarray
    probability: np.ndarray | None = None
    qc_flags: tuple[str, ...] = field(default_factory=tuple)
    method: str = "learned"

    def at(self, height: int, width: int) -> np.ndarray:
        """The mask at ``height x width`` (bilinear, threshold 0.5: smooth outlines)."""
        if self.mask.shape == (height, width):
            return self.mask.copy()
        return resize_hw(self.mask.astype(np.float32), height, width) >= 0.5

    def interior(self, height: int, width: int, margin: float = INTERIOR_MARGIN) -> np.ndarray:
        """The mask shrunk by ``margin`` of the side, at ``height x width``: the lungs without their
        borders with ribs, heart and diaphragm."""
        from scipy import ndimage  # deferred: scipy.ndimage costs ~90 ms to import

        radius = max(1, round(margin * self.mask.shape[0]))
        yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
        shrunk = ndimage.binary_erosion(self.mask, xx**2 + yy**2 <= radius**2)
        return LungFields(shrunk if shrunk.any() else self.mask).at(height, width)

    def box(self, height: int, width: int, margin: float = 0.08) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) of the lung fields in a ``height x width`` image, widened by ``margin``
        (the whole image when no lung was found)."""
        size_y, size_x = self.mask.shape
        rows, cols = np.flatnonzero(self.mask.any(axis=1)), np.flatnonzero(self.mask.any(axis=0))
        if not len(rows):
            return 0, height, 0, width
        top, bottom = rows[0] / size_y, (rows[-1] + 1) / size_y
        left, right = cols[0] / size_x, (cols[-1] + 1) / size_x
        dy, dx = margin * (bottom - top), margin * (right - left)
        top, bottom = max(0.0, top - dy), min(1.0, bottom + dy)
        left, right = max(0.0, left - dx), min(1.0, right + dx)
        return (
            int(top * height),
            max(int(top * height) + 1, int(round(bottom * height))),
            int(left * width),
            max(int(left * width) + 1, int(round(right * width))),
        )

    @property
    def area_fraction(self) -> float:
        return float(self.mask.mean())


def postprocess(probability: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Lung = ``probability >= threshold``; keep the largest region whose centre lies on each half of the
    image (regions under 0.5% of the image dropped) and fill holes.

    Areas and centres come from one ``bincount`` each, and holes are filled inside the kept region's bounding
    box only (a background pixel on that box's edge reaches the image's edge outside the box, so it is no
    hole): the same mask as labelling, measuring and filling on the whole image, in a third of the time."""
    from scipy import ndimage

    labels, n = ndimage.label(probability >= threshold)
    mask = np.zeros(probability.shape, bool)
    if n == 0:
        return mask
    flat = labels.ravel()
    areas = np.bincount(flat, minlength=n + 1)[1:]
    columns = np.bincount(flat, weights=np.tile(np.arange(labels.shape[1], dtype=np.float64), labels.shape[0]))
    centres_x = columns[1 : n + 1] / np.maximum(areas, 1)
    half = probability.shape[1] / 2
    boxes = ndimage.find_objects(labels)
    for on_side in (centres_x < half, centres_x >= half):
        candidates = np.flatnonzero(on_side & (areas >= MIN_REGION_FRACTION * probability.size))
        if len(candidates):
            label = candidates[np.argmax(areas[candidates])] + 1
            box = boxes[label - 1]
            mask[box] |= ndimage.binary_fill_holes(labels[box] == label)
    return mask


def quality_flags(mask: np.ndarray, probability: np.ndarray | None = None) -> tuple[str, ...]:
    """The QC flags (module docstring) of a post-processed mask."""
    from scipy import ndimage

    area = mask.mean()
    if area < QC_MIN_AREA:
        return ("no_lungs",)
    flags = []
    if area > QC_MAX_AREA:
        flags.append("lung_area_large")
    half = mask.shape[1] // 2
    left, right = mask[:, :half].sum(), mask[:, half:].sum()
    if min(left, right) < QC_SIDE_RATIO * max(left, right):
        flags.append("one_lung")
    cy, cx = ndimage.center_of_mass(mask)
    lo, hi = QC_CENTRE
    if not (lo <= cy / mask.shape[0] <= hi and lo <= cx / mask.shape[1] <= hi):
        flags.append("off_centre")
    if probability is not None:
        unsure = ((probability > 0.2) & (probability < 0.8)).sum()
        if unsure > QC_UNCERTAIN * max(1, mask.sum()):
            flags.append("uncertain")
    return tuple(flags)


class LungSegmenter:
    """The ONNX lung segmenter: ``segmenter(gray) -> LungFields`` for a (H, W) grayscale image in [0, 1].

    ``LungSegmenter.load(model_dir, threads)`` opens one: ``model_dir`` a folder with ``lung-segmenter.onnx``
    and ``lung-segmenter.json`` (default: the one shipped in the package), ``threads`` ONNX Runtime intra-op
    threads (1: callers decode images on several threads). The constructor stores what it is given.
    """

    def __init__(self, model_dir: Path, card: dict, session):
        self.model_dir, self.card, self.session = model_dir, card, session
        self.input_name = session.get_inputs()[0].name
        self.size = int(card["input_size"])
        self.threshold = float(card.get("threshold", 0.5))

    @classmethod
    def load(cls, model_dir: str | os.PathLike | None = None, threads: int = 1) -> "LungSegmenter":
        """Open the segmenter in ``model_dir`` (default: the one shipped), its card and its sha256 checked."""
        model_dir = Path(model_dir) if model_dir is not None else PACKAGED_MODEL_DIR
        card_path, model_path = model_dir / CARD_FILE, model_dir / MODEL_FILE
        if not card_path.is_file() or not model_path.is_file():
            raise ModelError(
                f"{model_dir}: no lung segmenter ({MODEL_FILE} and {CARD_FILE}); rebuild it with ccad lungs train"
            )
        card = json.loads(card_path.read_text())
        if not str(card.get("format", "")).startswith("ccad-lung-segmenter/"):
            raise ModelError(f"{card_path}: not a ccad lung-segmenter card")
        expected = card.get("sha256", {}).get(MODEL_FILE)
        if expected and sha256(model_path) != expected:
            raise ModelError(f"{model_path}: sha256 differs from its card; the file changed after training")
        return cls(model_dir, card, cpu_session(model_path, threads))

    def probabilities(self, grays: list[np.ndarray]) -> np.ndarray:
        """(N, S, S) lung probabilities for a list of (H, W) grayscale images."""
        batch = np.stack([segmenter_input(g, self.size) for g in grays])[..., None]
        return self.session.run(None, {self.input_name: batch})[0][..., 0]

    def __call__(self, gray: np.ndarray) -> LungFields:
        probability = self.probabilities([gray])[0]
        mask = postprocess(probability, self.threshold)
        return LungFields(mask, probability, quality_flags(mask, probability))


_default: LungSegmenter | None = None
_lock = threading.Lock()


def default_segmenter() -> LungSegmenter:
    """The packaged segmenter, loaded once per process."""
    global _default
    with _lock:
        if _default is None:
            _default = LungSegmenter.load()
        return _default


def estimate_lung_fields(gray: np.ndarray) -> LungFields:
    """The lung fields of a (H, W) grayscale X-ray in [0, 1], by the packaged segmenter."""
    return default_segmenter()(gray)


def blank(gray: np.ndarray, region: np.ndarray, value: float | None = None) -> np.ndarray:
    """A copy of ``gray`` with ``region`` (a boolean mask of the same shape) set to ``value`` (default: the image
    mean)."""
    out = gray.copy()
    out[region] = float(gray.mean()) if value is None else value
    return out


def segment_files(
    inputs, out: str | os.PathLike, overlay: bool = False, model_dir: str | os.PathLike | None = None, log=None
) -> dict:
    """``ccad lungs segment``: a mask PNG per input (``OUT/<stem>.png``, the input's size, 255 = lung, 0 =
    background), with ``overlay`` also ``OUT/<stem>.overlay.png``; ``OUT/lung_qc.csv`` lists each file's
    lung fraction and QC flags, or its error. Unreadable files are reported and skipped."""
    import csv
    import io

    segmenter = LungSegmenter.load(model_dir) if model_dir is not None else default_segmenter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["file", "mask", "lung_fraction", "qc_flags", "error"])
    counts = {"segmented": 0, "errors": 0, "flagged": 0}
    seen: set[str] = set()
    for path in iter_inputs(inputs):
        stem = path.stem if path.stem not in seen else f"{path.stem}-{len(seen)}"
        seen.add(stem)
        try:
            gray = read_grayscale(path)
        except ImageReadError as e:
            writer.writerow([str(path), "", "", "", str(e)])
            counts["errors"] += 1
            if log:
                log(f"skipped: {e}")
            continue
        fields = segmenter(gray)
        mask = fields.at(*gray.shape)
        save_png((mask * 255).astype(np.uint8), out / f"{stem}.png")
        if overlay:
            save_png(draw(gray, np.zeros_like(gray), outline=mask), out / f"{stem}.overlay.png")
        writer.writerow([str(path), f"{stem}.png", f"{mask.mean():.4f}", ";".join(fields.qc_flags), ""])
        counts["segmented"] += 1
        counts["flagged"] += bool(fields.qc_flags)
    write_text(out / "lung_qc.csv", buffer.getvalue())
    return counts
