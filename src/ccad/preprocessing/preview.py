"""``ccad augment-preview``: what the model is fed, as a grid of augmented samples."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from ccad.data.datasets import DataSpec
from ccad.io.pictures import pyplot, save_figure
from ccad.preprocessing.augmentation import Augmenter, augment_numpy
from ccad.preprocessing.pipeline import load_images, to_model_input


def augment_preview(
    spec: DataSpec,
    out: str | os.PathLike,
    augmentation: str = "cxr",
    images: int = 4,
    variants: int = 5,
    input_size: int = 224,
    seed: int = 0,
) -> Path:
    """Save a PNG grid: one row per image, the original then ``variants`` augmented copies.

    Pixels are shown as the augmentation yields them, in [0, 1]; the ``paper``
    preset's centering happens afterwards, inside the model.
    """
    dataset = replace(spec, positive_class=None).discover()
    rng = np.random.default_rng(seed)
    picked = [
        dataset.samples[i] for i in rng.choice(len(dataset.samples), min(images, len(dataset.samples)), replace=False)
    ]
    gray, kept, _ = load_images(picked, input_size)
    augmenter = Augmenter(augmentation, input_size, seed)
    batch = to_model_input(gray)
    plt = pyplot()
    fig, axes = plt.subplots(len(kept), variants + 1, figsize=(2 * (variants + 1), 2.1 * len(kept)), squeeze=False)
    for row, sample in enumerate(kept):
        axes[row, 0].imshow(gray[row], cmap="gray", vmin=0, vmax=1)
        axes[row, 0].set_title(f"{sample.label} (original)", fontsize=8)
    for col in range(1, variants + 1):
        augmented = augment_numpy(augmenter, batch)[..., 0]
        for row in range(len(kept)):
            axes[row, col].imshow(augmented[row], cmap="gray", vmin=0, vmax=1)
            axes[row, col].set_title(f"{augmentation} #{col}", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    return save_figure(fig, Path(out))
