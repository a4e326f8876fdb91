"""One interface to a trained classifier, two ways to run it.

    >>> from ccad.scoring.predictor import load_predictor
    >>> predictor = load_predictor("bundle/")          # doctest: +SKIP  (or a run folder, or a .keras file)
    >>> probabilities, feature_maps = predictor.predict(batch)   # doctest: +SKIP  (N, H, W, 3) in [0, 1]

:class:`Predictor` holds what a model's card says (classes, preprocessing, decision rule,
out-of-distribution guard, severity head, class-activation weights) and one abstract method,
:meth:`Predictor.predict`: a (N, H, W, 3) batch -> (probabilities, last feature map).

- :class:`OnnxPredictor` runs a bundle (``ccad export``) on ONNX Runtime; nothing it imports loads
  TensorFlow.
- :class:`KerasPredictor` runs a run folder, a model file or a model in memory (training) on Keras.

Decoding, preparing and everything after the network (decision rule, guard, lung QC, severity, heatmaps)
is the application layer's :class:`ccad.screening.Screener`, which every command scores through.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ccad.errors import ModelError
from ccad.io.onnx import cpu_session
from ccad.models.card import ModelCard, ModelInfo, RunMetadata, is_bundle
from ccad.models.classifier import classifier_kernel, load_keras_model, with_feature_map
from ccad.models.heads import OnnxHead
from ccad.models.ood import Guard, load_guard
from ccad.models.severity import SeverityHead
from ccad.models.signing import verify_bundle
from ccad.preprocessing.pipeline import to_model_input
from ccad.preprocessing.steps import view_count
from ccad.scoring.heatmaps import class_activation_map

#: Images per ONNX Runtime call. On 2 cores batch 1-4 is as fast per image as 16-32, and ONNX
#: Runtime's activation arena grows with the batch (peak RSS at batch 4: ~130 MB; at 16: ~270 MB).
ONNX_BATCH = 4
#: Images per Keras call (see ccad.preprocessing.batches.INFERENCE_BATCH).
KERAS_BATCH = 16


class Predictor(ABC):
    """A trained classifier ready to score images.

    Args:
        info: the model's card (a bundle's :class:`ModelCard` or a run's :class:`RunMetadata`).
        cam_weights: (features, classes) weights of the class activation maps (None: no heatmaps).
        head: a stored non-linear head run on the pooled features after the network (extra-trees).
        ood: the out-of-distribution guard; severity: the severity head (bundles only).
    """

    batch_size = ONNX_BATCH
    #: Which of a bundle's models runs (``float`` or ``int8``), and why it should not be used for decisions.
    variant: str = "float"
    warning: str | None = None

    def __init__(
        self,
        info: ModelInfo,
        cam_weights: np.ndarray | None = None,
        head: OnnxHead | None = None,
        ood: Guard | None = None,
        severity: SeverityHead | None = None,
    ):
        self.info = info
        self.classes: list[str] = list(info.classes)
        self.positive_class: str = info.positive_class
        self.input_size: int = int(info.input_size)
        self.preprocess: str = info.preprocess
        #: How many ways the model looks at each X-ray (``--preprocess A|B``): channels of a prepared image.
        self.views: int = view_count(info.preprocess)
        self.decision = info.decision_rule()
        self.cam_weights, self.head, self.ood, self.severity = cam_weights, head, ood, severity

    # -- the network ------------------------------------------------------------------------------
    @abstractmethod
    def _network(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The network's own outputs for a (N, H, W, 3) float32 batch."""

    def predict(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities (N, k), feature maps (N, h, w, d)) for a (N, H, W, 3) batch in [0, 1]; the
        probabilities are the model's own (before the decision rule's temperature)."""
        probabilities, features = self._network(np.asarray(batch, np.float32))
        probabilities, features = np.asarray(probabilities), np.asarray(features)
        if self.head is not None:
            probabilities = self.head(features.mean(axis=(1, 2)))
        return probabilities, features

    def model_input(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3 x views) network input from (N, H, W) grayscale (one view), (N, H, W, views) prepared
        views, or an input already in that form."""
        if images.ndim == 3 or (self.views > 1 and images.shape[-1] == self.views):
            return to_model_input(images, self.views)
        return images

    def _batches(self, images: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        images = self.model_input(images)
        for i in range(0, len(images), self.batch_size):
            yield self.predict(images[i : i + self.batch_size])

    def predict_images(self, images: np.ndarray) -> np.ndarray:
        """The model's probabilities for (N, H, W) grayscale, (N, H, W, views) or (N, H, W, 3 x views)
        prepared images."""
        out = [p for p, _ in self._batches(images)]
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)

    def pooled_features(self, images: np.ndarray) -> np.ndarray:
        """(N, d) pooled backbone features for (N, H, W) grayscale or (N, H, W, 3) prepared images."""
        out = [f.mean(axis=(1, 2)) for _, f in self._batches(images)]
        return np.concatenate(out) if out else np.zeros((0, self.feature_dim), np.float32)

    @property
    def feature_dim(self) -> int:
        return int(self.cam_weights.shape[0]) if self.cam_weights is not None else 1280

    def heatmap(self, feature_map: np.ndarray, class_index: int) -> np.ndarray:
        """The class activation map of one image, (input_size, input_size) in [0, 1]; all zero for a
        non-linear head, which has none."""
        if self.head is not None or self.cam_weights is None:
            return np.zeros((self.input_size, self.input_size), np.float32)
        return class_activation_map(feature_map, self.cam_weights[:, class_index], self.input_size)


