"""How well a lung segmenter draws the lungs: Dice and IoU against drawn masks, and overlay pictures.

A segmenter folder (``lung-segmenter.onnx`` and its card) is scored **through the same ONNX Runtime path that
ccad uses** (:class:`ccad.models.lungs.LungSegmenter`), at each mask's own resolution, over the labelled pixels
of the mask PNGs (:func:`read_mask`: 255 = lung, 127 = ignore, 0 = background). ``ccad lungs train``
(:mod:`ccad.training.lung_segmenter`) scores its held-out patients with :func:`score_segmenter`.
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ccad.io.files import atomic_path
from ccad.io.images import read_grayscale
from ccad.models.lungs import LungSegmenter


def read_mask(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(lung, labelled) boolean arrays from a mask PNG: 255 = lung, 127 = ignore, 0 = background."""
    from PIL import Image

    with Image.open(path) as im:
        values = np.asarray(im.convert("L"))
    return values >= 192, np.abs(values.astype(np.int16) - 127) > 32


def dice_iou(predicted: np.ndarray, lung: np.ndarray, labelled: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of boolean masks over the labelled pixels."""
    p, t = predicted[labelled], lung[labelled]
    inter, union, total = np.sum(p & t), np.sum(p | t), p.sum() + t.sum()
    return (2 * inter / total if total else 1.0), (inter / union if union else 1.0)


def describe_scores(card: dict[str, Any]) -> str:
    """The held-out scores of a segmenter card, in one line."""
    h = card["held_out"]
    return (
        f"held-out Dice {h['dice_mean']:.3f} (5th percentile {h['dice_p05']:.3f}), IoU {h['iou_mean']:.3f} on "
        f"{h['images']} images of {h['patients']} patients"
    )


def score_segmenter(model_dir: str | os.PathLike, rows, out: str | os.PathLike) -> dict[str, Any]:
    """Dice/IoU of the ONNX segmenter on ``rows`` at each mask's resolution; writes scores and overlays."""

    segmenter = LungSegmenter.load(model_dir, threads=1)
    scores = []
    started = time.perf_counter()
    for row in rows:
        gray = read_grayscale(row["image"])
        lung, labelled = read_mask(row["mask"])
        fields = segmenter(gray)
        predicted = fields.at(*lung.shape)
        scores.append((row, *dice_iou(predicted, lung, labelled), fields.qc_flags))
    per_image_ms = 1000 * (time.perf_counter() - started) / max(1, len(rows))
    out = Path(out)
    with open(out / "test_scores.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "group", "dice", "iou", "qc_flags"])
        for row, d, i, flags in scores:
            w.writerow([Path(row["image"]).name, row["group"], f"{d:.4f}", f"{i:.4f}", ";".join(flags)])
    dice = np.array([s[1] for s in scores])
    iou = np.array([s[2] for s in scores])
    order = np.argsort(dice)
    picks = [*order[:4], *order[len(order) // 2 - 2 : len(order) // 2 + 2]]
    overlay_grid(
        [scores[i][0] for i in picks],
        segmenter,
        out / "overlays.png",
        titles=[f"Dice {dice[i]:.3f}" for i in picks],
        heading="worst 4 (top) and median 4 (bottom) held-out patients; green = drawn, red = model",
    )
    return {
        "images": len(rows),
        "patients": len({r["group"] for r in rows}),
        "dice_mean": float(dice.mean()),
        "dice_p05": float(np.percentile(dice, 5)),
        "dice_min": float(dice.min()),
        "iou_mean": float(iou.mean()),
        "iou_p05": float(np.percentile(iou, 5)),
        "qc_flagged": int(sum(bool(s[3]) for s in scores)),
        "ms_per_image_including_read": round(per_image_ms, 1),
    }


def overlay_grid(rows, segmenter, path: str | os.PathLike, titles=None, heading: str = "", columns: int = 4) -> None:
    """A PNG grid: each image with the model's outline (red) and, where ``row`` has a mask, the drawn one (green)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(rows)
    grid_rows = max(1, int(np.ceil(n / columns)))
    fig, axes = plt.subplots(grid_rows, columns, figsize=(3 * columns, 3.2 * grid_rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, row, title in zip(axes.flat, rows, titles or [""] * n):
        gray = read_grayscale(row["image"] if isinstance(row, dict) else row)
        fields = segmenter(gray)
        ax.imshow(gray, cmap="gray", vmin=0, vmax=1)
        ax.contour(fields.at(*gray.shape), levels=[0.5], colors="red", linewidths=1)
        if isinstance(row, dict) and row.get("mask"):
            lung, _ = read_mask(row["mask"])
            ax.contour(lung, levels=[0.5], colors="lime", linewidths=1)
        flags = ",".join(fields.qc_flags)
        ax.set_title(f"{title} {flags}".strip(), fontsize=8)
    if heading:
        fig.suptitle(heading, fontsize=9)
    fig.tight_layout()

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
