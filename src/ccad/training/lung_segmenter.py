"""``ccad lungs train``: the lung segmenter shipped in the package, and how to rebuild it.

A U-Net on the ImageNet MobileNetV2 encoder (as in keras-io's segmentation
examples and TensorFlow's image-segmentation tutorial): the encoder's
``block_1/3/6/13_expand_relu`` activations are the skip connections, its
``block_16_project`` output the bottleneck; each decoder stage is a bilinear
upsampling, a concatenation with the skip (reduced by a 1x1 convolution) and
two separable 3x3 convolutions, with no batch normalization in the decoder
(with it, the model trained well in training mode and predicted nothing in
inference mode: batch statistics under augmentation did not match). Input: (S, S, 1) in [0, 1] after the
segmenter's own histogram equalization (:func:`ccad.models.lungs.segmenter_input`);
output: the lung probability at (S, S).

Training: patient-grouped train/validation/test split of the mask manifest
(70/15/15 of patients), augmentation that keeps anatomy plausible (rotation
+-8 degrees, zoom +-10%, shift +-6%, blur or noise; no flip: the heart stays on
its side), loss = binary cross-entropy + soft Dice, both over the labelled
pixels only (mask value 127 = "ignore" carries no loss). The encoder's batch
normalization keeps its ImageNet statistics (inference mode), so training and
prediction normalize alike. Adam with cosine decay; the best
validation Dice epoch is kept. The result is exported to ONNX, quantized to
INT8 (ONNX Runtime static quantization: 2.4 MB instead of 7.7 MB, a quarter
faster, the same held-out Dice to three decimals) and scored on
the held-out patients **through the same ONNX Runtime path that ccad uses**
(:class:`ccad.models.lungs.LungSegmenter`), at each mask's own resolution
(:mod:`ccad.training.lung_segmenter_scores`).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ccad.errors import DataError, ModelError
from ccad.io.files import sha256, write_json
from ccad.io.images import read_grayscale, resize_hw
from ccad.models.classifier import imagenet_weights_file
from ccad.models.lungs import segmenter_input
from ccad.models.quantize import quantize_onnx
from ccad.training.lung_segmenter_scores import read_mask, score_segmenter

DEFAULT_SIZE = 192
DEFAULT_EPOCHS = 30
SKIPS = ("block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu", "block_13_expand_relu")
BOTTLENECK = "block_16_project"
DECODER_FILTERS = (96, 64, 48, 32)
CALIBRATION_IMAGES = 60


def read_mask_manifest(manifest: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of a lung-mask manifest (``image``, ``mask``, ``group``), paths made absolute."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise DataError(f"{manifest}: no such manifest (a CSV with image, mask and group columns)")
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    missing = {"image", "mask", "group"} - set(rows[0] if rows else {})
    if missing:
        raise DataError(f"{manifest}: missing column(s) {', '.join(sorted(missing))}")
    for row in rows:
        row["image"] = str(manifest.parent / row["image"])
        row["mask"] = str(manifest.parent / row["mask"])
    return rows


def grouped_split(groups: list[str], seed: int = 0, fractions=(0.70, 0.15, 0.15)) -> list[str]:
    """``train`` / ``val`` / ``test`` per row, whole patient groups, patients shuffled by ``seed``."""
    unique = sorted(set(groups))
    rng = np.random.default_rng(seed)
    rng.shuffle(unique)
    n_train = round(fractions[0] * len(unique))
    n_val = round(fractions[1] * len(unique))
    part = {g: "train" for g in unique[:n_train]}
    part.update({g: "val" for g in unique[n_train : n_train + n_val]})
    part.update({g: "test" for g in unique[n_train + n_val :]})
    return [part[g] for g in groups]


def _load_arrays(rows, size: int) -> np.ndarray:
    """(N, S, S, 3) float32: segmenter input, lung target, labelled weight."""

    out = np.zeros((len(rows), size, size, 3), np.float32)
    for i, row in enumerate(rows):
        out[i, ..., 0] = segmenter_input(read_grayscale(row["image"]), size)
        lung, labelled = read_mask(row["mask"])
        out[i, ..., 1] = resize_hw(lung.astype(np.float32), size, size)
        out[i, ..., 2] = resize_hw(labelled.astype(np.float32), size, size) >= 0.999
    return out


def build_segmenter(size: int = DEFAULT_SIZE, weights: str | None = "imagenet"):
    """The U-Net (Keras): (S, S, 1) in [0, 1] -> (S, S, 1) lung probability."""
    import keras
    from keras import layers

    if weights == "imagenet":
        weights_file = imagenet_weights_file(224)  # the same kernels at every input size
        if not weights_file.is_file():
            raise ModelError(f"no ImageNet MobileNetV2 weights at {weights_file} (set KERAS_HOME, or `weights` none)")
        weights = str(weights_file)
    inputs = keras.Input((size, size, 1), name="image")
    x = layers.Concatenate(name="gray_to_rgb")([inputs, inputs, inputs])
    x = layers.Rescaling(2.0, offset=-1.0, name="to_mobilenet_range")(x)
    encoder = keras.applications.MobileNetV2(input_shape=(size, size, 3), include_top=False, weights=weights)
    for layer in encoder.layers:  # ImageNet statistics, in inference mode (a few hundred steps cannot move
        if isinstance(layer, layers.BatchNormalization):  # moving averages with momentum 0.999)
            layer.trainable = False
    features = keras.Model(encoder.input, [encoder.get_layer(n).output for n in (*SKIPS, BOTTLENECK)], name="encoder")
    *skips, x = features(x)
    for i, (skip, filters) in enumerate(zip(reversed(skips), DECODER_FILTERS)):
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"up{i}")(x)
        s = layers.Conv2D(filters // 2, 1, activation="relu", name=f"skip{i}")(skip)
        x = layers.Concatenate(name=f"cat{i}")([x, s])
        for j in range(2):
            x = layers.SeparableConv2D(filters, 3, padding="same", activation="relu", name=f"dec{i}_{j}")(x)
    x = layers.UpSampling2D(2, interpolation="bilinear", name="up_out")(x)
    x = layers.SeparableConv2D(16, 3, padding="same", activation="relu", name="head")(x)
    outputs = layers.Conv2D(1, 1, activation="sigmoid", name="lung_probability")(x)
    return keras.Model(inputs, outputs, name="ccad_lung_unet")


def _augment(batch, seed: int):
    """Geometric augmentation applied alike to image, target and weight; then blur or noise on the image."""
    import keras
    import tensorflow as tf

    geometry = keras.Sequential(
        [
            keras.layers.RandomRotation(8 / 360, fill_mode="constant", seed=seed),
            keras.layers.RandomZoom((-0.1, 0.1), fill_mode="constant", seed=seed + 1),
            keras.layers.RandomTranslation(0.06, 0.06, fill_mode="constant", seed=seed + 2),
        ]
    )

    def apply(x):
        x = geometry(x, training=True)
        image, target, weight = x[..., :1], x[..., 1:2], tf.cast(x[..., 2:3] > 0.5, tf.float32)
        n = tf.shape(image)[0]
        noise = tf.random.normal(tf.shape(image), stddev=0.03) * tf.cast(
            tf.random.uniform([n, 1, 1, 1]) < 0.3, tf.float32
        )
        blurred = tf.nn.avg_pool2d(image, 3, 1, "SAME")
        use_blur = tf.cast(tf.random.uniform([n, 1, 1, 1]) < 0.3, tf.float32)
        image = tf.clip_by_value(use_blur * blurred + (1 - use_blur) * image + noise, 0.0, 1.0)
        return image, tf.concat([target, weight], axis=-1)

    return batch.map(apply, num_parallel_calls=tf.data.AUTOTUNE)


def _loss(y, p):
    import keras.ops as K

    target, weight = y[..., :1], y[..., 1:2]
    p = K.clip(p, 1e-6, 1 - 1e-6)
    bce = -(target * K.log(p) + (1 - target) * K.log(1 - p))
    bce = K.sum(bce * weight, axis=(1, 2, 3)) / (K.sum(weight, axis=(1, 2, 3)) + 1.0)
    inter = K.sum(p * target * weight, axis=(1, 2, 3))
    total = K.sum((p + target) * weight, axis=(1, 2, 3))
    dice = 1 - (2 * inter + 1) / (total + 1)
    return bce + dice


def _dice_metric(y, p):
    import keras.ops as K

    target, weight = y[..., :1], y[..., 1:2]
    hard = K.cast(p >= 0.5, "float32")
    inter = K.sum(hard * target * weight, axis=(1, 2, 3))
    total = K.sum((hard + target) * weight, axis=(1, 2, 3))
    return (2 * inter + 1) / (total + 1)


def train_segmenter(
    manifest: str | os.PathLike,
    out: str | os.PathLike,
    size: int = DEFAULT_SIZE,
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = 16,
    learning_rate: float = 1e-3,
    seed: int = 0,
    weights: str | None = "imagenet",
    log=None,
) -> dict[str, Any]:
    """Train, export to ONNX, score the held-out patients; write ``out/`` and return the card.

    ``out`` receives ``lung-segmenter.onnx``, ``lung-segmenter.json`` (the card: data, licence,
    held-out Dice/IoU, sha256, input size), ``split.csv``, ``test_scores.csv``, ``history.csv`` and
    ``overlays.png`` (the worst and median held-out cases).
    """
    log = log or logging.getLogger("ccad").info
    out = Path(out)
    rows = read_mask_manifest(manifest)
    parts = grouped_split([r["group"] for r in rows], seed)
    by_part = {p: [r for r, q in zip(rows, parts) if q == p] for p in ("train", "val", "test")}
    log(
        f"lung segmenter: {len(rows)} images, {len(set(r['group'] for r in rows))} patients; "
        + ", ".join(f"{p} {len(v)}" for p, v in by_part.items())
    )
    fitted = _fit_and_export(by_part, out, size, epochs, batch_size, learning_rate, seed, weights)
    _write_history_and_split(out, fitted["history"], rows, parts)
    card = _card(fitted, rows, by_part, size, epochs, batch_size, learning_rate, seed)
    write_json(out / "lung-segmenter.json", card)  # the folder is a segmenter now: score it as shipped
    card["held_out"] = score_segmenter(out, by_part["test"], out)
    card["held_out_float"] = _float_scores(out, card, by_part["test"])
    write_json(out / "lung-segmenter.json", card)
    log(json.dumps(card["held_out"], indent=2))
    return card


def _fit_and_export(by_part, out: Path, size, epochs, batch_size, learning_rate, seed, weights) -> dict[str, Any]:
    """Fit on the training patients (the best epoch on validation Dice kept); ``out/lung-segmenter.onnx``
    (INT8, calibrated on training images) and ``lung-segmenter.float.onnx``."""
    import contextlib
    import io

    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    train = _load_arrays(by_part["train"], size)
    val = _load_arrays(by_part["val"], size)
    train_ds = tf.data.Dataset.from_tensor_slices(train).shuffle(len(train), seed=seed).batch(batch_size)
    train_ds = _augment(train_ds, seed).prefetch(2)
    val_ds = tf.data.Dataset.from_tensor_slices((val[..., :1], val[..., 1:])).batch(batch_size)
    model = build_segmenter(size, weights)
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, epochs * int(np.ceil(len(train) / batch_size)))
    model.compile(keras.optimizers.Adam(schedule), loss=_loss, metrics=[_dice_metric])
    work = Path(tempfile.mkdtemp(prefix=".lungseg."))
    try:
        best = keras.callbacks.ModelCheckpoint(
            str(work / "best.weights.h5"),
            monitor="val__dice_metric",
            mode="max",
            save_best_only=True,
            save_weights_only=True,
        )
        started = time.perf_counter()
        history = model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=[best], verbose=2)
        train_seconds = time.perf_counter() - started
        model.load_weights(work / "best.weights.h5")
        out.mkdir(parents=True, exist_ok=True)
        with contextlib.redirect_stdout(io.StringIO()):
            model.export(str(work / "float.onnx"), format="onnx", verbose=False)
        quantize_onnx(work / "float.onnx", work / "lung-segmenter.onnx", train[:CALIBRATION_IMAGES, ..., :1])
        shutil.move(str(work / "lung-segmenter.onnx"), out / "lung-segmenter.onnx")
        shutil.move(str(work / "float.onnx"), out / "lung-segmenter.float.onnx")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "history": history.history,
        "seconds": train_seconds,
        "parameters": int(model.count_params()),
        "calibration_images": min(CALIBRATION_IMAGES, len(train)),
        "out": out,
    }


def _write_history_and_split(out: Path, history: dict, rows, parts) -> None:
    with open(out / "history.csv", "w", newline="") as f:
        w = csv.writer(f)
        keys = list(history)
        w.writerow(["epoch", *keys])
        for e in range(len(history[keys[0]])):
            w.writerow([e + 1, *(f"{history[k][e]:.5f}" for k in keys)])
    with open(out / "split.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "group", "split"])
        for r, p in zip(rows, parts):
            w.writerow([Path(r["image"]).name, r["group"], p])


def _float_scores(out: Path, card: dict[str, Any], test_rows) -> dict[str, Any]:
    """The float model's held-out scores, for the card (scored from a folder of its own)."""
    float_dir = Path(tempfile.mkdtemp(prefix=".lungseg-float."))
    try:
        shutil.copyfile(out / "lung-segmenter.float.onnx", float_dir / "lung-segmenter.onnx")
        write_json(float_dir / "lung-segmenter.json", dict(card, sha256={}))
        return score_segmenter(float_dir, test_rows, float_dir)
    finally:
        shutil.rmtree(float_dir, ignore_errors=True)


