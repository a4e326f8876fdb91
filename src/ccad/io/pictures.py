"""Pictures for people: heatmap overlays, lung outlines, PNG bytes, and matplotlib figures saved atomically."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np

from ccad.io.files import atomic_path

#: Colour of the lung outline on the web page (cyan); overlays written to files draw it in white.
OUTLINE_RGB = (0, 229, 255)


def to_rgb(gray: np.ndarray) -> np.ndarray:
    """A (..., H, W) grayscale array repeated into (..., H, W, 3) channels."""
    return np.repeat(gray[..., None], 3, axis=-1)


def outline_edge(mask: np.ndarray) -> np.ndarray:
    """The border pixels of a boolean mask, about 1 px thick per 256 px of its longer side."""
    from scipy import ndimage

    if not mask.any():
        return mask
    return mask & ~ndimage.binary_erosion(mask, iterations=max(1, round(max(mask.shape) / 256)))


def overlay(gray: np.ndarray, heat: np.ndarray, opacity: float = 0.45, outline: np.ndarray | None = None) -> np.ndarray:
    """RGB uint8 image: the X-ray with the heatmap blended in (matplotlib's 'jet' colours, alpha =
    ``opacity`` x heat) and, when given, the outline of a boolean mask (the lung fields) drawn in white.

    ``heat`` is taken as float32. The colours are the colormap's own table, indexed as matplotlib indexes a
    float32 array (heat x N, floored, clipped). The blend is in float32 in one (H, W, 3) buffer: a 512 px
    capture is built about twice as fast as through the colormap's float64 RGBA, which also touches four
    times the memory."""
    from matplotlib import colormaps

    jet = colormaps["jet"]
    table = jet(np.arange(jet.N))[:, :3].astype(np.float32)
    heat = np.nan_to_num(np.asarray(heat, np.float32), nan=0.0)  # a NaN in a heatmap draws as no heat
    index = np.clip(heat * np.float32(jet.N), 0, jet.N - 1).astype(np.intp)
    alpha = np.float32(opacity) * heat
    picture = table[index]
    picture *= alpha[..., None]
    picture += (np.asarray(gray, np.float32) * (1 - alpha))[..., None]
    np.clip(picture, 0, 1, out=picture)
    if outline is not None:
        picture[outline_edge(outline)] = 1.0
    picture *= 255
    return np.rint(picture, out=picture).astype(np.uint8)


def heatmap_rgba(heat: np.ndarray) -> np.ndarray:
    """The heatmap as 'jet' colours with alpha = heat, so a page can overlay it at any opacity."""
    from matplotlib import colormaps

    rgba = colormaps["jet"](heat)
    rgba[..., 3] = heat
    return (rgba * 255).round().astype(np.uint8)


def gray_rgb(gray: np.ndarray, outline: np.ndarray | None = None) -> np.ndarray:
    """uint8 RGB of a [0, 1] image, with the outline of a boolean mask (the lung fields) in cyan."""
    rgb = to_rgb((gray * 255).round().astype(np.uint8))
    if outline is not None:
        rgb[outline_edge(outline)] = OUTLINE_RGB
    return rgb


def png_base64(array: np.ndarray) -> str:
    """A uint8 (H, W) or (H, W, 3|4) array as base64 PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Write a uint8 array as a PNG, atomically."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return Path(path)


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    pyplot().close(fig)
    return path


def save_decoded(gray: np.ndarray, folder: Path, name: str) -> Path:
    """Keep what an input decoded to as a 16-bit PNG of its pixels only (no file name, no DICOM header: no
    patient field reaches the disk), ``folder/NAME.png``, written atomically and readable by its owner only."""
    import os

    from PIL import Image

    target = Path(folder) / f"{name}.png"
    with atomic_path(target) as tmp:
        Image.fromarray((gray * 65535).round().astype(np.uint16)).save(tmp, format="PNG")
        os.chmod(tmp, 0o600)
    return target
