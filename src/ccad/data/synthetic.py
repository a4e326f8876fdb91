"""A procedural generator of chest-X-ray-like images, for the demo and the tests.

Not medical data. Each "patient" gets a thorax, two dark lung fields, a
mediastinum and spine, a heart shadow, ribs and a diaphragm, with random
anatomy, exposure, gamma and noise. Classes:

- ``normal``: clear lungs;
- ``covid``: several patchy, ground-glass opacities, bilateral, peripheral and
  in the lower zones (the typical COVID-19 pattern);
- ``pneumonia``: one dense, lobar consolidation on one side.

Each patient yields one or two images (groups), so patient-grouped splitting is
exercised too.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ccad.io.files import write_text

CLASSES = ("covid", "normal", "pneumonia")


#: Amplitude of the per-patient soft-tissue pattern.
TISSUE_CONTRAST = 0.4


def _ellipse(xx, yy, cx, cy, ax, ay, softness=0.04):
    """Soft mask in [0, 1]: 1 inside the ellipse, a smooth edge ``softness`` wide."""
    r = np.sqrt(((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2)
    return 1.0 / (1.0 + np.exp((r - 1.0) / softness))


def _blob_noise(rng, size, scale=8):
    """Smooth random texture in [0, 1] (upsampled noise)."""
    small = rng.random((scale, scale)).astype(np.float32)
    img = Image.fromarray(small, mode="F").resize((size, size), Image.Resampling.BICUBIC)
    t = np.asarray(img)
    return (t - t.min()) / (np.ptp(t) + 1e-6)


def render_patient(rng: np.random.Generator, label: str, size: int = 256, anatomy: dict | None = None) -> np.ndarray:
    """One synthetic radiograph as float32 (size, size) in [0, 1]."""
    a = anatomy or patient_anatomy(rng)
    lin = np.linspace(-1, 1, size, dtype=np.float32)
    xx, yy = np.meshgrid(lin, lin)
    img = np.full((size, size), 0.06, np.float32)
    thorax = _ellipse(xx, yy, 0, 0.15 + a["dy"], 0.88 * a["width"], 1.0, 0.05)
    img += 0.5 * thorax
    lungs = sum(
        _ellipse(xx, yy, side * a["lung_x"], -0.05 + a["dy"], a["lung_w"], a["lung_h"], 0.06) for side in (-1, 1)
    )
    lungs = np.clip(lungs, 0, 1)
    img -= 0.32 * lungs
    for k in range(9):  # ribs: arcs across each lung field
        y0 = -0.62 + a["dy"] + k * a["rib_gap"]
        for side in (-1, 1):
            curve = y0 + 0.35 * (xx - side * 0.1) ** 2 * side * np.sign(xx) + 0.05 * np.abs(xx)
            rib = np.exp(-(((yy - curve) / 0.018) ** 2)) * (np.sign(xx) == side)
            img += 0.10 * rib * lungs
    img += 0.28 * np.exp(-((xx / 0.09) ** 2)) * thorax  # mediastinum and spine
    img += 0.30 * _ellipse(xx, yy, 0.12, 0.32 + a["dy"], a["heart_w"], 0.27, 0.08)
    img += 0.35 * (yy > 0.5 + a["dy"] + 0.1 * np.abs(xx)) * thorax  # diaphragm and abdomen
    if "tissue" in a:
        img += (
            TISSUE_CONTRAST * (_blob_noise(np.random.default_rng(a["tissue"]), size, 16) - 0.5) * thorax * (1 - lungs)
        )
    img += _opacities(rng, label, xx, yy, a, size) * lungs
    img = np.clip(img * a["gain"], 0, 1) ** a["gamma"]
    img += rng.normal(0, 0.015, img.shape).astype(np.float32)
    return np.clip(img, 0, 1).astype(np.float32)


def lung_mask(anatomy: dict, size: int = 256) -> np.ndarray:
    """The boolean (size, size) mask of the two lung fields :func:`render_patient` draws for ``anatomy``."""
    lin = np.linspace(-1, 1, size, dtype=np.float32)
    xx, yy = np.meshgrid(lin, lin)
    a = anatomy
    lungs = sum(
        _ellipse(xx, yy, side * a["lung_x"], -0.05 + a["dy"], a["lung_w"], a["lung_h"], 0.06) for side in (-1, 1)
    )
    return lungs >= 0.5


def patient_anatomy(rng: np.random.Generator) -> dict:
    return {
        "width": rng.uniform(0.88, 1.0),
        "dy": rng.uniform(-0.05, 0.05),
        "lung_x": rng.uniform(0.36, 0.42),
        "lung_w": rng.uniform(0.24, 0.30),
        "lung_h": rng.uniform(0.52, 0.62),
        "rib_gap": rng.uniform(0.13, 0.16),
        "heart_w": rng.uniform(0.22, 0.30),
        "gain": rng.uniform(0.85, 1.15),
        "gamma": rng.uniform(0.8, 1.2),
        # each body's own soft-tissue density pattern, the same in every view of the patient: without it two
        # patients' films are closer than two real patients' (a perceptual hash would call them one film)
        "tissue": int(rng.integers(2**31)),
    }


def _opacities(rng, label, xx, yy, a, size) -> np.ndarray:
    out = np.zeros_like(xx)
    if label == "covid":
        for _ in range(rng.integers(4, 9)):
            side = rng.choice([-1, 1])
            cx = side * (a["lung_x"] + rng.uniform(0.02, 0.16))
            cy = rng.uniform(0.0, 0.4) + a["dy"]
            s = rng.uniform(0.06, 0.12)
            out += rng.uniform(0.12, 0.25) * np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s)))
        out *= 0.5 + _blob_noise(rng, size, 16)  # patchy, ground-glass texture
    elif label == "pneumonia":
        side = rng.choice([-1, 1])
        cx, cy = side * a["lung_x"] + rng.uniform(-0.05, 0.05), rng.uniform(-0.3, 0.3) + a["dy"]
        out += 0.38 * _ellipse(xx, yy, cx, cy, rng.uniform(0.12, 0.2), rng.uniform(0.15, 0.25), 0.1)
    return out


def generate(
    out: str | os.PathLike,
    n_per_class: int = 40,
    classes: Sequence[str] = ("covid", "normal"),
    size: int = 256,
    seed: int = 0,
    layout: str = "folders",
) -> Path:
    """Write a synthetic data set: ``out/<class>/*.png`` (``layout="folders"``) or
    ``out/{train,test}/<class>/*.png`` (``layout="paper"``, 80/20 by patient),
    plus ``out/manifest.csv`` (``path,label,group``). Returns ``out``.
    """
    unknown = [c for c in classes if c not in CLASSES]
    if unknown:
        raise ValueError(f"unknown synthetic class {unknown[0]!r} (choose from {', '.join(CLASSES)})")
    if layout not in ("folders", "paper"):
        raise ValueError(f"layout must be 'folders' or 'paper', got {layout!r}")
    out = Path(out)
    rng = np.random.default_rng(seed)
    rows = []
    for label in classes:
        made, patient = 0, 0
        while made < n_per_class:
            anatomy = patient_anatomy(rng)
            group = f"{label}-p{patient:04d}"
            prefix = Path("train" if rng.random() < 0.8 else "test") if layout == "paper" else Path()
            for view in range(min(int(rng.integers(1, 3)), n_per_class - made)):
                image = render_patient(rng, label, size, dict(anatomy, gain=anatomy["gain"] * rng.uniform(0.95, 1.05)))
                rel = prefix / label / f"{group}-{view}.png"
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray((image * 255).round().astype(np.uint8), mode="L").save(out / rel)
                rows.append((rel.as_posix(), label, group))
                made += 1
            patient += 1
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "label", "group"])
    writer.writerows(rows)
    write_text(out / "manifest.csv", buffer.getvalue())
    return out
