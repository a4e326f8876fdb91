"""``ccad export``: a trained run -> a model bundle that predicts without TensorFlow.

A bundle is a folder:

- ``model.onnx``: float32; outputs the class probabilities and the last
  convolutional feature map (7x7x1280 at 224 px), from which
  :mod:`ccad.scoring.heatmaps` computes class activation maps;
- ``model.int8.onnx`` (``int8=True``): ONNX Runtime static quantization, QDQ
  format, per-channel int8 weights, percentile-calibrated on at least 100 training images;
- ``model.tflite`` and ``model.int8.tflite`` (``tflite=True``);
- ``cam_weights.npy``: the Dense layer's kernel (1280, k) for the heatmaps;
- ``ccad-model.json``: the model card (:class:`ccad.models.card.ModelCard`): classes, positive class, input size, the
  exact preprocessing, backbone, training data, evaluation metrics with
  intervals, library versions, and the sha256 of every file.

The bundle is written into a temporary folder beside ``out`` and renamed into
place at the end: a crash leaves no half-written bundle.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ccad.bundles.files import bundle_folder
from ccad.data.datasets import Sample, label_indices
from ccad.data.splits import read_split_file
from ccad.errors import ConfigError, DataError
from ccad.io.files import sha256, write_json
from ccad.io.inputs import list_inputs
from ccad.models.card import BUNDLE_CARD, ModelCard, library_versions
from ccad.models.classifier import classifier_kernel
from ccad.models.lungs import CARD_FILE, PACKAGED_MODEL_DIR
from ccad.models.quantize import int8_check, quantize_onnx
from ccad.models.rehearsal import REHEARSAL_FILE
from ccad.models.signing import SIGNATURE_FILE, sign_bundle
from ccad.preprocessing.pipeline import load_images
from ccad.preprocessing.steps import describe as describe_preprocessing
from ccad.scoring.predictor import KerasPredictor, run_folder

MIN_CALIBRATION_IMAGES = 100
CALIBRATION_IMAGES = 200


def export_model_of(classifier: KerasPredictor):
    """The classifier's two-output Keras model (probabilities, last feature map), called once: the exporters
    need a called model."""
    dual = classifier.network
    size = classifier.input_size
    dual.predict(np.zeros((1, size, size, 3 * classifier.views), np.float32), verbose=0)
    return dual


def export_bundle(
    run: str | os.PathLike,
    out: str | os.PathLike,
    int8: bool = False,
    calibration_data: str | os.PathLike | None = None,
    tflite: bool = False,
    calibration_images: int = CALIBRATION_IMAGES,
    overwrite: bool = False,
    sign_key: str | os.PathLike | None = None,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Export a run folder (or model file) to a bundle folder ``out``; returns ``out``.

    With ``sign_key`` (an Ed25519 private key, PEM) the card is signed (:mod:`ccad.models.signing`). The
    run folder records each bundle made from it with the sha256 of its card (``RUN/bundles.json``), so a
    card edited afterwards can be told from the one exported.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise ConfigError(f"{out}: already exists (choose another `out` or remove it)")
    classifier = KerasPredictor.load(run)
    dual = export_model_of(classifier)
    with bundle_folder(out) as work:
        files = {"float": "model.onnx"}
        with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints every captured tensor
            dual.export(str(work / "model.onnx"), format="onnx", verbose=False)
        np.save(work / "cam_weights.npy", classifier_kernel(classifier.model))
        _copy_run_files(classifier, work)
        calibration, check = None, None
        if int8 or tflite:
            calibration = _calibration_images(run, classifier, calibration_data, calibration_images)
        if int8:
            check = _int8(run, classifier, work, calibration)
            files["int8"] = "model.int8.onnx"
        if tflite:
            convert_tflite(dual, work / "model.tflite", None)
            convert_tflite(dual, work / "model.int8.tflite", calibration)
            files["tflite"], files["tflite_int8"] = "model.tflite", "model.int8.tflite"
        card = model_card(classifier, files, work, calibration, check)
        card.provenance = provenance
        card.save(work)
        if sign_key is not None:
            sign_bundle(work, sign_key)
    _pin_card(classifier.run_dir, out)
    return out


def _copy_run_files(classifier: KerasPredictor, work: Path) -> None:
    """What the run stored beside its model: a non-linear scikit-learn head (run on the pooled features after
    model.onnx), the out-of-distribution guard, the rehearsal features (for ccad adapt)."""
    info, run_dir = classifier.info, classifier.run_dir
    if info.head_file:
        shutil.copyfile(run_dir / info.head_file, work / info.head_file)
    if info.ood and (run_dir / info.ood["file"]).is_file():
        shutil.copyfile(run_dir / info.ood["file"], work / info.ood["file"])
    if run_dir is not None and (run_dir / REHEARSAL_FILE).is_file():
        shutil.copyfile(run_dir / REHEARSAL_FILE, work / REHEARSAL_FILE)


def _int8(run, classifier: KerasPredictor, work: Path, calibration) -> dict[str, Any]:
    """``model.int8.onnx``, statically quantized on ``calibration``, and its check against the float model on
    held-out images (whether it may make decisions)."""
    quantize_onnx(work / "model.onnx", work / "model.int8.onnx", calibration)
    images, labels, where = _held_out_images(run, classifier, calibration)
    check = int8_check(
        work / "model.onnx",
        work / "model.int8.onnx",
        images,
        labels,
        classifier.decision,
        classifier.classes,
        classifier.positive_class,
        where,
    )
    if check["use"] != "decisions":
        logging.getLogger("ccad").warning("INT8 model for throughput only: %s", check["reason"])
    return check


def _pin_card(run_dir: Path, bundle: Path) -> None:
    """Record in the run folder which bundle was made from it, with its card's sha256."""
    import datetime
    import json

    record = run_dir / "bundles.json"
    try:
        entries = json.loads(record.read_text()) if record.is_file() else []
        entries.append(
            {
                "bundle": str(bundle.resolve()),
                "card_sha256": sha256(bundle / BUNDLE_CARD),
                "signed": (bundle / SIGNATURE_FILE).is_file(),
                "exported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            }
        )
        write_json(record, entries)
    except (OSError, ValueError) as e:  # a read-only run folder: the bundle is made all the same
        logging.getLogger("ccad").warning("%s: could not record the bundle (%s)", record, e)


def _calibration_images(run, classifier, data, limit: int) -> np.ndarray:
    """Up to ``limit`` training images (N, H, W, 3), through the model's own preprocessing: from ``data`` (a
    folder, a manifest's ``path`` column or a list of paths; labels, if any, are not needed and not read),
    else from the run's own training split."""
    if data is not None:
        samples = [Sample(Path(p), "", p) for p in list_inputs([data])]
        source = str(data)
    else:
        split_csv = run_folder(run) / "split.csv"
        if not split_csv.is_file():
            raise DataError(f"{run}: no split.csv to take calibration images from; pass `calibration_data`")
        samples = [s for s in read_split_file(split_csv) if s.split == "train"]
        source = f"{split_csv} (train rows)"
    rng = np.random.default_rng(0)
    picked = [samples[i] for i in sorted(rng.permutation(len(samples))[:limit])]
    images, kept, _ = load_images(picked, classifier.input_size, skip_bad=True, preprocess=classifier.preprocess)
    if len(kept) < min(MIN_CALIBRATION_IMAGES, limit):
        raise DataError(
            f"{source}: only {len(kept)} readable calibration images; INT8 needs at least "
            f"{MIN_CALIBRATION_IMAGES} (pass `calibration_data` with more)"
        )
    return classifier.model_input(images)


def _held_out_images(run, classifier, calibration: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(images, labels, what they are) to check the INT8 model on: the run's validation split, through the
    model's preprocessing; without one, the calibration images (unlabelled, and not held out: said so)."""
    split_csv = run_folder(run) / "split.csv"
    samples = [s for s in read_split_file(split_csv) if s.split == "val"] if split_csv.is_file() else []
    samples = [s for s in samples if s.label in classifier.classes]
    if samples:
        images, kept, _ = load_images(samples, classifier.input_size, skip_bad=True, preprocess=classifier.preprocess)
        if len(kept):
            return (
                classifier.model_input(images),
                label_indices(kept, classifier.classes),
                f"the run's validation split ({len(kept)} images)",
            )
    return calibration, None, f"the {len(calibration)} calibration images (no held-out split)"


def convert_tflite(dual, path: Path, calibration: np.ndarray | None) -> None:
    """TFLite float32 (``calibration=None``) or int8 (weights and activations; float input and output)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(dual)
    if calibration is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([calibration[i : i + 1]] for i in range(len(calibration)))
    with contextlib.redirect_stdout(io.StringIO()):  # the converter prints every captured tensor
        path.write_bytes(converter.convert())


def lung_segmenter_card() -> dict[str, Any] | None:
    """What the packaged lung segmenter is (it ships with ccad, not in the bundle)."""
    path = PACKAGED_MODEL_DIR / CARD_FILE
    if not path.is_file():
        return None
    import json

    card = json.loads(path.read_text())
    return {
        "file": f"ccad/models/{card.get('model')}",
        "sha256": card.get("sha256"),
        "input_size": card.get("input_size"),
        "held_out": card.get("held_out"),
    }


def model_card(
    classifier: KerasPredictor,
    files: dict[str, str],
    folder: Path,
    calibration: np.ndarray | None,
    int8_check: dict[str, Any] | None = None,
) -> ModelCard:
    """The bundle's card, from the run's metadata and metrics; every file in ``folder`` gets its sha256."""
    import json

    info = classifier.info
    metrics_file = classifier.run_dir / "metrics.json"
    run_metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    keep = ("accuracy", "sensitivity", "specificity", "precision", "f1", "auc")
    metrics = {k: run_metrics[k] for k in keep if k in run_metrics}
    if metrics:
        metrics.update(
            n=run_metrics.get("n"),
            split=run_metrics.get("split"),
            data=run_metrics.get("data"),
            confusion_matrix=run_metrics.get("confusion_matrix"),
        )
    size = classifier.input_size
    return ModelCard(
        classes=classifier.classes,
        positive_class=classifier.positive_class,
        input_size=size,
        input={
            "name": "image",
            "shape": ["N", size, size, 3 * classifier.views],
            "dtype": "float32",
            "range": [0.0, 1.0],
            "views": classifier.views,
        },
        outputs={"probabilities": 0, "feature_map": 1},
        preprocessing=describe_preprocessing(classifier.preprocess),
        preprocess=classifier.preprocess,
        decision=classifier.decision.to_dict(),
        backbone=info.backbone or "MobileNetV2 (alpha 1.0)",
        weights=info.weights,
        training_data=info.data,
        training_config=info.config,
        evaluation=metrics or None,
        calibration_images=None if calibration is None else int(len(calibration)),
        int8_check=int8_check,
        models=files,
        heatmap={
            "method": "CAM (exact for global average pooling + dense)",
            "weights": "cam_weights.npy",
            "available": not info.head_file,
        },
        head={k: v for k, v in (info.head or {"kind": "dense"}).items() if k != "selected_features"},
        ood=info.ood if info.ood and (folder / info.ood["file"]).is_file() else None,
        lung_segmenter=lung_segmenter_card(),
        versions=library_versions(extra=("onnx", "onnxruntime", "tf2onnx", "ai-edge-litert")),
        sha256={p.name: sha256(p) for p in sorted(folder.iterdir()) if p.is_file()},
    )
