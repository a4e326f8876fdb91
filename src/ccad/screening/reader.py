"""What screening takes in, and the first two steps on it: decoding within the intake limits, then preparing.

A source is a file path, or an :class:`Upload`: an image's bytes from a client (an HTTP upload, a DICOM
object received), with its data set when the caller has parsed it already (the listener, a web upload whose
header was read for its limits): then it is not parsed again. :class:`Reader` is what a Ray decode task runs
without loading the model; :class:`~ccad.screening.screener.Screener` and
:class:`~ccad.screening.service.ScreeningService` read with it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from ccad.errors import ImageTooLargeError
from ccad.io.dicomfile import dicom_grayscale
from ccad.io.images import read_grayscale, read_grayscale_bytes
from ccad.preprocessing.pipeline import Prepared, prepare_full


@dataclass(frozen=True)
class Upload:
    """One image's bytes from a client: ``name`` is how its result is named, ``label`` how an error names it
    (``files[0]``: never the client's file name); ``dataset``: its DICOM data set, parsed and checked against
    the limits by the caller (:func:`ccad.io.dicomfile.parse_dicom`), so that it is decoded without a second
    parse."""

    name: str
    data: bytes
    label: str = "upload"
    dataset: Any = None


Source = Union[str, os.PathLike, Upload]


def source_name(source: Source) -> str:
    """How a source's result is named: an upload's name, a file's path."""
    return source.name if isinstance(source, Upload) else str(source)


@dataclass(frozen=True)
class Intake:
    """What an input may be before it is decoded: ``max_bytes`` per file and ``max_pixels`` per image (read
    from the header first; None: no limit). A DICOM image outside what ccad scores (a CT, a lateral view,
    :func:`ccad.io.dicom.not_scored_reason`) is refused with its reason unless ``score_anyway`` (research)."""

    max_bytes: int | None = None
    max_pixels: int | None = None
    score_anyway: bool = False
    #: Decode a JPEG 2000 image at a lower resolution level that keeps this many pixels a side (None: in full).
    #: Off by default: on 2,000 px films 512 decodes 4x faster but moves p(COVID) by up to 0.06 (mean 0.02),
    #: as a plain 2x downsampling does (BENCHMARKS.md, "DICOM decoding"): the aim was 0.01.
    decode_min_side: int | None = None


@dataclass(frozen=True)
class Reader:
    """The first two steps alone: an input -> the grayscale image within ``intake`` -> the model's ``size`` x
    ``size`` input after ``preprocess``."""

    size: int
    preprocess: str
    intake: Intake = Intake()

    def decode(self, source: Source) -> np.ndarray:
        """The (H, W) grayscale image in [0, 1] of a file path or an :class:`Upload`, within :attr:`intake`;
        raises :class:`ImageReadError` (:class:`ImageTooLargeError` past a limit)."""
        intake, admit = self.intake, not self.intake.score_anyway
        if isinstance(source, Upload) and source.dataset is not None:  # parsed and checked by the caller
            return dicom_grayscale(source.dataset, source.label, admit, intake.decode_min_side)
        limit = intake.max_bytes
        if isinstance(source, Upload):
            if limit is not None and len(source.data) > limit:
                raise ImageTooLargeError(f"{source.label}: over the upload limit of {limit / 2**20:g} MB")
            return read_grayscale_bytes(source.data, source.label, intake.max_pixels, admit, intake.decode_min_side)
        if limit is not None:
            try:
                size = Path(source).stat().st_size
            except OSError:
                size = 0  # read_grayscale says why it cannot be read
            if size > limit:
                raise ImageTooLargeError(f"{source}: over the file limit of {limit / 2**20:g} MB")
        return read_grayscale(source, intake.max_pixels, admit, intake.decode_min_side)

    def prepare(self, gray: np.ndarray) -> Prepared:
        """The model's input for a (H, W) grayscale image, with the lung fields (for QC and the outline)."""
        return prepare_full(gray, self.size, self.preprocess, lung_fields=True)

    def read(self, source: Source) -> Prepared:
        """:meth:`decode` then :meth:`prepare`: one full-size image in memory at a time."""
        return self.prepare(self.decode(source))
