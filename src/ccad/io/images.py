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
#: Smallest side accepted: anything smaller is not a radiograph.
MIN_SIDE = 16
DEFLATED = "1.2.840.10008.1.2.1.99"

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
        return _read_dicom(source, name, max_pixels, admit, min_side)
    return _read_raster(source, name, max_pixels)


def image_size(data: bytes, name: str = "upload", max_pixels: int | None = None) -> tuple[int, int]:
    """(width, height) from a file's header, without decoding its pixels (0, 0 when it cannot be told).
    A deflated DICOM is checked with the bounded inflater first (:class:`ImageTooLargeError`)."""
    dicom = sniff(data[:132], name) == "DICOM"
    if dicom:
        check_data_set(data, name, max_pixels or MAX_PIXELS)
        _check_dicom_codestream(data, name, max_pixels or MAX_PIXELS)
    try:
        if dicom:
            import pydicom

            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=["Rows", "Columns"])
            return int(ds.Columns), int(ds.Rows)
        with Image.open(io.BytesIO(data), formats=RASTER_FORMATS) as im:
            return im.size
    except Exception:  # a file that cannot say is decoded (and refused) by read_grayscale_bytes
        return 0, 0


def _check_dicom_codestream(data: bytes, name: str, max_pixels: int) -> None:
    """:func:`ccad.io.dicom.check_codestream` on a DICOM file's bytes (a file that does not parse is left to
    the decoding step, which says why)."""
    import pydicom

    from ccad.io.dicom import check_codestream

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        if "PixelData" not in ds or "Rows" not in ds:
            return
        check_codestream(ds, max_pixels)
    except ImageReadError as e:
        raise type(e)(f"{name}: {e}") from None
    except Exception:  # not parseable: read_grayscale_bytes refuses it with the reason
        return


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


def validate_pixels(decoded, name: str) -> np.ndarray:
    """The one check every decoded image passes (files, uploads, Ray, DICOM): a 2-D array (multi-frame: the
    first frame; colour: the mean of the channels), at least :data:`MIN_SIDE` px a side, finite, not blank
    (every pixel equal); deeper-than-8-bit data windowed to its own range. Returns float32 in [0, 1]."""
    pixels, deep = decoded if isinstance(decoded, tuple) else (decoded, True)
    pixels = np.asarray(pixels)
    if pixels.ndim == 4:  # frames, rows, columns, samples
        pixels = pixels[0]
    if pixels.ndim == 3:
        pixels = pixels[..., :3].mean(axis=-1) if pixels.shape[-1] in (3, 4) else pixels[0]
    if pixels.ndim != 2:
        raise ImageReadError(f"{name}: not a 2-D image (array of shape {pixels.shape})")
    if min(pixels.shape) < MIN_SIDE:
        raise ImageReadError(f"{name}: image is {pixels.shape[1]}x{pixels.shape[0]} pixels; too small for an X-ray")
    if deep and pixels.dtype.kind in "biu":
        # the range from the integers (half the memory to read), rounded as the pixels will be
        lo, hi = float(np.float32(pixels.min())), float(np.float32(pixels.max()))
        pixels = pixels.astype(np.float32)
    else:
        if deep:
            pixels = np.array(pixels, dtype=np.float32, copy=not (pixels.dtype == np.float32 and pixels.flags.owndata))
            if not np.isfinite(pixels).all():  # also a value past float32's range, as a huge rescale slope makes
                raise ImageReadError(f"{name}: the image has non-finite pixel values (NaN or infinity)")
        lo, hi = float(pixels.min()), float(pixels.max())
    if hi <= lo:
        raise ImageReadError(f"{name}: blank image (every pixel is {lo:g}): not an X-ray")
    if deep:
        pixels -= lo
        pixels /= hi - lo
    return np.asarray(pixels, dtype=np.float32)


def _read_dicom(source, name: str, max_pixels: int, admit: bool = False, min_side: int | None = None) -> np.ndarray:
    """A DICOM image through the checks of :mod:`ccad.io.dicom` (size, the codestream's own header, what is
    scored) and then pydicom's pixel backend for its transfer syntax; every failure in words."""
    data = _all_bytes(source, name)
    check_data_set(data, name, max_pixels)
    ds = _admitted_dicom(data, name, max_pixels, admit)
    pixels = _decode_dicom(ds, name, min_side)
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        with np.errstate(over="ignore", invalid="ignore"):
            pixels = apply_modality_lut(pixels, ds)
            if _valid_window(ds):
                pixels = apply_voi_lut(pixels, ds)
    except Exception as e:
        raise ImageReadError(f"{name}: its modality or VOI LUT (the pixel value mapping) cannot be applied") from e
    with np.errstate(over="ignore", invalid="ignore"):  # past float32's range becomes inf, refused as such
        gray = validate_pixels((np.asarray(pixels), True), name)
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        gray = 1.0 - gray  # MONOCHROME1: high values are dark
    return gray


