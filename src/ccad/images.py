"""Reading chest X-ray files and turning them into model input.

One preprocessing definition serves training, evaluation and prediction:
:func:`load_model_input` reads a file (PNG 8/16 bit, JPEG, BMP, TIFF or DICOM),
makes it grayscale, resizes it to ``size x size`` and returns float32 pixels in
[0, 1] (the paper's ``rescale=1/255`` for 8-bit images), repeated to 3 channels.

Pixel range: 8-bit images are divided by 255. Images with more than 8 bits
(16-bit PNG/TIFF, DICOM) are windowed to their own minimum..maximum after the
DICOM modality and VOI LUTs, because 12-bit data stored in 16 bits would
otherwise come out nearly black.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ImageReadError

RASTER_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
DICOM_SUFFIXES = {".dcm", ".dicom"}
IMAGE_SUFFIXES = RASTER_SUFFIXES | DICOM_SUFFIXES

#: Largest image accepted, in pixels (a 10,000 x 10,000 scan). Bigger files are
#: refused before they are decoded whole (decompression bombs).
MAX_PIXELS = 100_000_000


class ImageTooLargeError(ImageReadError):
    """An image over the pixel limit, refused before it is decoded whole."""


def is_dicom(path: str | os.PathLike) -> bool:
    """True for a ``.dcm``/``.dicom`` name or a file with the DICOM preamble ``DICM``."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def read_grayscale(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file as a float32 grayscale array in [0, 1], shape (H, W).

    Raises:
        ImageReadError: the file is missing, not an image, corrupt or truncated.
        ImageTooLargeError: over ``max_pixels`` (default :data:`MAX_PIXELS`).
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    if is_dicom(path):
        return _read_dicom(path, str(path), max_pixels or MAX_PIXELS)
    return _read_raster(path, str(path), max_pixels or MAX_PIXELS)


def read_grayscale_bytes(data: bytes, name: str = "upload", max_pixels: int | None = None) -> np.ndarray:
    """:func:`read_grayscale` for an in-memory file (an upload); ``name`` is used in messages only."""
    if not data:
        raise ImageReadError(f"{name}: empty file")
    dicom = Path(name).suffix.lower() in DICOM_SUFFIXES or data[128:132] == b"DICM"
    reader = _read_dicom if dicom else _read_raster
    return reader(io.BytesIO(data), name, max_pixels or MAX_PIXELS)


def _read_raster(source, name: str, max_pixels: int) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                width, height = im.size
                if width * height > max_pixels:
                    raise ImageTooLargeError(
                        f"{name}: image is {width}x{height} pixels, over the limit of {max_pixels:,}"
                    )
                im.load()
                return _pil_to_gray(im)
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLargeError(f"{name}: image is over Pillow's decompression-bomb limit") from e
    except UnidentifiedImageError as e:
        raise ImageReadError(f"{name}: not a readable image ({type(e).__name__})") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"{name}: corrupt or truncated image ({e})") from e


def _pil_to_gray(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _window_to_unit(np.asarray(im, dtype=np.float32))
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA").convert("RGB")  # drop alpha
    return np.asarray(im.convert("L"), dtype=np.float32) / 255.0


def _window_to_unit(pixels: np.ndarray) -> np.ndarray:
    lo, hi = float(pixels.min()), float(pixels.max())
    if hi <= lo:
        return np.zeros(pixels.shape, dtype=np.float32)
    return ((pixels - lo) / (hi - lo)).astype(np.float32)


def _read_dicom(source, name: str, max_pixels: int) -> np.ndarray:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(source)
        rows, cols = int(ds.Rows), int(ds.Columns)
        if rows * cols > max_pixels:
            raise ImageTooLargeError(f"{name}: DICOM image is {cols}x{rows} pixels, over the limit of {max_pixels:,}")
        pixels = ds.pixel_array
    except ImageReadError:
        raise
    except Exception as e:  # pydicom raises many types for truncated or odd files
        raise ImageReadError(f"{name}: not a readable DICOM image ({type(e).__name__})") from e
    if pixels.ndim == 3 and getattr(ds, "SamplesPerPixel", 1) == 1:
        pixels = pixels[0]  # multi-frame: first frame
    if pixels.ndim == 3:  # colour DICOM (rare for CXR)
        pixels = pixels.mean(axis=-1)
    pixels = apply_modality_lut(pixels, ds)
    pixels = apply_voi_lut(pixels, ds)
    gray = _window_to_unit(np.asarray(pixels, dtype=np.float32))
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        gray = 1.0 - gray  # MONOCHROME1: high values are dark
    return gray


def resize(gray: np.ndarray, size: int) -> np.ndarray:
    """Resize (H, W) float [0, 1] to (size, size) with antialiased bilinear interpolation."""
    image = Image.fromarray(gray.astype(np.float32), mode="F")
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32).clip(0.0, 1.0)


#: Input normalization steps (``--preprocess``, joined with ``+``, e.g. ``thorax+equalize``), applied to
#: the full-resolution image in this order, before the final resize:
#:
#: ``thorax``    crop to the lung fields of the shipped segmenter plus an 8% margin (:mod:`ccad.lungs`),
#:               dropping borders, collimation, most burned-in text and markers;
#: ``lungs``     ``thorax``, with everything outside the lung fields (shrunk by 2% of the side,
#:               so their borders with ribs, heart and diaphragm are left out too) set to black;
#: ``clahe``     contrast-limited adaptive histogram equalization (scikit-image, clip limit 0.01);
#: ``equalize``  global histogram equalization (scikit-image): every image gets the same gray-level
#:               distribution, whatever the exposure and processing of its scanner;
#: ``lowpass``   down- then up-sampling by 2 at the input size: removes the fine texture (noise grain,
#:               JPEG blocks, sharpening) by which scanners differ, keeps opacities.
#:
#: ``none`` (the paper's way) is a plain resize.
PREPROCESSING_STEPS = ("thorax", "lungs", "clahe", "equalize", "lowpass")
#: Side at which the lung estimate and equalization work (larger images are first reduced to this).
WORK_SIDE = 512


