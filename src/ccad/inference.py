"""Applying a trained model to image files.

:func:`load_classifier` accepts a model bundle (``ccad export``; runs on ONNX
Runtime, no TensorFlow), a run folder (``RUN/model.keras`` + ``RUN/config.json``)
or a Keras model file (its classes come from a ``config.json`` beside it, or
from ``classes=``).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

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
    run_dir: Path | None = None

    @property
    def stored_head(self):
        """The non-linear scikit-learn head stored beside the model (ONNX), or None."""
        file = (self.meta.get("head") or {}).get("file")
        if not file:
            return None
        if getattr(self, "_head", None) is None:
            from .heads import OnnxHead

            path = (self.run_dir or Path(".")) / file
            if not path.is_file():
                raise ModelError(f"{path}: the model's {self.meta['head'].get('kind')} head is missing")
            self._head = OnnxHead(path)
        return self._head

    @property
    def preprocess(self) -> str:
        return self.meta.get("preprocess", "none")

    @property
    def decision(self):
        from .decision import DecisionRule

        return DecisionRule.from_meta(self.meta, self.classes, self.positive_class)

    @property
    def ood(self):
        """The out-of-distribution guard stored with the run (None for a run trained before it existed)."""
        file = (self.meta.get("ood") or {}).get("file")
        if not file or self.run_dir is None or not (self.run_dir / file).is_file():
            return None
        if getattr(self, "_ood", None) is None:
            from .ood import OodGuard

            self._ood = OodGuard.load(self.run_dir / file)
        return self._ood

    def pooled_features(self, images: np.ndarray) -> np.ndarray:
        """(N, d) pooled backbone features for (N, H, W) grayscale images in [0, 1]."""
        from .evaluation import predict_probabilities
        from .model import feature_extractor

        if getattr(self, "_extractor", None) is None:
            self._extractor = feature_extractor(self.model)
        return predict_probabilities(self._extractor, images)

    def predict_images(self, images: np.ndarray) -> np.ndarray:
        """Probabilities (N, k) for (N, H, W) grayscale images in [0, 1] at the model's input size."""
        from .evaluation import predict_probabilities

        head = self.stored_head
        if head is None:
            return predict_probabilities(self.model, images)
        return head(self.pooled_features(images))

    def predict_files(self, paths: Sequence[str | os.PathLike], batch_size: int = 32) -> list[dict[str, Any]]:
        """One result per file: ``file``, ``predicted_class``, ``probabilities`` (or ``error``)."""
        from .data import Sample, load_images
        from .ood import screen
        from .predictor import describe

        results: list[dict[str, Any]] = []
        for start in range(0, len(paths), batch_size):
            chunk = [Sample(Path(p), "", str(p)) for p in paths[start:start + batch_size]]
            images, kept, bad = load_images(chunk, self.input_size, skip_bad=True, preprocess=self.preprocess)
            probabilities = self.predict_images(images) if len(kept) else np.zeros((0, len(self.classes)))
            guard = self.ood
            features = self.pooled_features(images) if guard is not None and len(kept) else [None] * len(kept)
            by_path = {str(s.path): (p, f) for s, p, f in zip(kept, probabilities, features)}
            errors = dict(bad)
            for s in chunk:
                key = str(s.path)
                if key in by_path:
                    p, f = by_path[key]
                    results.append({"file": key, **describe(p, self.classes, self.decision),
                                    **(screen(guard, f) if guard is not None else {"in_distribution": None})})
                else:
                    results.append({"file": key, "error": errors[key]})
        return results


def run_folder(run_or_model: str | os.PathLike) -> Path:
    """The run folder of a run folder or of a model file inside one."""
    path = Path(run_or_model)
    return path if path.is_dir() else path.parent


def load_classifier(model: str | os.PathLike, classes: Sequence[str] | None = None, variant: str = "float"):
    """A bundle's :class:`ccad.predictor.Predictor` (no TensorFlow), else a Keras :class:`Classifier`."""
    from .predictor import Predictor, is_bundle

    if is_bundle(model):
        return Predictor(model, variant=variant)
    return load_keras_classifier(model, classes)


def load_keras_classifier(run_or_model: str | os.PathLike, classes: Sequence[str] | None = None) -> Classifier:
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
    metrics_file = model_file.parent / "metrics.json"
    if metrics_file.is_file():
        meta["_metrics"] = json.loads(metrics_file.read_text())
    model = load_keras_model(model_file)
    names = list(classes or meta.get("classes") or [])
    if not names:
        raise ModelError(f"{model_file}: class names unknown (no config.json beside it); pass --classes")
    if len(names) != model.output_shape[-1]:
        raise ModelError(f"{model_file}: model has {model.output_shape[-1]} outputs but {len(names)} classes were given")
    positive = meta.get("positive_class") or ("covid" if "covid" in names else names[-1])
    return Classifier(model, names, positive, int(model.input_shape[1]), meta, run_dir=model_file.parent)


