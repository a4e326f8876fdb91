"""Prediction on ONNX Runtime alone: no TensorFlow is imported here or by anything this imports.

    >>> from ccad.predictor import Predictor
    >>> p = Predictor("bundle/")                    # doctest: +SKIP
    >>> p.predict_files(["xray.png"])               # doctest: +SKIP

:meth:`Predictor.predict_stream` handles folders of any size: files are listed
lazily, decoded on several threads with a bounded number in flight, scored in
batches, and each result is handed on (``ccad predict`` writes it to the CSV at
once, so ``--resume`` can skip what is done).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from .decision import DecisionRule
from .errors import ImageReadError, ModelError
from .images import Prepared, prepare_full, read_grayscale, to_model_input
from .ood import OodGuard, screen

#: The model card's file name: its presence makes a folder a bundle.
BUNDLE_CARD = "ccad-model.json"
#: Images per ONNX Runtime call. On 2 cores batch 1-4 is as fast per image as 16-32, and ONNX
#: Runtime's activation arena grows with the batch (peak RSS at batch 4: ~130 MB; at 16: ~270 MB).
BATCH_SIZE = 4


def is_bundle(path: str | os.PathLike) -> bool:
    return (Path(path) / BUNDLE_CARD).is_file()


class Predictor:
    """A model bundle on ONNX Runtime.

    Args:
        bundle: the bundle folder (``ccad export``).
        variant: ``"float"`` (``model.onnx``) or ``"int8"`` (``model.int8.onnx``).
        threads: ONNX Runtime intra-op threads (the paper's target: a small CPU).
    """

    def __init__(self, bundle: str | os.PathLike, variant: str = "float", threads: int = 2):
        from ._onnx import cpu_session

        self.bundle = Path(bundle)
        if not is_bundle(self.bundle):
            raise ModelError(f"{self.bundle}: not a ccad model bundle (no {BUNDLE_CARD}; make one with ccad export)")
        self.card: dict[str, Any] = json.loads((self.bundle / BUNDLE_CARD).read_text())
        models = self.card["models"]
        if variant not in models:
            raise ModelError(f"{self.bundle}: no {variant} model in this bundle (has: {', '.join(models)})")
        path = self.bundle / models[variant]
        _check_sha256(path, self.card.get("sha256", {}).get(path.name))
        self.session = cpu_session(path, threads)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.cam_weights = np.load(self.bundle / self.card["heatmap"]["weights"])
        self.head = None
        head_file = (self.card.get("head") or {}).get("file")
        if head_file:  # a non-linear scikit-learn head on the pooled features (no class activation map)
            from .heads import OnnxHead

            _check_sha256(self.bundle / head_file, self.card.get("sha256", {}).get(head_file))
            self.head = OnnxHead(self.bundle / head_file)
        self.classes: list[str] = self.card["classes"]
        self.positive_class: str = self.card["positive_class"]
        self.input_size: int = int(self.card["input_size"])
        self.preprocess: str = self.card.get("preprocess", "none")
        self.decision = DecisionRule.from_meta(self.card, self.classes, self.positive_class)
        self.severity = None
        if self.card.get("severity"):
            from .severity import SeverityHead

            severity_path = self.bundle / self.card["severity"]["file"]
            _check_sha256(severity_path, self.card.get("sha256", {}).get(severity_path.name))
            self.severity = SeverityHead(json.loads(severity_path.read_text()))
        self.ood = None
        if self.card.get("ood"):
            ood_path = self.bundle / self.card["ood"]["file"]
            _check_sha256(ood_path, self.card.get("sha256", {}).get(ood_path.name))
            self.ood = OodGuard.load(ood_path)
        self.variant = variant
        self.meta = self.card

    # -- arrays -------------------------------------------------------------------------------
    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities (N, k), feature maps (N, h, w, 1280)) for a (N, H, W, 3) float32 batch in [0, 1]."""
        probabilities, features = self.session.run(self.output_names, {self.input_name: batch.astype(np.float32)})
        if self.head is not None:
            probabilities = self.head(features.mean(axis=(1, 2)))
        return probabilities, features

    def pooled_features(self, images: np.ndarray, batch_size: int = BATCH_SIZE) -> np.ndarray:
        """(N, 1280) pooled backbone features for (N, H, W) grayscale or (N, H, W, 3) images."""
        if images.ndim == 3:
            images = to_model_input(images)
        out = [self.run(images[i:i + batch_size])[1].mean(axis=(1, 2)) for i in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, 1280), np.float32)

    def predict_images(self, images: np.ndarray, batch_size: int = BATCH_SIZE) -> np.ndarray:
        """Probabilities for (N, H, W) grayscale or (N, H, W, 3) images in [0, 1] at the input size."""
        if images.ndim == 3:
            images = to_model_input(images)
        out = [self.run(images[i:i + batch_size])[0] for i in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)

    def severity_of(self, result: dict[str, Any], feature_map: np.ndarray) -> dict[str, Any]:
        """``{"severity": ...}`` for an image classified as the positive class when a severity head is attached."""
        if self.severity is None or result["predicted_class"] != self.positive_class:
            return {}
        return {"severity": self.severity(feature_map.mean(axis=(0, 1)))}

    def heatmap(self, feature_map: np.ndarray, class_index: int) -> np.ndarray:
        """Class activation map for one image, (input_size, input_size) in [0, 1].

        For global average pooling followed by a dense layer, the class score is
        the spatial mean of ``feature_map @ w_c``, so this map is exact (Zhou et al. 2016).
        """
        if self.head is not None:
            return np.zeros((self.input_size, self.input_size), np.float32)  # no CAM for a non-linear head
        cam = np.maximum(feature_map @ self.cam_weights[:, class_index], 0.0)
        return upsample_map(cam, self.input_size)

    # -- files --------------------------------------------------------------------------------
    def predict_files(self, paths: Sequence[str | os.PathLike], with_heatmaps: bool = False) -> list[dict[str, Any]]:
        """One result per file (``file``, ``predicted_class``, ``probabilities``; or ``error``)."""
        return list(self.predict_stream(paths, with_heatmaps=with_heatmaps))

    def predict_stream(self, paths: Iterable[str | os.PathLike], batch_size: int = BATCH_SIZE, workers: int = 4,
                       with_heatmaps: bool = False) -> Iterator[dict[str, Any]]:
        """Results in input order, decoded on ``workers`` threads, at most ``4 * batch_size`` images in flight."""
        with ThreadPoolExecutor(workers) as pool:
            pending: list = []
            for path in paths:
                pending.append((str(path), pool.submit(self._load, path)))
                if len(pending) >= 4 * batch_size:
                    yield from self._score(pending[:batch_size], with_heatmaps)
                    pending = pending[batch_size:]
            while pending:
                yield from self._score(pending[:batch_size], with_heatmaps)
                pending = pending[batch_size:]

    def prepare(self, gray: np.ndarray) -> Prepared:
        """This model's input for a (H, W) grayscale image, with the lung fields (for QC and the outline)."""
        return prepare_full(gray, self.input_size, self.preprocess, lung_fields=True)

    def _load(self, path) -> Prepared | str:
        try:
            return self.prepare(read_grayscale(path))
        except ImageReadError as e:
            return str(e)

    def score(self, names: Sequence[str], prepared: Sequence[Prepared], with_heatmaps: bool = False,
              key: str = "file") -> list[dict[str, Any]]:
        """The one scoring path (``predict``, ``serve``, ``--engine ray``): run the model on prepared images,
        apply the decision rule, the out-of-distribution guard and lung QC, severity, and heatmaps.

        With ``with_heatmaps`` each result also holds ``image`` (what the model saw), ``heatmap`` (on it),
        ``original`` (the X-ray at up to 512 px), ``original_heatmap`` (mapped back onto it) and
        ``lung_outline`` (a boolean mask on ``original``, when the lung fields were found)."""
        if not prepared:
            return []
        probabilities, features = self.run(to_model_input(np.stack([p.image for p in prepared])))
        results = []
        for name, prep, p, f in zip(names, prepared, probabilities, features):
            result = {key: name, **describe(p, self.classes, self.decision)}
            result.update(screen(self.ood, f.mean(axis=(0, 1)), getattr(prep.fields, "qc_flags", ())))
            result.update(self.severity_of(result, f))
            if with_heatmaps:
                heat = self.heatmap(f, self.classes.index(result["predicted_class"]))
                result.update(heatmap=heat, image=prep.image, original=prep.gray,
                              original_heatmap=prep.to_original(heat))
                if prep.fields is not None:
                    result["lung_outline"] = prep.fields.at(*prep.gray.shape)
            results.append(result)
        return results

    def _score(self, chunk, with_heatmaps: bool) -> Iterator[dict[str, Any]]:
        loaded = [(path, future.result()) for path, future in chunk]
        good = [(path, prep) for path, prep in loaded if isinstance(prep, Prepared)]
        scored = {r["file"]: r for r in self.score([p for p, _ in good], [q for _, q in good], with_heatmaps)}
        for path, prep in loaded:
            yield scored.get(path) or {"file": path, "error": prep}


