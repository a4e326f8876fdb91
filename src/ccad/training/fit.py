"""The training loops. Two train the same model (see :mod:`ccad.training.run`):

- :func:`fit_streaming`: every epoch, every training image is augmented afresh and passed through the
  backbone (the paper's way, and fine-tuning);
- :func:`fit_cached_views`: the frozen backbone runs once on each image and ``feature_views`` augmented
  copies; the head (Dropout + Dense) trains on those pooled features.

:func:`fit_sklearn_head` fits a scikit-learn head on the same cached features.
"""

from __future__ import annotations

import os

import numpy as np

from ccad.models.classifier import feature_extractor, head_of, unfreeze_for_fine_tuning
from ccad.preprocessing.augmentation import Augmenter
from ccad.preprocessing.batches import INFERENCE_BATCH, image_batches
from ccad.training.config import TrainConfig
from ccad.training.heads import fit_head

Arrays = dict  # {"train": (images (N, H, W), labels (N,)), "val": (...)}


def optimizer(name: str, lr: float):
    import keras

    return {"adam": keras.optimizers.Adam, "rmsprop": keras.optimizers.RMSprop, "sgd": keras.optimizers.SGD}[name](
        learning_rate=lr
    )


def class_weights(labels: np.ndarray, num_classes: int, mode: str | None) -> dict[int, float] | None:
    if mode != "balanced":
        return None
    from sklearn.utils.class_weight import compute_class_weight

    weights = compute_class_weight("balanced", classes=np.arange(num_classes), y=labels)
    return {i: float(w) for i, w in enumerate(weights)}


def best_weights_callback(epochs: int):
    import keras

    # patience=epochs: never stops early, but restores the epoch with the lowest validation loss.
    return keras.callbacks.EarlyStopping(monitor="val_loss", patience=epochs, restore_best_weights=True, verbose=0)


def augmenter_for(config: TrainConfig, seed_offset: int = 0) -> Augmenter | None:
    augmenter = Augmenter(config.augmentation, config.input_size, config.seed + seed_offset)
    return None if augmenter.is_identity else augmenter


def fit_streaming(
    model,
    arrays,
    classes,
    config: TrainConfig,
    verbose: int,
    first_epoch: int = 0,
    epochs: int | None = None,
    lr: float | None = None,
    callbacks=(),
) -> list[dict[str, float]]:
    (x_train, y_train), (x_val, y_val) = arrays["train"], arrays["val"]
    k = len(classes)
    epochs = epochs or config.epochs
    model.compile(
        optimizer=optimizer(config.optimizer, lr or config.lr),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=jit_compile(),
    )
    train_ds = image_batches(x_train, y_train, config.batch_size, k, augmenter_for(config), config.seed)
    val_ds = image_batches(x_val, y_val, config.batch_size, k)
    result = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=first_epoch + epochs,
        initial_epoch=first_epoch,
        class_weight=class_weights(y_train, k, config.class_weight),
        callbacks=[best_weights_callback(epochs), *callbacks],
        verbose=verbose,
        shuffle=False,
    )
    return history_rows(result.history, phase="fine-tune" if first_epoch else "frozen")


def cached_features(model, arrays, k: int, config: TrainConfig):
    """Pooled backbone features: (train originals + augmented views, their labels, val, val labels, originals)."""

    (x_train, y_train), (x_val, y_val) = arrays["train"], arrays["val"]
    extractor = feature_extractor(model)
    # The original images, then `feature_views` augmented passes over one copy of them (each pass draws
    # fresh random transforms). Without augmentation extra views would be copies, so there are none.
    f_train = extractor.predict(image_batches(x_train, None, INFERENCE_BATCH, k), verbose=0)
    augmenter = augmenter_for(config)
    if augmenter is not None and config.feature_views > 0:
        views = image_batches(x_train, None, INFERENCE_BATCH, k, augmenter, repeat=config.feature_views)
        f_train = np.concatenate([f_train, extractor.predict(views, verbose=0)])
    y_all = np.tile(y_train, len(f_train) // len(y_train))
    f_val = extractor.predict(image_batches(x_val, None, INFERENCE_BATCH, k), verbose=0)
    return f_train, y_all, f_val, y_val, f_train[: len(y_train)]


def fit_cached_views(model, arrays, classes, config: TrainConfig, verbose: int) -> list[dict[str, float]]:
    k = len(classes)
    f_train, y_all, f_val, y_val, _ = cached_features(model, arrays, k, config)
    y_train = arrays["train"][1]
    eye = np.eye(k, dtype="float32")

    head = head_of(model, f_train.shape[1])
    head.compile(
        optimizer=optimizer(config.optimizer, config.lr), loss="categorical_crossentropy", metrics=["accuracy"]
    )
    result = head.fit(
        f_train,
        eye[y_all],
        batch_size=config.batch_size,
        epochs=config.epochs,
        shuffle=True,
        validation_data=(f_val, eye[y_val]),
        class_weight=class_weights(y_train, k, config.class_weight),
        callbacks=[best_weights_callback(config.epochs)],
        verbose=verbose,
    )
    return history_rows(result.history, phase="frozen")


def fine_tune(
    model,
    arrays,
    classes,
    config: TrainConfig,
    verbose: int,
    first_epoch: int,
    best_val_loss: float = np.inf,
    callbacks=(),
) -> list[dict[str, float]]:
    """The second phase: backbone layers from ``config.fine_tune_from`` on made trainable (BatchNorm stays
    in inference mode), ``fine_tune_epochs`` streamed epochs at ``fine_tune_lr``.

    The best-validation epoch is kept across both phases: each phase restores its own best epoch, and when
    no fine-tuning epoch beats ``best_val_loss`` (the first phase's best), the first phase's weights come
    back."""
    before = [(v, v.numpy()) for v in model.weights]
    unfreeze_for_fine_tuning(model, config.fine_tune_from)
    rows = fit_streaming(
        model,
        arrays,
        classes,
        config,
        verbose,
        first_epoch=first_epoch,
        epochs=config.fine_tune_epochs,
        lr=config.fine_tune_lr,
        callbacks=callbacks,
    )
    if min((r.get("val_loss", np.inf) for r in rows), default=np.inf) >= best_val_loss:
        for variable, value in before:
            variable.assign(value)
    return rows


def jit_compile() -> bool:
    """XLA for the streamed loops (``CCAD_JIT_COMPILE=0/1``; see benchmarks/fine_tune.py)."""
    return os.environ.get("CCAD_JIT_COMPILE", "0") == "1"


def history_rows(history: dict[str, list[float]], phase: str) -> list[dict[str, float]]:
    n = len(history["loss"])
    keys = ("accuracy", "loss", "val_accuracy", "val_loss")
    return [dict({k: float(history[k][i]) for k in keys if k in history}, phase=phase) for i in range(n)]


def fit_sklearn_head(model, arrays, classes, config: TrainConfig):
    f_train, y_all, f_val, y_val, f_original = cached_features(model, arrays, len(classes), config)
    head = fit_head(
        model,
        f_train,
        y_all,
        f_val,
        y_val,
        len(classes),
        config.head,
        config.feature_selection,
        config.seed,
        f_original,
        arrays["train"][1],
    )
    return [{"phase": config.head}], head
