"""DICOM as modalities send it: which transfer syntaxes ccad decodes and with what, the codestream's own
header checked before anything is decoded, and the one rule for what is scored.

Every path that takes DICOM uses this module: the listener negotiates exactly the syntaxes of
:func:`supported_syntaxes`, ``ccad predict``, ``serve`` and ``dicom pull`` decode with :func:`decoding_plugin`,
and all of them score only what :func:`not_scored_reason` lets through. ``docs/conformance.md`` is generated
from the same tables (``python -m ccad.deploy.pacs.conformance``).

The decoders are pydicom's pixel backends over well-kept libraries: OpenJPEG (pylibjpeg-openjpeg) for JPEG 2000
and HTJ2K, CharLS (pyjpegls) for JPEG-LS, GDCM (python-gdcm) for JPEG lossless, Pillow (libjpeg-turbo) for JPEG
baseline, pylibjpeg-rle for RLE. JPEG extended 12-bit needs pylibjpeg-libjpeg, which is GPLv3 and therefore
the optional ``jpeg12`` extra: without it that syntax is not negotiated, and a modality falls back to an
uncompressed one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ccad.errors import ImageReadError, ImageTooLargeError, NotScoredError  # noqa: F401  (NotScoredError: here too)


@dataclass(frozen=True)
class Syntax:
    """One transfer syntax: its UID, a short name for messages, and the pydicom decoding plugins that may
    decode it, best first (empty: its pixels are not compressed)."""

    uid: str
    name: str
    plugins: tuple[str, ...] = ()

    @property
    def compressed(self) -> bool:
        return bool(self.plugins)


#: The transfer syntaxes ccad accepts, in the order the listener proposes them.
SYNTAXES: tuple[Syntax, ...] = (
    Syntax("1.2.840.10008.1.2.1", "Explicit VR Little Endian"),
    Syntax("1.2.840.10008.1.2", "Implicit VR Little Endian"),
    Syntax("1.2.840.10008.1.2.1.99", "Deflated Explicit VR Little Endian"),
    Syntax("1.2.840.10008.1.2.2", "Explicit VR Big Endian"),
    Syntax("1.2.840.10008.1.2.5", "RLE Lossless", ("pylibjpeg", "pydicom")),
    Syntax("1.2.840.10008.1.2.4.50", "JPEG Baseline (8-bit)", ("pillow", "gdcm", "pylibjpeg")),
    # 12-bit samples: only libjpeg decodes them (GDCM's wheel and Pillow are 8-bit), hence pylibjpeg alone
    Syntax("1.2.840.10008.1.2.4.51", "JPEG Extended (12-bit)", ("pylibjpeg",)),
    Syntax("1.2.840.10008.1.2.4.57", "JPEG Lossless", ("gdcm", "pylibjpeg")),
    Syntax("1.2.840.10008.1.2.4.70", "JPEG Lossless SV1", ("gdcm", "pylibjpeg")),
    Syntax("1.2.840.10008.1.2.4.80", "JPEG-LS Lossless", ("pyjpegls", "gdcm", "pylibjpeg")),
    Syntax("1.2.840.10008.1.2.4.81", "JPEG-LS Near-Lossless", ("pyjpegls", "gdcm", "pylibjpeg")),
    Syntax("1.2.840.10008.1.2.4.90", "JPEG 2000 Lossless", ("pylibjpeg", "gdcm", "pillow")),
    Syntax("1.2.840.10008.1.2.4.91", "JPEG 2000", ("pylibjpeg", "gdcm", "pillow")),
    Syntax("1.2.840.10008.1.2.4.201", "HTJ2K Lossless", ("pylibjpeg",)),
    Syntax("1.2.840.10008.1.2.4.202", "HTJ2K Lossless RPCL", ("pylibjpeg",)),
    Syntax("1.2.840.10008.1.2.4.203", "HTJ2K", ("pylibjpeg",)),
)
BY_UID = {syntax.uid: syntax for syntax in SYNTAXES}
JPEG_FAMILY = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"}
JPEG_LS = {"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}
RLE = "1.2.840.10008.1.2.5"


def syntax_name(uid: str) -> str:
    """The short name of a transfer syntax (its UID when ccad does not know it)."""
    known = BY_UID.get(str(uid))
    return known.name if known else f"transfer syntax {uid}"


def decoding_plugin(uid: str) -> str | None:
    """The pydicom plugin that decodes ``uid`` here: the first of its :attr:`Syntax.plugins` that is
    installed, "" for uncompressed pixels, None when no installed decoder can (or ccad does not take it)."""
    syntax = BY_UID.get(str(uid))
    if syntax is None:
        return None
    if not syntax.compressed:
        return ""
    from pydicom.pixels.decoders.base import get_decoder

    try:
        available = set(get_decoder(syntax.uid).available_plugins)
    except NotImplementedError:
        return None
    return next((plugin for plugin in syntax.plugins if plugin in available), None)


def supported_syntaxes() -> list[str]:
    """The transfer syntaxes this installation decodes (the listener negotiates these and no others)."""
    return [syntax.uid for syntax in SYNTAXES if decoding_plugin(syntax.uid) is not None]


# -- the codestream's own header ------------------------------------------------------------------------


def first_frame(ds) -> bytes:
    """The first frame's compressed bytes (its fragments joined, at most 64 KiB of them: headers only)."""
    from pydicom.encaps import generate_fragments

    data = ds.PixelData
    # skip the Basic Offset Table item (tag, length, then its table)
    if len(data) < 8 or data[:4] != b"\xfe\xff\x00\xe0":
        raise ImageReadError("compressed pixel data without its item structure")
    start = 8 + int.from_bytes(data[4:8], "little")
    head = bytearray()
    for fragment in generate_fragments(data[start:]):
        head += fragment
        if len(head) >= 2**16:
            break
    return bytes(head)