def _card(fitted, rows, by_part, size, epochs, batch_size, learning_rate, seed) -> dict[str, Any]:
    """The segmenter's card (a declarative table of what it is and how it was made)."""
    out = fitted["out"]
    return {
        "format": "ccad-lung-segmenter/1",
        "model": "lung-segmenter.onnx",
        "architecture": f"U-Net on the ImageNet MobileNetV2 encoder (skips {', '.join(SKIPS)}; bottleneck "
        f"{BOTTLENECK}; separable decoder {DECODER_FILTERS})",
        "parameters": fitted["parameters"],
        "input_size": size,
        "input": "grayscale in [0, 1], resized (Pillow bilinear) to input_size x input_size, then histogram-"
        "equalized (ccad.models.lungs.segmenter_input); NHWC (N, S, S, 1) float32",
        "output": "lung probability (N, S, S, 1); lung = p >= 0.5, then ccad.models.lungs.postprocess keeps the "
        "largest region on each side and fills holes",
        "threshold": 0.5,
        "quantization": f"ONNX Runtime static quantization, QDQ, per-channel int8 weights, uint8 activations, "
        f"percentile calibration on {fitted['calibration_images']} training images "
        "(the float model is lung-segmenter.float.onnx, not shipped)",
        "training_data": {
            "name": "V7 Labs COVID-19 chest X-ray lung masks on Cohen et al.'s covid-chestxray-dataset images",
            "images": len(rows),
            "patients": len(set(r["group"] for r in rows)),
            "split": {p: len(v) for p, v in by_part.items()},
            "split_rule": f"patient-grouped 70/15/15, seed {seed}",
            "mask_licence": "CC BY 4.0 (masks); images keep their publishers' licences",
            "mask_convention": "lung includes the region behind the heart, down to the lowest visible lung",
        },
        "training": {
            "epochs": epochs,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "schedule": "cosine decay",
            "loss": "BCE + soft Dice on labelled pixels",
            "seconds": round(fitted["seconds"]),
            "command": f"ccad lungs train --data MANIFEST --out DIR --size {size} --epochs {epochs} --seed {seed}",
        },
        "sha256": {"lung-segmenter.onnx": sha256(out / "lung-segmenter.onnx")},
        "size_bytes": (out / "lung-segmenter.onnx").stat().st_size,
    }
