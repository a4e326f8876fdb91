"""Training a classifier: presets, the two training loops, and the run folder.

Two loops train the same model:

- *streaming* (the paper's way, all ``paper-*`` presets): every epoch, every
  training image is augmented afresh and passed through the frozen backbone.
- *cached views* (the default recipe): the frozen backbone runs once on the
  original image and on ``feature_views`` augmented copies of it; the head
  (Dropout + Dense, the only trainable layers) is then trained on those pooled
  features for ``epochs`` passes. Same model, same loss; the backbone, which is
  >99% of the compute and does not change, is not re-run every epoch.

Fine-tuning (``fine_tune_epochs > 0``) always streams, since the backbone changes.
"""

from __future__ import annotations

import csv
import io
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import __version__
from ._files import atomic_path, write_json, write_text
from .augmentation import Augmenter, get_spec
from .data import Dataset, assign_splits, discover, label_indices, load_images, write_split
from .decision import DecisionRule, fit_decision, validate_settings
from .images import preprocessing_steps
from .errors import ConfigError, DataError
from .ood import OOD_FILE

OPTIMIZERS = ("adam", "rmsprop", "sgd")
#: Batch size of inference-only passes (feature caching, evaluation). MobileNetV2's early activations at
#: 224 px take ~20 MB an image, so 16 keeps a training process near 1 GB where 64 costs 1.9 GB, at equal speed.
INFERENCE_BATCH = 16