class OnnxPredictor(Predictor):
    """A model bundle on ONNX Runtime: ``OnnxPredictor.load(bundle)`` opens one (the constructor only stores
    the parts it is given).

    ``load``'s arguments:
        bundle: the bundle folder (``ccad export``).
        variant: ``"float"`` (``model.onnx``) or ``"int8"`` (``model.int8.onnx``).
        threads: ONNX Runtime intra-op threads (the paper's target: a small CPU).
        verify_key: a public key (PEM): refuse the bundle unless its card is signed by that key's owner
            (:mod:`ccad.models.signing`).
    """

    batch_size = ONNX_BATCH

    def __init__(
        self,
        bundle: str | os.PathLike,
        card: ModelCard,
        session,
        variant: str = "float",
        cam_weights: np.ndarray | None = None,
        head: OnnxHead | None = None,
        ood: Guard | None = None,
        severity: SeverityHead | None = None,
    ):
        super().__init__(card, cam_weights, head, ood, severity)
        self.bundle, self.card, self.session, self.variant = Path(bundle), card, session, variant
        self.input_name = session.get_inputs()[0].name
        self.output_names = [o.name for o in session.get_outputs()]
        #: Why this model should not be used for decisions (the INT8 model when its check failed), or None.
        self.warning = card.int8_warning() if variant == "int8" else None

    @classmethod
    def load(
        cls,
        bundle: str | os.PathLike,
        variant: str = "float",
        threads: int = 2,
        verify_key: str | os.PathLike | None = None,
    ) -> "OnnxPredictor":
        """Open a bundle: its signature checked first (``verify_key``), then each file against the card's sha256
        as it is read, and an ONNX Runtime session made."""
        import json

        bundle = Path(bundle)
        if verify_key is not None:
            verify_bundle(bundle, verify_key)  # before anything in it is used
        card = ModelCard.load(bundle)
        if variant not in card.models:
            raise ModelError(f"{bundle}: no {variant} model in this bundle (has: {', '.join(card.models)})")
        session = cpu_session(card.checked_file(bundle, card.models[variant]), threads)
        cam_weights = np.load(card.checked_file(bundle, card.heatmap["weights"]))
        head = OnnxHead.load(card.checked_file(bundle, card.head_file)) if card.head_file else None
        severity = None
        if card.severity:
            severity = SeverityHead(json.loads(card.checked_file(bundle, card.severity["file"]).read_text()))
        ood = load_guard(card.checked_file(bundle, card.ood["file"])) if card.ood else None
        predictor = cls(bundle, card, session, variant, cam_weights, head, ood, severity)
        if predictor.warning:
            import logging

            logging.getLogger("ccad").warning("%s: %s", bundle, predictor.warning)
        return predictor

    def _network(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probabilities, features = self.session.run(self.output_names, {self.input_name: batch})
        return probabilities, features


class KerasPredictor(Predictor):
    """A Keras classifier (a run folder, a model file, or a model in memory) behind the same interface.

    Args:
        model: the Keras model (:func:`ccad.models.classifier.build_classifier`).
        info: its run metadata; ``input_size`` is taken from the model.
        run_dir: the run folder, where a stored head and guard are found (None: none are loaded).
        ood: an out-of-distribution guard to use instead of the stored one.
    """

    batch_size = KERAS_BATCH

    def __init__(
        self,
        model,
        info: RunMetadata,
        run_dir: str | os.PathLike | None = None,
        head: OnnxHead | None = None,
        ood: Guard | None = None,
        dual=None,
    ):
        self.model, self.run_dir = model, Path(run_dir) if run_dir is not None else None
        info = replace(info, input_size=int(model.input_shape[1]))  # a copy: the caller's info is left as it was
        super().__init__(info, classifier_kernel(model), head, ood)
        self._dual = dual

    @classmethod
    def of(cls, model, info: RunMetadata, run_dir: str | os.PathLike | None = None, ood: Guard | None = None):
        """A model in memory (training): its stored head and guard are read from ``run_dir`` (None: none are),
        ``ood`` replacing the stored guard."""
        run_dir = Path(run_dir) if run_dir is not None else None
        head = None
        if info.head_file:
            path = (run_dir or Path(".")) / info.head_file
            if not path.is_file():
                raise ModelError(f"{path}: the model's {info.head.get('kind')} head is missing")
            head = OnnxHead.load(path)
        if ood is None and info.ood and run_dir is not None and (run_dir / info.ood["file"]).is_file():
            ood = load_guard(run_dir / info.ood["file"])
        return cls(model, info, run_dir, head, ood, with_feature_map(model))

    @classmethod
    def load(cls, run_or_model: str | os.PathLike, classes: Sequence[str] | None = None) -> "KerasPredictor":
        """From a run folder (``model.keras`` + ``config.json``) or a ``.keras``/``.h5`` file (its classes
        from a ``config.json`` beside it, or ``classes``)."""

        path = Path(run_or_model)
        if path.is_dir():
            model_file = path / "model.keras"
            if not model_file.is_file() and (path / "model.onnx").is_file():
                raise ModelError(
                    f"{path}: a model bundle without its card (ccad-model.json): re-export it with "
                    "ccad export, or restore the card"
                )
            if not model_file.is_file():
                raise ModelError(f"{path}: no model.keras in this folder (is it a ccad run folder?)")
        elif path.is_file():
            model_file = path
        else:
            raise ModelError(f"{path}: no such model file or run folder")
        model = load_keras_model(model_file)
        shape = model.output_shape[0] if isinstance(model.output_shape, list) else model.output_shape
        info = RunMetadata.load(model_file.parent, classes, outputs=int(shape[-1]))
        return cls.of(model, info, model_file.parent)

    @property
    def network(self):
        """The Keras model with both outputs (probabilities, last feature map): what a bundle exports."""
        return self._dual

    def _network(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._dual.predict_on_batch(batch)


def load_predictor(
    model: str | os.PathLike,
    classes: Sequence[str] | None = None,
    variant: str = "float",
    verify_key: str | os.PathLike | None = None,
    threads: int = 2,
) -> Predictor:
    """A bundle's :class:`OnnxPredictor` (no TensorFlow), else a run folder's or model file's
    :class:`KerasPredictor`. With ``verify_key`` only a bundle signed by that key is accepted."""
    if is_bundle(model):
        return OnnxPredictor.load(model, variant=variant, threads=threads, verify_key=verify_key)
    if verify_key is not None:
        raise ModelError(f"{model}: `verify` needs a signed model bundle (ccad export --sign)")
    if variant != "float":
        raise ModelError(f"{model}: the {variant} model needs a bundle (ccad export --int8)")
    return KerasPredictor.load(model, classes)


def run_folder(run_or_model: str | os.PathLike) -> Path:
    """The run folder of a run folder or of a model file inside one."""
    path = Path(run_or_model)
    return path if path.is_dir() else path.parent
