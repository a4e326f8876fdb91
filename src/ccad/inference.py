"""Applying a trained model to image files.

:func:`load_classifier` accepts a run folder (``RUN/model.keras`` +
``RUN/config.json``) or a model file (its classes come from a ``config.json``
beside it, or from ``classes=``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .errors import ImageReadError, ModelError
from .images import IMAGE_SUFFIXES


@dataclass
class Classifier:
    model: Any
    classes: list[str]
    positive_class: str
    input_size: int
    meta: dict[str, Any]

    def predict_images(self, images: np.ndarray) -> np.ndarray:
        """Probabilities (N, k) for (N, H, W) grayscale images in [0, 1] at the model's input size."""
        from .evaluation import predict_probabilities

        return predict_probabilities(self.model, images)

    def predict_files(self, paths: Sequence[str | os.PathLike], batch_size: int = 32) -> list[dict[str, Any]]:
        """One result per file: ``file``, ``predicted_class``, ``probabilities`` (or ``error``)."""
        from .data import Sample, load_images

        results: list[dict[str, Any]] = []
        for start in range(0, len(paths), batch_size):
            chunk = [Sample(Path(p), "", str(p)) for p in paths[start:start + batch_size]]
            images, kept, bad = load_images(chunk, self.input_size, skip_bad=True)
            probabilities = self.predict_images(images) if len(kept) else np.zeros((0, len(self.classes)))
            by_path = {str(s.path): p for s, p in zip(kept, probabilities)}
            errors = dict(bad)
            for s in chunk:
                key = str(s.path)
                if key in by_path:
                    p = by_path[key]
                    results.append({"file": key, "predicted_class": self.classes[int(p.argmax())],
                                    "probabilities": {c: float(v) for c, v in zip(self.classes, p)}})
                else:
                    results.append({"file": key, "error": errors[key]})
        return results


def load_classifier(run_or_model: str | os.PathLike, classes: Sequence[str] | None = None) -> Classifier:
    """Load a trained classifier from a run folder or a ``.keras``/``.h5`` file."""
    from .model import load_keras_model

    path = Path(run_or_model)
    if path.is_dir():
        model_file = path / "model.keras"
        if not model_file.is_file():
            raise ModelError(f"{path}: no model.keras in this folder (is it a ccad run folder?)")
    elif path.is_file():
        model_file = path
    else:
        raise ModelError(f"{path}: no such model file or run folder")
    meta_file = model_file.parent / "config.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    model = load_keras_model(model_file)
    names = list(classes or meta.get("classes") or [])
    if not names:
        raise ModelError(f"{model_file}: class names unknown (no config.json beside it); pass --classes")
    if len(names) != model.output_shape[-1]:
        raise ModelError(f"{model_file}: model has {model.output_shape[-1]} outputs but {len(names)} classes were given")
    positive = meta.get("positive_class") or ("covid" if "covid" in names else names[-1])
    return Classifier(model, names, positive, int(model.input_shape[1]), meta)


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files given directly, plus the image files found (recursively) in given folders, sorted."""
    paths: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ImageReadError(f"{item}: folder holds no image files")
            paths += found
        elif item.exists():
            paths.append(item)
        else:
            raise ImageReadError(f"{item}: no such file or folder")
    return paths