def _admitted_dicom(data: bytes, name: str, max_pixels: int, admit: bool):
    """The parsed data set, when its pixels are within the limits, its codestream agrees with its header and
    (``admit``) ccad scores what it is."""
    import pydicom

    from ccad.io import dicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        frames, samples = int(ds.get("NumberOfFrames", 1) or 1), int(ds.get("SamplesPerPixel", 1) or 1)
        reason = dicom.not_scored_reason(ds) if admit else None
    except Exception as e:  # pydicom raises many types for truncated or odd files
        raise ImageReadError(f"{name}: not a readable DICOM file ({_parse_error(e)})") from e
    if "PixelData" not in ds:
        raise (NotScoredError if admit else ImageReadError)(f"{name}: no pixel data")
    if rows * cols > max_pixels or rows * cols * frames * samples > 4 * max_pixels:
        raise ImageTooLargeError(
            f"{name}: DICOM image is {cols}x{rows} pixels x {frames} frame(s) x {samples} "
            f"sample(s), over the limit of {max_pixels:,} pixels"
        )
    try:
        dicom.check_codestream(ds, max_pixels)
    except ImageReadError as e:
        raise type(e)(f"{name}: {e}") from None
    except Exception as e:  # a fragment structure that lies about its lengths
        raise ImageReadError(f"{name}: {dicom.syntax_name(_syntax(ds))} data whose structure cannot be read") from e
    if reason is not None:
        raise NotScoredError(f"{name}: not scored: {reason}")
    return ds


def _syntax(ds) -> str:
    return str(ds.file_meta.get("TransferSyntaxUID", "") or "1.2.840.10008.1.2")