def describe(probabilities: np.ndarray, classes: Sequence[str], decision: DecisionRule | None = None
             ) -> dict[str, Any]:
    """``predicted_class`` and ``probabilities`` (by class name) for one image's softmax output,
    after the model's decision rule (temperature, threshold) when given."""
    if decision is None:
        return {"predicted_class": classes[int(probabilities.argmax())],
                "probabilities": {c: float(v) for c, v in zip(classes, probabilities)}}
    calibrated = decision.calibrate(probabilities[None])
    return {"predicted_class": classes[int(decision.predict(calibrated)[0])],
            "probabilities": {c: float(v) for c, v in zip(classes, calibrated[0])}}


def _check_sha256(path: Path, expected: str | None) -> None:
    """Refuse a model file that is missing or differs from the one the model card describes."""
    from ._files import sha256

    if not path.is_file():
        raise ModelError(f"{path}: missing from the bundle")
    if expected is not None and sha256(path) != expected:
        raise ModelError(f"{path}: sha256 differs from the model card; the file changed after export")


def upsample_map(cam: np.ndarray, size: int) -> np.ndarray:
    """Scale a (h, w) map to [0, 1] by its maximum and resize it bilinearly to (size, size)."""
    from PIL import Image

    cam = cam.astype(np.float32)
    if cam.max() > 0:
        cam = cam / cam.max()
    image = Image.fromarray(cam, mode="F").resize((size, size), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(image), 0.0, 1.0)


def overlay(gray: np.ndarray, heat: np.ndarray, opacity: float = 0.45, outline: np.ndarray | None = None
            ) -> np.ndarray:
    """RGB uint8 image: the X-ray with the heatmap blended in (matplotlib's 'jet' colours) and, when given,
    the outline of a boolean mask (the lung fields) drawn in white."""
    from matplotlib import colormaps

    colours = colormaps["jet"](heat)[..., :3]
    base = to_model_input(gray)
    alpha = opacity * heat[..., None]
    picture = np.clip(base * (1 - alpha) + colours * alpha, 0, 1)
    if outline is not None:
        picture[outline_edge(outline)] = 1.0
    return (picture * 255).round().astype(np.uint8)


def outline_edge(mask: np.ndarray) -> np.ndarray:
    """The border pixels of a boolean mask, about 1 px thick per 256 px of its longer side."""
    from scipy import ndimage

    if not mask.any():
        return mask
    return mask & ~ndimage.binary_erosion(mask, iterations=max(1, round(max(mask.shape) / 256)))