def codestream_header(uid: str, frame: bytes) -> dict:
    """What a frame's codestream says it holds, from its own header (no pixels decoded): ``rows``,
    ``columns``, ``components`` and ``precision`` (JPEG SOF, JPEG-LS SOF55, JPEG 2000 SIZ), or ``segments``
    (RLE). Raises :class:`ImageReadError` when the header cannot be read."""
    if uid == RLE:
        if len(frame) < 64:
            raise ImageReadError("RLE data shorter than its 64-byte header")
        return {"segments": int.from_bytes(frame[:4], "little")}
    if uid in JPEG_FAMILY or uid in JPEG_LS:
        from pydicom.pixels.utils import _get_jpg_parameters

        info = _get_jpg_parameters(frame)
        if not info or "height" not in info:
            raise ImageReadError("JPEG data without a frame header")
        return {
            "rows": info["height"],
            "columns": info["width"],
            "components": info["components"],
            "precision": info["precision"],
        }
    import openjpeg

    try:
        info = openjpeg.get_parameters(frame)
    except Exception as e:  # OpenJPEG raises RuntimeError and others for a broken header
        raise ImageReadError("JPEG 2000 data without a readable header") from e
    return {
        "rows": info["rows"],
        "columns": info["columns"],
        "components": info["samples_per_pixel"],
        "precision": info["precision"],
    }


def check_codestream(ds, max_pixels: int) -> None:
    """Refuse compressed pixel data whose codestream says more than the data set's header (Rows, Columns,
    SamplesPerPixel, BitsAllocated), before any decoder allocates what the codestream says: larger, a
    :class:`ImageTooLargeError`; otherwise different, an :class:`ImageReadError`. Uncompressed data: nothing
    to check (pydicom reads exactly Rows x Columns)."""
    uid = str(ds.file_meta.get("TransferSyntaxUID", ""))
    syntax = BY_UID.get(uid)
    if syntax is None or not syntax.compressed:
        return
    rows, columns = int(ds.Rows), int(ds.Columns)
    samples, bits = int(ds.get("SamplesPerPixel", 1) or 1), int(ds.BitsAllocated)
    header = codestream_header(uid, first_frame(ds))
    if uid == RLE:
        if header["segments"] != samples * ((bits + 7) // 8):
            raise ImageReadError(
                f"RLE data with {header['segments']} segments, not the {samples * ((bits + 7) // 8)} its header says"
            )
        return
    size = header["rows"] * header["columns"] * header["components"]
    if size > rows * columns * samples or size > max_pixels * 4:
        raise ImageTooLargeError(
            f"compressed data larger than its header says ({header['columns']}x{header['rows']}x"
            f"{header['components']} in the codestream, {columns}x{rows}x{samples} in the header)"
        )
    if (header["rows"], header["columns"], header["components"]) != (rows, columns, samples):
        raise ImageReadError(
            f"compressed data does not match its header ({header['columns']}x{header['rows']} in the codestream, "
            f"{columns}x{rows} in the header)"
        )
    if header["precision"] > bits:
        raise ImageReadError(
            f"compressed data of {header['precision']} bits a sample, more than the {bits} its header allocates"
        )


# -- decoding what the model needs ---------------------------------------------------------------------

JPEG_2000 = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"}


def reduction(rows: int, columns: int, min_side: int) -> int:
    """How many wavelet levels a JPEG 2000 image of ``rows`` x ``columns`` may skip and keep at least
    ``min_side`` pixels on its shorter side (each level halves both sides)."""
    levels, side = 0, min(rows, columns)
    while side // 2 ** (levels + 1) >= min_side:
        levels += 1
    return levels


def decode_reduced(ds, min_side: int):
    """The first frame of a JPEG 2000 data set decoded at a lower resolution level (OpenJPEG through Pillow's
    ``reduce``), keeping at least ``min_side`` pixels a side; None when there is nothing to gain or it does
    not apply (another syntax, signed or multi-sample pixels, a codestream with fewer levels): the caller then
    decodes in full. The values are the wavelet's low-pass band, on the same scale as the full image's."""
    import io

    from PIL import Image

    uid = str(ds.file_meta.get("TransferSyntaxUID", ""))
    if uid not in JPEG_2000 or int(ds.get("PixelRepresentation", 0)) or int(ds.get("SamplesPerPixel", 1)) != 1:
        return None
    levels = reduction(int(ds.Rows), int(ds.Columns), min_side)
    if levels == 0 or int(ds.BitsAllocated) > 16:
        return None
    from pydicom.encaps import generate_frames

    frame = next(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1) or 1)))
    try:
        precision = int(codestream_header(uid, frame)["precision"])
        with Image.open(io.BytesIO(frame), formats=["JPEG2000"]) as image:
            image.reduce = levels
            image.load()
            if image.mode not in ("L", "I;16", "I;16L", "I;16B"):
                return None
            pixels = np.asarray(image)
    except (OSError, ValueError, SyntaxError, ImageReadError):  # one Pillow cannot reduce: decoded in full
        return None
    if pixels.dtype == np.uint16 and precision < 16:
        pixels = pixels >> (16 - precision)  # Pillow widens samples of fewer bits to 16: back to stored values
    return pixels


