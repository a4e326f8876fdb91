"""A DICOM file's bytes -> its grayscale pixels, in two steps with the limits in the first:

1. :func:`parse_dicom`: the checks a data set passes before pydicom parses it (a deflated one inflated with a
   bound, a walk over its elements' headers: :func:`check_data_set`), the one parse, then the pixel limit and
   the codestream's own header (:func:`ccad.io.dicom.check_codestream`): a checked :class:`pydicom.Dataset`;
2. :func:`dicom_grayscale`: a parsed data set's first frame through its transfer syntax's decoder and its
   modality and VOI LUTs, after (``admit``) the rule of what ccad scores.

A caller that has parsed a data set (the listener, a web upload whose header was read) hands it to step 2:
a data set is parsed once and each limit checked once. :func:`ccad.io.images.read_grayscale` runs both.
"""

from __future__ import annotations

import io
import struct

import numpy as np

from ccad.errors import ImageReadError, ImageTooLargeError, NotScoredError
from ccad.io.pixels import validate_pixels

DEFLATED = "1.2.840.10008.1.2.1.99"


def parse_dicom(data: bytes, name: str, max_pixels: int):
    """The data set of a DICOM file's bytes, parsed once after :func:`check_data_set`, then
    :func:`check_frame_size` and :func:`check_codestream_header`.

    Raises:
        ImageReadError: the file does not parse, or its compressed pixel data do not match its header.
        ImageTooLargeError: past a limit (before any decoder allocates).
    """
    check_data_set(data, name, max_pixels)
    ds = read_data_set(data, name)
    check_frame_size(ds, name, max_pixels)
    check_codestream_header(ds, name, max_pixels)
    return ds


def read_data_set(data: bytes, name: str):
    """pydicom's parse of a DICOM file's bytes (pixel data included, not decoded); every failure in words. What
    :func:`check_data_set` has passed, or a file ccad wrote itself (the listener's spool)."""
    import pydicom

    try:
        return pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as e:  # pydicom raises many types for truncated or odd files
        raise ImageReadError(f"{name}: not a readable DICOM file ({_parse_error(e)})") from e


def check_frame_size(ds, name: str, max_pixels: int) -> None:
    """A parsed data set's pixels within ``max_pixels`` (a frame; four times that for all its frames and
    samples), from its header: before any decoder allocates. Nothing to check without pixel data."""
    if "PixelData" not in ds:
        return
    try:
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        frames, samples = int(ds.get("NumberOfFrames", 1) or 1), int(ds.get("SamplesPerPixel", 1) or 1)
    except Exception as e:  # a value that does not fit its attribute
        raise ImageReadError(f"{name}: not a readable DICOM file ({_parse_error(e)})") from e
    if rows * cols > max_pixels or rows * cols * frames * samples > 4 * max_pixels:
        raise ImageTooLargeError(
            f"{name}: DICOM image is {cols}x{rows} pixels x {frames} frame(s) x {samples} "
            f"sample(s), over the limit of {max_pixels:,} pixels"
        )


def check_codestream_header(ds, name: str, max_pixels: int) -> None:
    """A parsed data set's compressed pixel data, whose codestream's own header must agree with the data set's
    and the limit (:func:`ccad.io.dicom.check_codestream`: a pixel bomb is :class:`ImageTooLargeError`, a
    mismatch or a fragment structure that cannot be walked :class:`ImageReadError`)."""
    from ccad.io import dicom

    if "PixelData" not in ds or "Rows" not in ds:
        return
    try:
        dicom.check_codestream(ds, max_pixels)
    except ImageReadError as e:
        raise type(e)(f"{name}: {e}") from None
    except Exception as e:  # a fragment structure that lies about its lengths
        raise ImageReadError(f"{name}: {dicom.syntax_name(_syntax(ds))} data whose structure cannot be read") from e


def dicom_grayscale(ds, name: str, admit: bool = False, min_side: int | None = None) -> np.ndarray:
    """The (H, W) float32 grayscale image in [0, 1] of a data set from :func:`parse_dicom` (or parsed by a
    caller that has checked it so): with ``admit``, one that ccad does not score
    (:func:`ccad.io.dicom.not_scored_reason`) raises :class:`NotScoredError`; ``min_side``: a JPEG 2000 image
    may be decoded at a lower resolution level (:func:`ccad.io.dicom.reduction`)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    from ccad.io import dicom

    if "PixelData" not in ds:
        raise (NotScoredError if admit else ImageReadError)(f"{name}: no pixel data")
    try:
        reason = dicom.not_scored_reason(ds) if admit else None
    except Exception as e:  # a value that does not fit its attribute
        raise ImageReadError(f"{name}: not a readable DICOM file ({_parse_error(e)})") from e
    if reason is not None:
        raise NotScoredError(f"{name}: not scored: {reason}")
    pixels = _decode_dicom(ds, name, min_side)
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
    (:func:`_inflate_bounded`); then a walk over its top-level elements' headers (no value converted, the
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
