"""The one check every decoded image passes, whatever decoded it (Pillow, pydicom's pixel backends, a Ray task):
:func:`validate_pixels`."""

from __future__ import annotations

import numpy as np

from ccad.errors import ImageReadError

#: Smallest side accepted: anything smaller is not a radiograph.
MIN_SIDE = 16


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