# -- what is scored -----------------------------------------------------------------------------------

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
DX_PROCESSING_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1.1"
SECONDARY_CAPTURE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
#: The storage SOP classes the listener accepts (a Secondary Capture is scored only when its Modality is CR/DX).
ACCEPTED_SOP_CLASSES = (CR_STORAGE, DX_PRESENTATION_STORAGE, SECONDARY_CAPTURE_STORAGE)
RADIOGRAPHS = ("CR", "DX")
LATERAL_VIEWS = {"LL", "RL", "LLD", "RLD", "LAT", "LATERAL", "LLO", "RLO"}
CHEST_PARTS = {"CHEST", "THORAX", "LUNG", "PORT CHEST", "CHEST_LAT", ""}
#: What marks a ccad result (its SR and capture series), never scored again.
RESULT_MANUFACTURER = "ccad"
RESULT_SERIES_NUMBERS = ("9901", "9902")


def not_scored_reason(ds) -> str | None:
    """Why ``ds`` is not scored, in words for the report, the row and the log (never a patient field), or
    None for what ccad scores: a CR or DX (by SOP class and Modality) for presentation, of the chest (by
    BodyPartExamined when present), frontal (by ViewPosition when present), with pixels. A Secondary
    Capture is scored only when its Modality says CR or DX."""
    if "PixelData" not in ds:
        return "no pixel data"
    if str(ds.get("Manufacturer", "")) == RESULT_MANUFACTURER and str(ds.get("SeriesNumber", "")) in (
        RESULT_SERIES_NUMBERS
    ):
        return "a ccad result, not an X-ray"
    sop_class = str(ds.get("SOPClassUID", "") or "").strip()
    modality = str(ds.get("Modality", "") or "").upper().strip()
    if sop_class == DX_PROCESSING_STORAGE or str(ds.get("PresentationIntentType", "")).upper() == "FOR PROCESSING":
        return "a DX image for processing, not for presentation"
    if sop_class not in ACCEPTED_SOP_CLASSES:
        return f"SOP class {_sop_class_name(sop_class)} is not CR, DX or Secondary Capture"
    if sop_class == SECONDARY_CAPTURE_STORAGE and modality not in RADIOGRAPHS:
        return f"a Secondary Capture of modality {modality or 'missing'}, not a radiograph (CR or DX)"
    if modality not in RADIOGRAPHS and not (modality == "" and sop_class in (CR_STORAGE, DX_PRESENTATION_STORAGE)):
        return f"modality {modality} is not a radiograph (CR or DX)"
    part = str(ds.get("BodyPartExamined", "") or "").upper().strip()
    if part not in CHEST_PARTS:
        return f"body part examined is {part[:16]}, not chest"
    view = str(ds.get("ViewPosition", "") or "").upper().strip()
    if view in LATERAL_VIEWS:
        return f"view position {view}: a lateral view (ccad scores frontal PA/AP views)"
    return None


def _sop_class_name(uid: str) -> str:
    """A SOP class by its name in the standard ("MR Image Storage"), or its UID when pydicom does not know it."""
    from pydicom.uid import UID

    if not uid:
        return "missing"
    name = UID(uid).name
    return name[:64] if name != uid and name.isprintable() else uid[:64]
