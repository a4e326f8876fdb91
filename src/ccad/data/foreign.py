"""Foreign inputs made from chest films: what the out-of-distribution guard learns to flag.

    >>> rng = np.random.default_rng(0)
    >>> film = np.linspace(0, 1, 64 * 48, dtype=np.float32).reshape(64, 48)
    >>> transform(film, "rotated 180", rng)[0, 0] == film[-1, -1]
    True
    >>> screenshot(np.random.default_rng(0)).dtype
    dtype('float32')

A chest X-ray turned by 90 or 180 degrees, inverted (a MONOCHROME1 film shown as MONOCHROME2), a corner of one
cropped, and a screen of text are what a site sends a screening model by mistake. The guard
(:mod:`ccad.models.ood`) is a head trained to tell films from these, made from the training films themselves,
so it needs no data of its own; the photos, other modalities and other pictures it is evaluated on are never
in its training (BENCHMARKS.md, "The guard").

Images are (H, W) float32 grayscale in [0, 1], as :func:`ccad.io.images.read_grayscale` returns them.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFont

TRANSFORMS = ("rotated 90", "rotated 180", "inverted", "corner crop")
_WORDS = (
    "patient study series report findings impression chest lung opacity bilateral consolidation normal "
    "comparison technique history clinical indication radiograph portable upright signed date time accession "
    "the of and with no evidence acute cardiopulmonary process heart size within limits pleural effusion "
    "pneumothorax table total count results value reference range units invoice page section summary"
).split()


def transform(gray: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """``gray`` made foreign: ``kind`` is one of :data:`TRANSFORMS` (a corner crop keeps 25-40% of each side)."""
    if kind == "rotated 90":
        return np.ascontiguousarray(np.rot90(gray, 1 if rng.random() < 0.5 else 3))
    if kind == "rotated 180":
        return np.ascontiguousarray(np.rot90(gray, 2))
    if kind == "inverted":
        return (1 - gray).astype(np.float32)
    if kind != "corner crop":
        raise ValueError(f"unknown transform {kind!r} (choose from {', '.join(TRANSFORMS)})")
    h, w = gray.shape
    ch, cw = max(1, int(h * rng.uniform(0.25, 0.4))), max(1, int(w * rng.uniform(0.25, 0.4)))
    top, left = (0 if rng.random() < 0.5 else h - ch), (0 if rng.random() < 0.5 else w - cw)
    return np.ascontiguousarray(gray[top : top + ch, left : left + cw])


def screenshot(rng: np.random.Generator, thumbnail: np.ndarray | None = None) -> np.ndarray:
    """A screen of text: lines of words on a light or dark background, some underlined like a table's rows,
    and ``thumbnail`` (a film) small in a corner when given. Drawn with Pillow's built-in font, so the same on
    every machine."""
    w, h = int(rng.integers(700, 1400)), int(rng.integers(500, 1000))
    dark = rng.random() < 0.4
    img = Image.new("L", (w, h), int(rng.integers(0, 40)) if dark else int(rng.integers(215, 256)))
    draw = ImageDraw.Draw(img)
    size = int(rng.integers(12, 28))
    font = ImageFont.load_default(size)
    ink = int(rng.integers(200, 256)) if dark else int(rng.integers(0, 60))
    y = int(rng.integers(5, 30))
    while y < h - size:
        words = " ".join(rng.choice(_WORDS, size=int(rng.integers(3, 14))))
        draw.text((int(rng.integers(5, 40)), y), words, fill=ink, font=font)
        if rng.random() < 0.2:
            draw.line((0, y + size + 3, w, y + size + 3), fill=ink)
        y += int(size * rng.uniform(1.3, 2.0))
    if thumbnail is not None:  # on top, as a viewer shows a picture over its page
        side = int(min(w, h) * rng.uniform(0.25, 0.45))
        img.paste(Image.fromarray((255 * thumbnail).astype(np.uint8)).resize((side, side)), (w - side - 20, 20))
    return np.asarray(img, np.float32) / 255


def foreign_images(films: list[np.ndarray], screens: int, seed: int) -> Iterator[tuple[str, np.ndarray]]:
    """(kind, image): every transform of every film, then ``screens`` screenshots (a film's thumbnail in one
    of four), drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    for film in films:
        for kind in TRANSFORMS:
            yield kind, transform(film, kind, rng)
    for k in range(screens):
        thumbnail = films[int(rng.integers(len(films)))] if films and k % 4 == 3 else None
        yield "text screenshot", screenshot(rng, thumbnail)