def preprocessing_steps(preprocess: str) -> list[str]:
    """The steps of a ``--preprocess`` value, validated (``none`` -> [])."""
    from .errors import ConfigError

    if preprocess in ("", "none"):
        return []
    steps = [s.strip() for s in preprocess.split("+")]
    for step in steps:
        if step not in PREPROCESSING_STEPS:
            raise ConfigError(f"unknown preprocessing step {step!r} in {preprocess!r} "
                              f"(none, or steps joined with +: {', '.join(PREPROCESSING_STEPS)})")
    if "thorax" in steps and "lungs" in steps:
        raise ConfigError("--preprocess: use thorax or lungs, not both")
    return steps


def prepare(gray: np.ndarray, size: int, preprocess: str = "none") -> np.ndarray:
    """(size, size) float32 model input in [0, 1] from a (H, W) grayscale image, after ``preprocess``."""
    return prepare_with_region(gray, size, preprocess)[0]


@dataclass(frozen=True)
class Prepared:
    """A model input and where it came from: ``gray`` is the image at the working resolution (at most
    :data:`WORK_SIDE`), ``box`` the (top, bottom, left, right) crop of ``gray`` the model saw (the whole
    image without ``thorax``/``lungs``), ``fields`` the lung fields (None when not asked for)."""

    image: np.ndarray
    gray: np.ndarray
    box: tuple[int, int, int, int]
    fields: object | None = None

    def to_original(self, heat: np.ndarray) -> np.ndarray:
        """A (size, size) map on the model input, placed back onto ``gray`` (zero outside the crop)."""
        top, bottom, left, right = self.box
        out = np.zeros(self.gray.shape, np.float32)
        out[top:bottom, left:right] = _resize_hw(heat.astype(np.float32), bottom - top, right - left)
        return out.clip(0.0, 1.0)


def prepare_full(gray: np.ndarray, size: int, preprocess: str = "none", lung_fields: bool = False) -> Prepared:
    """:func:`prepare` keeping the working image, the crop box and (``lung_fields`` or when ``preprocess``
    needs them) the lung fields of the packaged segmenter."""
    steps = preprocessing_steps(preprocess)
    full = gray
    if max(gray.shape) > WORK_SIDE and (steps or lung_fields):
        scale = WORK_SIDE / max(gray.shape)
        gray = _resize_hw(gray, max(1, round(gray.shape[0] * scale)), max(1, round(gray.shape[1] * scale)))
    fields = None
    if lung_fields or "thorax" in steps or "lungs" in steps:
        from .lungs import estimate_lung_fields

        fields = estimate_lung_fields(gray)
    if not steps:  # the paper's plain resize, from full resolution as in training
        return Prepared(resize(full, size), gray, (0, gray.shape[0], 0, gray.shape[1]), fields)
    box, work, outside = (0, gray.shape[0], 0, gray.shape[1]), gray, None
    if "thorax" in steps or "lungs" in steps:
        box = fields.box(*gray.shape)
        if "lungs" in steps:
            outside = ~fields.interior(*gray.shape)[box[0]:box[1], box[2]:box[3]]
        work = gray[box[0]:box[1], box[2]:box[3]]
    if "clahe" in steps or "equalize" in steps:
        import skimage.exposure

        if "clahe" in steps:
            work = skimage.exposure.equalize_adapthist(work, clip_limit=0.01).astype(np.float32)
        if "equalize" in steps and (outside is None or not outside.all()):  # no lungs found: nothing to equalize
            work = skimage.exposure.equalize_hist(work, mask=None if outside is None else ~outside).astype(np.float32)
    if outside is not None:
        work = np.where(outside, 0.0, work).astype(np.float32)
    out = resize(work, size)
    if "lowpass" in steps:
        out = resize(resize(out, max(8, size // 2)), size)
    return Prepared(out, gray, box, fields)


def prepare_with_region(gray: np.ndarray, size: int, preprocess: str = "none", region: np.ndarray | None = None
                        ) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`prepare`, plus a boolean ``region`` of ``gray``'s shape carried through the same crop and
    resize (so it lines up with the model input); ``None`` when no region is given."""
    prepared = prepare_full(gray, size, preprocess)
    if region is None:
        return prepared.image, None
    shape = prepared.gray.shape
    mask = region.astype(np.float32)
    if mask.shape != shape:
        mask = _resize_hw(mask, *shape)
    top, bottom, left, right = prepared.box
    return prepared.image, resize(mask[top:bottom, left:right], size) >= 0.5


def _resize_hw(gray: np.ndarray, height: int, width: int) -> np.ndarray:
    image = Image.fromarray(gray.astype(np.float32), mode="F")
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


def load_grayscale_input(path: str | os.PathLike, size: int, preprocess: str = "none") -> np.ndarray:
    """(size, size) float32 in [0, 1]: the single-channel form stored for training."""
    return prepare(read_grayscale(path), size, preprocess)


def to_model_input(gray: np.ndarray) -> np.ndarray:
    """Repeat a (..., H, W) grayscale array into (..., H, W, 3) channels."""
    return np.repeat(gray[..., None], 3, axis=-1)


def load_model_input(path: str | os.PathLike, size: int, preprocess: str = "none") -> np.ndarray:
    """The model's input for one file: (size, size, 3) float32 in [0, 1]."""
    return to_model_input(load_grayscale_input(path, size, preprocess))