def _decode_dicom(ds, name: str, min_side: int | None) -> np.ndarray:
    """The first frame's stored values, by the plugin :func:`ccad.io.dicom.decoding_plugin` names (or, with
    ``min_side``, a JPEG 2000 image's lower resolution level)."""
    from ccad.io import dicom

    syntax = _syntax(ds)
    plugin = dicom.decoding_plugin(syntax)
    if plugin is None:
        raise ImageReadError(f"{name}: {dicom.syntax_name(syntax)} data cannot be decoded here (no decoder)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    try:
        pixels = dicom.decode_reduced(ds, min_side) if min_side else None
        if pixels is None:
            ds.pixel_array_options(index=0 if frames > 1 else None, decoding_plugin=plugin)
            pixels = ds.pixel_array
    except PermissionError as e:
        raise ImageReadError(f"{name}: permission denied") from e
    except Exception as e:  # the decoders raise RuntimeError, ValueError and others for broken data
        if plugin == "" and "less than expected" in str(e):
            raise ImageReadError(f"{name}: its pixel data is shorter than its header says") from e
        raise ImageReadError(f"{name}: {dicom.syntax_name(syntax)} data could not be decoded") from e
    if pixels.ndim >= 3 and int(ds.get("SamplesPerPixel", 1) or 1) == 1 and frames > 1:
        pixels = pixels[0]  # multi-frame: the first frame
    return pixels


def _all_bytes(source, name: str) -> bytes:
    try:
        return source.read_bytes() if isinstance(source, Path) else source.getvalue()
    except OSError as e:
        raise ImageReadError(f"{name}: cannot be read ({e.strerror})") from None


def _parse_error(error: Exception) -> str:
    """A parse failure in words (pydicom raises many types for truncated or odd files)."""
    if isinstance(error, (EOFError, struct.error)) or "end of file" in str(error).lower():
        return "truncated"
    if isinstance(error, AttributeError):
        return "an attribute the image needs is missing"
    if isinstance(error, (ValueError, TypeError, KeyError)):
        return "a value that does not fit its attribute"
    return "malformed"


def _valid_window(ds) -> bool:
    """False for a VOI window whose width is not positive (it would divide by zero); such a window is
    ignored, and the image is windowed to its own range as any other."""
    from pydicom.multival import MultiValue

    width = ds.get("WindowWidth")
    if width is None:
        return True
    try:
        return all(float(w) > 0 for w in (width if isinstance(width, MultiValue) else [width]))
    except (TypeError, ValueError):
        return False


#: The most a DICOM file meta group may take (with the 132-byte preamble); real ones take a few hundred bytes.
META_LIMIT = 64 * 2**10


def file_meta(data: bytes, name: str) -> tuple[str, int]:
    """(transfer syntax UID, where the data set starts) of a DICOM file, read by pydicom's own file meta
    reader on at most :data:`META_LIMIT` bytes: no byte offsets assumed, no group length trusted."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    prefix = io.BytesIO(data[:META_LIMIT])
    try:
        read_preamble(prefix, False)
        meta = _read_file_meta_info(prefix)
    except Exception as e:  # pydicom raises many types for a broken meta group
        raise ImageReadError(f"{name}: not a readable DICOM file meta group ({type(e).__name__})") from e
    start = prefix.tell()
    if start >= META_LIMIT:
        raise ImageReadError(f"{name}: its DICOM file meta group is over {META_LIMIT // 1024} KB")
    return str(meta.get("TransferSyntaxUID", "") or ""), start


def check_inflated_size(data: bytes, name: str, max_pixels: int) -> None:
    """A deflated DICOM data set is inflated here with a bound before pydicom inflates it whole: one that would
    exceed two bytes a pixel of the limit, plus 1 MiB of header, is refused (a decompression bomb)."""
    if data[128:132] != b"DICM":
        return
    syntax, start = file_meta(data, name)
    if syntax == DEFLATED:
        _inflate_bounded(data[start:], name, 2 * max_pixels + 2**20)


def _inflate_bounded(stream: bytes, name: str, budget: int, keep: int = 0) -> tuple[int, bytes]:
    """(the inflated size, its first ``keep`` bytes) of a raw deflate stream, inflated 1 MiB at a time and
    abandoned past ``budget`` (:class:`ImageTooLargeError`): nothing more than ``keep`` bytes is held."""
    import zlib

    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    tail, total, head = stream, 0, []
    try:
        while True:
            out = inflater.decompress(tail, 2**20)
            tail = inflater.unconsumed_tail
            if total < keep:
                head.append(out[: keep - total])
            total += len(out)
            # the stream's end (bytes after it stay in unconsumed_tail for ever: the old test of "nothing
            # out and nothing left" spun on a stream followed by padding), the budget, or no progress
            if total > budget or inflater.eof or not out:
                break
    except zlib.error as e:
        raise ImageReadError(f"{name}: not a readable DICOM image (bad deflate stream)") from e
    if total > budget:
        raise ImageTooLargeError(
            f"{name}: the deflated DICOM data set inflates past {budget:,} bytes (a decompression bomb?)"
        )
    return total, b"".join(head)


#: The most top-level elements a data set may have (real ones have hundreds: a sequence counts as one).
MAX_ELEMENTS = 100_000
#: The most bytes a data set may hold outside its pixel data: its header, its sequences, trailing padding, a
#: signature (real ones: kilobytes to a few MB).
MAX_OTHER_BYTES = 8 * 2**20
#: How much of a deflated data set the element walk inflates and keeps: its header (the pixel data, skipped by
#: its length, need not be there).
HEADER_WINDOW = 16 * 2**20
PIXEL_DATA = 0x7FE00010


def check_data_set(data: bytes, name: str, max_pixels: int) -> None:
    """The checks a DICOM file passes before pydicom parses it whole: a deflated one inflates within its budget
    (:func:`check_inflated_size`); then a walk over its top-level elements' headers (no value converted, the
    pixel data skipped by its length) refuses more than :data:`MAX_ELEMENTS` of them, or more than
    :data:`MAX_OTHER_BYTES` outside the pixel data, sequences and trailing padding included: 190 MB of zeros
    read as 31 million empty elements took pydicom two minutes, holding the only scoring worker. A deflated
    data set is walked on its first :data:`HEADER_WINDOW` bytes, never inflated whole here; one without the
    preamble is walked from its first byte."""
    from pydicom.filereader import data_element_generator

    if data[128:132] == b"DICM":
        syntax, start = file_meta(data, name)
    else:  # no preamble: the data set from byte 0, explicit VR when a VR follows the first tag (as pydicom guesses)
        syntax, start = (
            ("1.2.840.10008.1.2.1" if data[4:6].isalpha() and data[4:6].isupper() else "1.2.840.10008.1.2"),
            0,
        )
    if syntax == DEFLATED:
        total, body = _inflate_bounded(data[start:], name, 2 * max_pixels + 2**20, keep=HEADER_WINDOW)
        fp, origin = io.BytesIO(body), 0
    else:
        total, fp, origin = len(data), io.BytesIO(data), start
    fp.seek(origin)
    implicit, little = syntax == "1.2.840.10008.1.2", syntax != "1.2.840.10008.1.2.2"
    other, before = total - origin, origin  # without pixel data, everything is "other"
    try:
        for count, element in enumerate(data_element_generator(fp, implicit, little, defer_size=1024), 1):
            if count > MAX_ELEMENTS:
                raise ImageTooLargeError(
                    f"{name}: a data set of more than {MAX_ELEMENTS:,} elements: refused before parsing"
                )
            if element.tag == PIXEL_DATA:  # skipped by its length: the position is right, past the window too
                other = (before - origin) + (total - fp.tell())
                break
            before = fp.tell()
    except ImageReadError:
        raise
    except Exception:  # a structure the walk cannot follow: pydicom's own parse fails on it as fast
        return
    if other > MAX_OTHER_BYTES:
        raise ImageTooLargeError(
            f"{name}: {other / 2**20:.1f} MB outside its pixel data (at most {MAX_OTHER_BYTES // 2**20} MB): "
            "refused before parsing"
        )


def resize(gray: np.ndarray, size: int) -> np.ndarray:
    """Resize (H, W) float [0, 1] to (size, size) with antialiased bilinear interpolation."""
    image = Image.fromarray(gray.astype(np.float32, copy=False), mode="F")
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32).clip(0.0, 1.0)


def resize_hw(gray: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize (H, W) float to (height, width) with bilinear interpolation (no clipping)."""
    image = Image.fromarray(gray.astype(np.float32, copy=False), mode="F")
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)