@dataclass
class TrainConfig:
    """Every setting of a training run. ``preset`` names where the defaults came from."""

    preset: str = "default"
    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 1e-3
    dropout: float = 0.3
    input_size: int = 0  # 0: the backbone's default (224; 299 for the Inception family and Xception)
    augmentation: str = "cxr"
    feature_views: int = 4
    weights: str = "imagenet"
    seed: int = 0
    class_weight: str | None = None
    fine_tune_epochs: int = 0
    fine_tune_from: str | None = None
    fine_tune_lr: float = 1e-5
    preprocess: str = "lungs+equalize+lowpass"
    backbone: str = "mobilenet_v2"
    head: str = "dense"
    feature_selection: str = "none"
    distributed: bool = False
    threshold: str = "youden"
    calibration: str = "none"

    def validate(self) -> "TrainConfig":
        from .model import get_backbone

        spec = get_backbone(self.backbone)
        if not self.input_size:
            self.input_size = spec.default_size
        checks = [
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"),
            (self.lr > 0 and self.fine_tune_lr > 0, "learning rates must be positive"),
            (0.0 <= self.dropout < 1.0, f"--dropout must be in [0, 1), got {self.dropout}"),
            (self.feature_views >= 0, f"--feature-views must be 0 or more, got {self.feature_views}"),
            (self.fine_tune_epochs >= 0, f"--fine-tune-epochs must be 0 or more, got {self.fine_tune_epochs}"),
            (self.class_weight in (None, "balanced"), f"--class-weight must be 'balanced', got {self.class_weight!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        get_spec(self.augmentation)
        preprocessing_steps(self.preprocess)
        validate_settings(self.threshold, self.calibration)
        from .heads import validate as validate_head

        validate_head(self.head, self.feature_selection)
        if self.distributed and self.head != "dense":
            raise ConfigError("--distributed trains the dense head (scikit-learn heads fit on one machine)")
        if self.distributed:
            self.feature_views = 0  # multi-worker training streams images every epoch (see ccad.distributed)
        if self.head != "dense" and self.fine_tune_epochs:
            raise ConfigError("--fine-tune-epochs needs the dense head (scikit-learn heads sit on frozen features)")
        return self


#: The paper's three experimental cases, as its Evaluation Results section trained
#: them (Adam 1e-3, batch 30, 10 epochs, 224 px, Table 4 augmentation). Its Methods
#: section names RMSprop 1e-4 and batch 32: ``--optimizer rmsprop --lr 1e-4 --batch-size 32``.
_PAPER = dict(epochs=10, batch_size=30, optimizer="adam", lr=1e-3, input_size=224, augmentation="paper", feature_views=0,
              preprocess="none", threshold="argmax")
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "paper-a": dict(_PAPER, dropout=0.3),
    "paper-b": dict(_PAPER, dropout=0.4),
    "paper-b-10ep": dict(_PAPER, dropout=0.5),
}


def make_config(preset: str | None = None, **overrides: Any) -> TrainConfig:
    """A :class:`TrainConfig` from a preset plus overrides (``None`` values are ignored)."""
    preset = preset or "default"
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    values = dict(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(preset=preset, **values).validate()


@dataclass
class TrainResult:
    run_dir: Path
    model: Any
    dataset: Dataset
    config: TrainConfig
    history: list[dict[str, float]]
    metrics: dict[str, Any] | None
    decision: DecisionRule | None = None
    timings: dict[str, float] = field(default_factory=dict)
    head: dict[str, Any] | None = None

    @property
    def features_kept(self) -> int | None:
        return self.head.get("features_kept") if self.head else None


def train(
    data: str | os.PathLike | Dataset,
    out: str | os.PathLike,
    config: TrainConfig | None = None,
    classes: Sequence[str] | None = None,
    where: Sequence[str] = (),
    positive_class: str | None = "covid",
    skip_bad: bool = False,
    save_h5: bool = False,
    evaluate_test: bool = True,
    verbose: int | None = None,
    relabel: Sequence[str] = (),
) -> TrainResult:
    """Train on ``data`` (a folder, a manifest, or a :class:`Dataset` whose samples already
    have splits) and write the run folder ``out``.

    ``out`` receives ``split.csv``, ``history.csv``, ``config.json``,
    ``model.keras`` (atomically; ``model.h5`` too with ``save_h5``) and, unless
    ``evaluate_test`` is false, the test-split evaluation (``metrics.json``,
    ``figures/``, ``report.html``) exactly as :func:`ccad.evaluation.evaluate` writes it.
    """
    import contextlib
    import tempfile

    import keras

    config = (config or TrainConfig()).validate()
    verbose = (1 if sys.stdout.isatty() else 2) if verbose is None else verbose
    run_dir = Path(out)
    strategy, cluster, fit_config = None, None, config
    if config.distributed:
        from dataclasses import replace

        from .distributed import multi_worker_strategy

        strategy, cluster = multi_worker_strategy()  # before any other TensorFlow op
        if not cluster.is_chief:
            run_dir = Path(tempfile.mkdtemp(prefix="ccad-worker-"))
            evaluate_test = False
        fit_config = replace(config, batch_size=config.batch_size * cluster.workers, lr=config.lr * cluster.workers)
    if isinstance(data, Dataset):
        dataset = data if all(s.split for s in data.samples) else assign_splits(data, seed=config.seed)
    else:
        dataset = assign_splits(discover(data, classes, where, positive_class, relabel=relabel), seed=config.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_split(dataset, run_dir / "split.csv")

    timings: dict[str, float] = {}
    start = time.perf_counter()
    arrays = {}
    for split in ("train", "val"):
        images, kept, bad = load_images(dataset.subset(split), config.input_size, skip_bad,
                                        preprocess=config.preprocess)
        arrays[split] = (images, label_indices(kept, dataset.classes))
        dataset.bad_files.extend(bad)
    _check_trainable(arrays, dataset)
    timings["load_s"] = time.perf_counter() - start

    keras.utils.set_random_seed(config.seed)
    from .model import build_classifier

    spec = get_spec(config.augmentation)
    start = time.perf_counter()
    head = None
    with strategy.scope() if strategy else contextlib.nullcontext():
        model = build_classifier(len(dataset.classes), config.input_size, config.dropout, config.weights,
                                 featurewise_mean=float(arrays["train"][0].mean()) if spec.featurewise_center else None,
                                 samplewise_center=spec.samplewise_center, backbone=config.backbone)
        if config.head != "dense":
            history, head = _fit_sklearn_head(model, arrays, dataset.classes, config)
            timings["head_fit_s"] = head.pop("fit_s")
        elif strategy is not None:
            from .distributed import fit_multi_worker

            history = fit_multi_worker(model, strategy, arrays, dataset.classes, fit_config, run_dir / "checkpoints")
            if config.fine_tune_epochs:
                from .model import unfreeze_for_fine_tuning

                unfreeze_for_fine_tuning(model, config.fine_tune_from)
                history += fit_multi_worker(model, strategy, arrays, dataset.classes, fit_config,
                                            run_dir / "checkpoints", first_epoch=len(history),
                                            epochs=config.fine_tune_epochs,
                                            lr=config.fine_tune_lr * cluster.workers)
        else:
            fit = _fit_cached_views if config.feature_views > 0 else _fit_streaming
            history = fit(model, arrays, dataset.classes, config, verbose)
        if config.fine_tune_epochs and strategy is None:
            history += _fine_tune(model, arrays, dataset.classes, config, verbose, first_epoch=len(history))
    timings["train_s"] = time.perf_counter() - start
    if strategy is not None:  # every worker saves (a collective step); continue on a plain copy
        from .model import load_keras_model

        with atomic_path(run_dir / "model.keras") as tmp:
            model.save(tmp)
        model = load_keras_model(run_dir / "model.keras")
        timings["distributed"] = {"workers": cluster.workers, "task": cluster.task,
                                  "global_batch_size": fit_config.batch_size, "scaled_lr": fit_config.lr}
    timings["train_images_per_s"] = len(arrays["train"][0]) * len(history) / timings["train_s"]
    scorer = _scorer_with_head(model, head, run_dir)
    decision = _fit_decision(scorer, arrays["val"], dataset, config)
    start = time.perf_counter()
    ood = _fit_ood(model, arrays)
    ood.save(run_dir / OOD_FILE)
    timings["ood_fit_s"] = time.perf_counter() - start

    _save_run(run_dir, model, dataset, config, history, timings, save_h5, decision, head, ood)
    metrics = None
    if evaluate_test and dataset.subset("test"):
        from .evaluation import evaluate

        meta = run_metadata(dataset, config, decision, head, ood)
        metrics = evaluate(scorer, dataset, run_dir, split="test", meta=meta, skip_bad=skip_bad,
                           history=history if config.head == "dense" else None, ood=ood)
    if cluster is not None and not cluster.is_chief:
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)
    return TrainResult(run_dir, model, dataset, config, history, metrics, decision, timings, head)


def _fit_decision(scorer, val: tuple[np.ndarray, np.ndarray], dataset: Dataset, config: TrainConfig) -> DecisionRule:
    """Temperature (optional) and threshold, fitted on the validation split only."""
    from .evaluation import predict_probabilities

    images, labels = val
    probabilities = (scorer.predict_images(images) if hasattr(scorer, "predict_images")
                     else predict_probabilities(scorer, images))
    return fit_decision(labels, probabilities, dataset.classes, dataset.positive_class
                        or dataset.classes[-1], config.threshold, config.calibration, fitted_on="the validation split")


def _scorer_with_head(model, head: dict[str, Any] | None, run_dir: Path):
    """The Keras model, or for a stored (non-linear) head a Classifier-like scorer running both parts."""
    if not head or "onnx" not in head:
        return model
    from .inference import Classifier

    with atomic_path(run_dir / head["file"]) as tmp:
        Path(tmp).write_bytes(head.pop("onnx"))
    meta = {"head": {"kind": head["kind"], "file": head["file"]}}
    return Classifier(model, [], "", int(model.input_shape[1]), meta, run_dir=run_dir)


def _fit_sklearn_head(model, arrays, classes, config: TrainConfig):
    from .heads import fit_head

    f_train, y_all, f_val, y_val, f_original = _cached_features(model, arrays, len(classes), config)
    head = fit_head(model, f_train, y_all, f_val, y_val, len(classes), config.head, config.feature_selection,
                    config.seed, f_original, arrays["train"][1])
    head["selected_features"] = np.flatnonzero(head.pop("mask")).tolist()
    return [{"phase": config.head}], head


def _check_trainable(arrays: dict, dataset: Dataset) -> None:
    for split, (images, labels) in arrays.items():
        present = set(labels.tolist())
        if len(images) == 0 or len(present) < len(dataset.classes):
            missing = [c for i, c in enumerate(dataset.classes) if i not in present]
            raise DataError(f"{dataset.source}: the {split} split has no readable images of {', '.join(missing)}")


def _optimizer(name: str, lr: float):
    import keras

    return {"adam": keras.optimizers.Adam, "rmsprop": keras.optimizers.RMSprop, "sgd": keras.optimizers.SGD}[name](
        learning_rate=lr
    )


def _class_weights(labels: np.ndarray, num_classes: int, mode: str | None) -> dict[int, float] | None:
    if mode != "balanced":
        return None
    from sklearn.utils.class_weight import compute_class_weight

    weights = compute_class_weight("balanced", classes=np.arange(num_classes), y=labels)
    return {i: float(w) for i, w in enumerate(weights)}


def _best_weights_callback(epochs: int):
    import keras

    # patience=epochs: never stops early, but restores the epoch with the lowest validation loss.
    return keras.callbacks.EarlyStopping(monitor="val_loss", patience=epochs, restore_best_weights=True, verbose=0)


def image_batches(images: np.ndarray, labels: np.ndarray | None, batch_size: int, num_classes: int,
                  augmenter: Augmenter | None = None, shuffle_seed: int | None = None, repeat: int = 1):
    """A ``tf.data`` pipeline of (B, H, W, 3) batches from (N, H, W) grayscale images in [0, 1].

    Augmentation runs on the single gray channel, which is then repeated to 3.
    """
    import tensorflow as tf

    x = tf.data.Dataset.from_tensor_slices(images)
    if labels is not None:
        x = tf.data.Dataset.zip((x, tf.data.Dataset.from_tensor_slices(np.eye(num_classes, dtype="float32")[labels])))
    else:
        x = x.map(lambda im: (im, 0.0))
    if shuffle_seed is not None:
        x = x.shuffle(len(images), seed=shuffle_seed, reshuffle_each_iteration=True)
    if repeat > 1:
        x = x.repeat(repeat)

    def prepare(im, label):
        im = im[..., None]
        if augmenter is not None:
            im = augmenter(im)  # on one channel: a third of the pixel work
        return tf.repeat(im, 3, axis=-1), label

    x = x.batch(batch_size).map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    if labels is None:
        x = x.map(lambda im, _: im)
    return x.prefetch(tf.data.AUTOTUNE)


def _augmenter(config: TrainConfig, seed_offset: int = 0) -> Augmenter | None:
    augmenter = Augmenter(config.augmentation, config.input_size, config.seed + seed_offset)
    return None if augmenter.is_identity else augmenter


def _fit_streaming(model, arrays, classes, config: TrainConfig, verbose: int, first_epoch: int = 0,
                   epochs: int | None = None, lr: float | None = None) -> list[dict[str, float]]:
    (x_train, y_train), (x_val, y_val) = arrays["train"], arrays["val"]
    k = len(classes)
    epochs = epochs or config.epochs
    model.compile(optimizer=_optimizer(config.optimizer, lr or config.lr), loss="categorical_crossentropy",
                  metrics=["accuracy"])
    train_ds = image_batches(x_train, y_train, config.batch_size, k, _augmenter(config), config.seed)
    val_ds = image_batches(x_val, y_val, config.batch_size, k)
    result = model.fit(train_ds, validation_data=val_ds, epochs=first_epoch + epochs, initial_epoch=first_epoch,
                       class_weight=_class_weights(y_train, k, config.class_weight),
                       callbacks=[_best_weights_callback(epochs)], verbose=verbose, shuffle=False)
    return _history_rows(result.history, phase="fine-tune" if first_epoch else "frozen")


def _cached_features(model, arrays, k: int, config: TrainConfig):
    """Pooled backbone features: (train originals + augmented views, their labels, val, val labels, originals)."""
    from .model import feature_extractor

    (x_train, y_train), (x_val, y_val) = arrays["train"], arrays["val"]
    extractor = feature_extractor(model)
    # The original images, then `feature_views` augmented passes over one copy of them (each pass draws
    # fresh random transforms). Without augmentation extra views would be copies, so there are none.
    f_train = extractor.predict(image_batches(x_train, None, INFERENCE_BATCH, k), verbose=0)
    augmenter = _augmenter(config)
    if augmenter is not None and config.feature_views > 0:
        views = image_batches(x_train, None, INFERENCE_BATCH, k, augmenter, repeat=config.feature_views)
        f_train = np.concatenate([f_train, extractor.predict(views, verbose=0)])
    y_all = np.tile(y_train, len(f_train) // len(y_train))
    f_val = extractor.predict(image_batches(x_val, None, INFERENCE_BATCH, k), verbose=0)
    return f_train, y_all, f_val, y_val, f_train[:len(y_train)]


def _fit_cached_views(model, arrays, classes, config: TrainConfig, verbose: int) -> list[dict[str, float]]:
    from .model import head_of

    k = len(classes)
    f_train, y_all, f_val, y_val, _ = _cached_features(model, arrays, k, config)
    y_train = arrays["train"][1]
    eye = np.eye(k, dtype="float32")

    head = head_of(model, f_train.shape[1])
    head.compile(optimizer=_optimizer(config.optimizer, config.lr), loss="categorical_crossentropy",
                 metrics=["accuracy"])
    result = head.fit(f_train, eye[y_all], batch_size=config.batch_size, epochs=config.epochs, shuffle=True,
                      validation_data=(f_val, eye[y_val]),
                      class_weight=_class_weights(y_train, k, config.class_weight),
                      callbacks=[_best_weights_callback(config.epochs)], verbose=verbose)
    return _history_rows(result.history, phase="frozen")


def _fine_tune(model, arrays, classes, config: TrainConfig, verbose: int, first_epoch: int):
    from .model import unfreeze_for_fine_tuning

    unfreeze_for_fine_tuning(model, config.fine_tune_from)
    return _fit_streaming(model, arrays, classes, config, verbose, first_epoch=first_epoch,
                          epochs=config.fine_tune_epochs, lr=config.fine_tune_lr)


def _history_rows(history: dict[str, list[float]], phase: str) -> list[dict[str, float]]:
    n = len(history["loss"])
    keys = ("accuracy", "loss", "val_accuracy", "val_loss")
    return [dict({k: float(history[k][i]) for k in keys if k in history}, phase=phase) for i in range(n)]


def library_versions(extra: Sequence[str] = ()) -> dict[str, str]:
    """Python, ccad and the installed versions of the libraries a model depends on (plus ``extra``)."""
    import importlib.metadata as md

    versions = {"python": platform.python_version(), "ccad": __version__}
    for name in ("keras", "tensorflow-cpu", "tensorflow", "numpy", "scikit-learn", "pillow", "pydicom", *extra):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return versions


def _backbone_name(name: str) -> str:
    from .model import get_backbone

    application = get_backbone(name).application
    return f"{application} (alpha 1.0)" if name in ("mobilenet_v2", "mobilenet") else application


def _fit_ood(model, arrays: dict):
    """The out-of-distribution guard on the pooled features of the (unaugmented) training and validation images."""
    from .evaluation import pooled_features
    from .ood import fit_ood_guard

    return fit_ood_guard(pooled_features(model, arrays["train"][0]), pooled_features(model, arrays["val"][0]))


def run_metadata(dataset: Dataset, config: TrainConfig, decision: DecisionRule | None = None,
                 head: dict[str, Any] | None = None, ood=None) -> dict[str, Any]:
    """What a loader needs to use the model, plus what it was trained on."""
    return {
        "ccad_version": __version__,
        "classes": dataset.classes,
        "positive_class": dataset.positive_class,
        "input_size": config.input_size,
        "backbone": _backbone_name(config.backbone),
        "weights": config.weights,
        "preprocessing": "grayscale, [0,1] (8-bit /255; deeper: min-max), then `preprocess`, bilinear resize "
                         "to input_size, 3 channels",
        "preprocess": config.preprocess,
        "decision": decision.to_dict() if decision else None,
        "head": head or {"kind": "dense"},
        "ood": ood.describe() if ood is not None else None,
        "data": {"source": dataset.source, "layout": dataset.layout, "counts": dataset.counts(),
                 "sha256": dataset.fingerprint(), "bad_files_skipped": len(dataset.bad_files)},
    }


def _save_run(run_dir: Path, model, dataset: Dataset, config: TrainConfig, history, timings, save_h5: bool,
              decision: DecisionRule | None = None, head: dict[str, Any] | None = None, ood=None) -> None:
    from .model import count_parameters

    with atomic_path(run_dir / "model.keras") as tmp:
        model.save(tmp)
    if save_h5:
        with atomic_path(run_dir / "model.h5") as tmp:
            model.save(tmp)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["epoch", "phase", "accuracy", "loss", "val_accuracy", "val_loss"])
    writer.writeheader()
    for epoch, row in enumerate(history, start=1):
        writer.writerow(dict(row, epoch=epoch))
    write_text(run_dir / "history.csv", buffer.getvalue())
    if dataset.bad_files:
        write_text(run_dir / "bad_files.csv", "path,error\n" + "".join(
            f"\"{p}\",\"{e.replace(chr(34), chr(39))}\"\n" for p, e in dataset.bad_files))
    total, trainable = count_parameters(model)
    best = min(range(len(history)), key=lambda i: history[i].get("val_loss", np.inf))
    write_json(run_dir / "config.json", dict(
        run_metadata(dataset, config, decision, head, ood),
        config=asdict(config),
        parameters={"total": total, "trainable": trainable},
        best_epoch=best + 1,
        timings=timings,
        versions=library_versions(),
    ))

