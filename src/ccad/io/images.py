"""Reading chest X-ray files: PNG (8/16 bit), JPEG, BMP, TIFF or DICOM -> float32 grayscale in [0, 1].

What the model sees is made from this by :mod:`ccad.preprocessing.pipeline`.

Pixel range: 8-bit images are divided by 255. Images with more than 8 bits
(16-bit PNG/TIFF, DICOM) are windowed to their own minimum..maximum after the
DICOM modality and VOI LUTs, because 12-bit data stored in 16 bits would
otherwise come out nearly black.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ccad.errors import ImageReadError

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


def resize_hw(gray: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize (H, W) float to (height, width) with bilinear interpolation (no clipping)."""
    image = Image.fromarray(gray.astype(np.float32), mode="F")
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)
