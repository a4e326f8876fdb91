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
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ccad.errors import ImageReadError, ImageTooLargeError, NotScoredError
from ccad.io.pixels import validate_pixels

RASTER_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
DICOM_SUFFIXES = {".dcm", ".dicom"}
IMAGE_SUFFIXES = RASTER_SUFFIXES | DICOM_SUFFIXES
#: The raster formats Pillow may decode; every other Pillow plugin (EPS and its Ghostscript, PSD, ...) is
#: never tried. DICOM is read by pydicom.
RASTER_FORMATS = ("PNG", "JPEG", "TIFF", "BMP")
#: File signatures of the allowed formats (DICOM: ``DICM`` after the 128-byte preamble).
SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"BM": "BMP",
}
ALLOWED = "PNG, JPEG, TIFF, BMP or DICOM"

#: Largest image accepted, in pixels (a 10,000 x 10,000 scan). Bigger files are
#: refused before they are decoded whole (decompression bombs).
MAX_PIXELS = 100_000_000
__all__ = ["ImageReadError", "ImageTooLargeError", "NotScoredError", "read_grayscale", "read_grayscale_bytes"]


def is_dicom(path: str | os.PathLike) -> bool:
    """True for a ``.dcm``/``.dicom`` name or a file with the DICOM preamble ``DICM``."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except (OSError, ValueError):
        return False


def sniff(head: bytes, name: str = "") -> str | None:
    """The allowed format a file's first bytes (at least 132) say it is: PNG, JPEG, TIFF, BMP, DICOM, or None.
    A file named ``.dcm``/``.dicom`` without the preamble counts as DICOM (pydicom decides)."""
    if head[128:132] == b"DICM" or Path(name).suffix.lower() in DICOM_SUFFIXES:
        return "DICOM"
    return next((fmt for magic, fmt in SIGNATURES.items() if head.startswith(magic)), None)


def check_readable(path: str | os.PathLike) -> Path:
    """``path`` if it is a regular file this process may read; otherwise an :class:`ImageReadError` that says
    what it is (missing, a folder, a FIFO or device, a symlink loop, permission denied, a NUL in the name)."""
    import stat

    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except ValueError:
        raise ImageReadError(f"{path!r}: the path contains a NUL byte") from None
    except OSError as e:
        raise ImageReadError(f"{path}: cannot be opened ({e.strerror})") from None
    if stat.S_ISDIR(mode):
        if not os.access(path, os.R_OK | os.X_OK):
            raise ImageReadError(f"{path}: a folder that cannot be listed (permission denied)")
        raise ImageReadError(f"{path}: is a folder, not an image file")
    if not stat.S_ISREG(mode):
        raise ImageReadError(f"{path}: not a regular file (a FIFO, socket or device)")
    if not os.access(path, os.R_OK):
        raise ImageReadError(f"{path}: permission denied")
    return path


def read_grayscale(
    path: str | os.PathLike, max_pixels: int | None = None, admit: bool = False, min_side: int | None = None
) -> np.ndarray:
    """Read an image file as a float32 grayscale array in [0, 1], shape (H, W). With ``admit`` (what
    screening passes; training and audits read their data as it is), a DICOM image outside what ccad scores
    (:func:`ccad.io.dicom.not_scored_reason`) raises :class:`NotScoredError`. With ``min_side``, a JPEG 2000
    DICOM image may be decoded at a lower resolution level of its own wavelet pyramid that keeps at least
    ``min_side`` pixels a side (:func:`ccad.io.dicom.reduction`): what a 224 px model needs, faster.

    Raises:
        ImageReadError: the file is missing, unreadable, not an allowed image, corrupt, truncated, blank,
            or has non-finite pixels.
        ImageTooLargeError: over ``max_pixels`` (default :data:`MAX_PIXELS`), or a DICOM data set that would
            inflate past its budget.
    """
    path = check_readable(path)
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError as e:
        raise ImageReadError(f"{path}: cannot be read ({e.strerror})") from None
    return _read(head, path, str(path), max_pixels or MAX_PIXELS, admit, min_side)


def read_grayscale_bytes(
    data: bytes, name: str = "upload", max_pixels: int | None = None, admit: bool = False, min_side: int | None = None
) -> np.ndarray:
    """:func:`read_grayscale` for an in-memory file (an upload); ``name`` is used in messages only."""
    if not data:
        raise ImageReadError(f"{name}: empty file")
    return _read(data[:132], io.BytesIO(data), name, max_pixels or MAX_PIXELS, admit, min_side)


def _read(
    head: bytes, source, name: str, max_pixels: int, admit: bool = False, min_side: int | None = None
) -> np.ndarray:
    kind = sniff(head, name)
    if kind is None:
        raise ImageReadError(f"{name}: not a readable image (allowed: {ALLOWED})")
    if kind == "DICOM":
        from ccad.io.dicomfile import dicom_grayscale, parse_dicom

        return dicom_grayscale(parse_dicom(_all_bytes(source, name), name, max_pixels), name, admit, min_side)
    return _read_raster(source, name, max_pixels)


def image_header(data: bytes, name: str = "upload", max_pixels: int | None = None):
    """(width, height, data set) of a file's bytes before its pixels are decoded: a DICOM file parsed and
    checked once (:func:`ccad.io.dicomfile.parse_dicom`; the data set is handed on to be decoded), a raster
    image's size from its header (data set None; (0, 0) when it cannot be told: decoding says why).

    Raises:
        ImageTooLargeError: a DICOM data set past a limit.
        ImageReadError: a DICOM file that does not parse.
    """
    if sniff(data[:132], name) == "DICOM":
        from ccad.io.dicomfile import parse_dicom

        ds = parse_dicom(data, name, max_pixels or MAX_PIXELS)
        try:  # parse_dicom checked them only with pixel data to size
            return int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0), ds
        except Exception as e:  # pydicom raises many types: a value of the wrong length, several values
            raise ImageReadError(f"{name}: not a readable DICOM file (its Rows or Columns is not one number)") from e
    try:
        with Image.open(io.BytesIO(data), formats=RASTER_FORMATS) as im:
            return *im.size, None
    except Exception:  # a file that cannot say is decoded (and refused) by read_grayscale_bytes
        return 0, 0, None


def _all_bytes(source, name: str) -> bytes:
    try:
        return source.read_bytes() if isinstance(source, Path) else source.getvalue()
    except OSError as e:
        raise ImageReadError(f"{name}: cannot be read ({e.strerror})") from None


def _read_raster(source, name: str, max_pixels: int) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source, formats=RASTER_FORMATS) as im:
                width, height = im.size
                if width * height > max_pixels:
                    raise ImageTooLargeError(
                        f"{name}: image is {width}x{height} pixels, over the limit of {max_pixels:,}"
                    )
                im.load()
                return validate_pixels(_pil_to_array(im), name)
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLargeError(f"{name}: image is over Pillow's decompression-bomb limit") from e
    except UnidentifiedImageError as e:
        raise ImageReadError(f"{name}: not a readable image (allowed: {ALLOWED})") from e
    except PermissionError as e:
        raise ImageReadError(f"{name}: permission denied") from e
    except (OSError, SyntaxError, ValueError, TypeError, IndexError, KeyError, struct.error, EOFError) as e:
        raise ImageReadError(f"{name}: corrupt or truncated image ({type(e).__name__})") from e


def _pil_to_array(im: Image.Image) -> tuple[np.ndarray, bool]:
    """(pixels, deep): 8-bit images as float32 / 255; deeper ones (16-bit, 32-bit integer or float) as Pillow
    gives them, converted and windowed by :func:`validate_pixels`."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return np.asarray(im), True  # integer pixels stay integers until validate_pixels windows them
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA").convert("RGB")  # drop alpha
    pixels = np.array(im.convert("L") if im.mode != "L" else im, dtype=np.float32)
    pixels /= 255.0
    return pixels, False


def resize(gray: np.ndarray, size: int) -> np.ndarray:
    """Resize (H, W) float [0, 1] to (size, size) with antialiased bilinear interpolation."""
    image = Image.fromarray(gray.astype(np.float32, copy=False), mode="F")
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32).clip(0.0, 1.0)


def resize_hw(gray: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize (H, W) float to (height, width) with bilinear interpolation (no clipping)."""
    image = Image.fromarray(gray.astype(np.float32, copy=False), mode="F")
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


def decode_workers() -> int:
    """Threads that decode and prepare images: one per core this process may use, at least two.

    One per core, not more: on 2 cores, 2 threads screened 70-71 images/s against 67-70 with 4 (three
    alternating runs; BENCHMARKS.md, "Near the hardware's limit"), the extra threads only taking turns for the
    GIL with the scoring thread."""
    return max(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2)