def iter_inputs(inputs: Iterable[str | os.PathLike]) -> Iterator[Path]:
    """Files given directly, then the image files under given folders (walked lazily, sorted per folder)."""
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            found = False
            for dirpath, dirnames, filenames in os.walk(item):
                dirnames.sort()
                for name in sorted(filenames):
                    if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                        found = True
                        yield Path(dirpath) / name
            if not found:
                raise ImageReadError(f"{item}: folder holds no image files")
        elif item.exists():
            yield item
        else:
            raise ImageReadError(f"{item}: no such file or folder")


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    return list(iter_inputs(inputs))


RESULT_COLUMNS = ("file", "predicted_class")
#: Columns after the probabilities: the out-of-distribution guard and the lung check.
SCREEN_COLUMNS = ("in_distribution", "ood_distance", "lung_qc")
#: Array-valued keys of a result (heatmaps and images), dropped from JSON and tables.
IMAGE_KEYS = ("heatmap", "image", "original", "original_heatmap", "lung_outline")


def result_columns(classes: Sequence[str], severity_scores: Sequence[str] = ()) -> list[str]:
    """CSV header: file, predicted class, a probability per class, in_distribution, ood_distance, lung_qc,
    severity columns if any, error."""
    severity = [f"{s}{suffix}" for s in severity_scores for suffix in ("", "_low", "_high")]
    return [*RESULT_COLUMNS, *(f"p_{c}" for c in classes), *SCREEN_COLUMNS, *severity,
            *(["severity_band"] if severity else []), "error"]


def result_row(result: dict[str, Any], classes: Sequence[str], severity_scores: Sequence[str] = ()) -> list[str]:
    probabilities = result.get("probabilities")
    row = ([result["file"], result.get("predicted_class", "")]
           + [f"{probabilities[c]:.6f}" if probabilities else "" for c in classes])
    in_distribution = result.get("in_distribution")
    row += ["" if in_distribution is None else str(in_distribution).lower(),
            "" if result.get("ood_distance") is None else f"{result['ood_distance']:.3f}",
            ";".join(result.get("lung_qc") or [])]
    if severity_scores:
        severity = result.get("severity") or {}
        for name in severity_scores:
            entry = severity.get(name)
            row += [f"{entry['value']:.2f}", f"{entry['interval95'][0]:.2f}", f"{entry['interval95'][1]:.2f}"] \
                if entry else ["", "", ""]
        row.append(severity.get("band", ""))
    return row + [result.get("error", "")]


def severity_scores_of(classifier) -> list[str]:
    severity = getattr(classifier, "severity", None)
    return list(severity.targets) if severity is not None else []


def predict_to_csv(predictor, inputs: Iterable[str | os.PathLike], out_csv: str | os.PathLike, resume: bool = False,
                   heatmap_dir: str | os.PathLike | None = None, progress: bool = True) -> dict[str, int]:
    """Stream predictions into ``out_csv``, a row per file as soon as it is scored.

    With ``resume`` the files already in ``out_csv`` are skipped and new rows are
    appended; otherwise an existing ``out_csv`` is an error. Unreadable files get
    a row with their error; the run goes on. Returns counts.
    """
    import csv

    from tqdm import tqdm

    out_csv = Path(out_csv)
    done: set[str] = set()
    if out_csv.exists():
        if not resume:
            raise ModelError(f"{out_csv}: already exists (use --resume to continue it, or another --out)")
        _drop_partial_last_line(out_csv)
        with open(out_csv, newline="", encoding="utf-8") as f:
            done = {row["file"] for row in csv.DictReader(f)}
    paths = (str(p) for p in iter_inputs(inputs) if str(p) not in done)
    counts = {"scored": 0, "errors": 0, "skipped_done": len(done)}
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    heat_dir = Path(heatmap_dir) if heatmap_dir else None
    if heat_dir:
        heat_dir.mkdir(parents=True, exist_ok=True)
    new_file = not out_csv.exists() or out_csv.stat().st_size == 0
    with open(out_csv, "a", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        if new_file:
            writer.writerow(result_columns(predictor.classes, severity_scores_of(predictor)))
        bar = tqdm(desc="predict", unit="img", disable=not progress, file=sys.stderr)
        for result in predictor.predict_stream(paths, with_heatmaps=heat_dir is not None):
            writer.writerow(result_row(result, predictor.classes, severity_scores_of(predictor)))
            counts["errors" if "error" in result else "scored"] += 1
            if heat_dir and "heatmap" in result:
                save_overlay(result, heat_dir)
            if (counts["scored"] + counts["errors"]) % 64 == 0:
                f.flush()
            bar.update()
        bar.close()
    return counts


def _drop_partial_last_line(path: Path) -> None:
    """A run killed mid-write can leave half a row: cut the file back to its last complete line."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def save_overlay(result: dict[str, Any], folder: Path) -> Path:
    from PIL import Image

    from ._files import atomic_path
    from .predictor import overlay

    name = Path(result["file"]).stem + f".{result['predicted_class']}.heatmap.png"
    target = folder / name
    if "original" in result:  # the X-ray as the reader knows it, lung outline and heatmap mapped back onto it
        picture = overlay(result["original"], result["original_heatmap"], outline=result.get("lung_outline"))
    else:
        picture = overlay(result["image"], result["heatmap"])
    with atomic_path(target) as tmp:
        Image.fromarray(picture).save(tmp, format="PNG")
    return target
