"""``ccad train``: one training run, from labelled data to a run folder.

Two loops train the same model (:mod:`ccad.training.fit`):

- *streaming* (the paper's way, all ``paper-*`` presets): every epoch, every
  training image is augmented afresh and passed through the frozen backbone.
- *cached views* (the default recipe): the frozen backbone runs once on the
  original image and on ``feature_views`` augmented copies of it; the head
  (Dropout + Dense, the only trainable layers) is then trained on those pooled
  features for ``epochs`` passes. Same model, same loss; the backbone, which is
  >99% of the compute and does not change, is not re-run every epoch.

Fine-tuning (``fine_tune_epochs > 0``) always streams, since the backbone changes. After the fit, the
decision rule and the out-of-distribution guard are fitted on the validation split, the run folder is
written, and the test split is scored by :func:`ccad.evaluation.evaluate.evaluate`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ccad._meta import __version__
from ccad.data.datasets import Dataset, DataSpec, label_indices
from ccad.data.splits import assign_splits, write_split
from ccad.errors import DataError
from ccad.evaluation.evaluate import evaluate
from ccad.io.files import atomic_path, write_text
from ccad.models.card import RunMetadata, library_versions
from ccad.models.classifier import (
    backbone_of,
    build_classifier,
    combine_views,
    count_parameters,
    get_backbone,
    load_keras_model,
)
from ccad.models.decision import DecisionRule, fit_decision
from ccad.models.ood import OOD_FILE, Guard
from ccad.models.rehearsal import save_rehearsal
from ccad.preprocessing.augmentation import get_spec
from ccad.preprocessing.pipeline import load_images
from ccad.preprocessing.steps import describe as describe_preprocessing
from ccad.preprocessing.steps import preprocessing_views, view_count
from ccad.scoring.predictor import KerasPredictor
from ccad.screening import Screener
from ccad.screening.guard import fit_guard
from ccad.screening.results import RESULT_COLUMNS, TRUTH_COLUMNS
from ccad.training.config import TrainConfig
from ccad.training.distributed import cluster_from_env, fit_distributed, multi_worker_strategy
from ccad.training.fit import fine_tune, fit_cached_views, fit_sklearn_head, fit_streaming
from ccad.training.heads import HeadFit

#: The validation split's probabilities in a run folder (what the decision rule was fitted on).
VAL_PREDICTIONS = "val_predictions.csv"


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
    head: HeadFit | None = None
    predictor: KerasPredictor | None = None

    @property
    def features_kept(self) -> int | None:
        return self.head.features_kept if self.head else None


def train(
    data: DataSpec | Dataset | str | os.PathLike,
    out: str | os.PathLike,
    config: TrainConfig | None = None,
    save_h5: bool = False,
    evaluate_test: bool = True,
    verbose: int | None = None,
    skip_bad: bool | None = None,
) -> TrainResult:
    """Train on ``data`` (a :class:`DataSpec`, a folder or manifest, or a :class:`Dataset` whose samples
    may already have splits) and write the run folder ``out``.

    ``out`` receives ``split.csv``, ``history.csv``, ``config.json``, ``ood.npz``, ``model.keras``
    (atomically; ``model.h5`` too with ``save_h5``) and, unless ``evaluate_test`` is false, the test-split
    evaluation (``metrics.json``, ``predictions.csv``, ``figures/``, ``report.html``).
    """
    config = (config or TrainConfig()).validate()
    spec = data if isinstance(data, (DataSpec, Dataset)) else DataSpec(data)
    skip_bad = spec.skip_bad if skip_bad is None and isinstance(spec, DataSpec) else bool(skip_bad)
    verbose = (1 if sys.stdout.isatty() else 2) if verbose is None else verbose
    cluster, run_dir = _cluster(config, Path(out))
    if cluster is not None and not cluster.is_chief:
        evaluate_test = False
    dataset = _dataset(spec, config.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_split(dataset, run_dir / "split.csv")

    timings: dict[str, Any] = {}
    start = time.perf_counter()
    arrays = _load_arrays(dataset, config, skip_bad)
    timings["load_s"] = time.perf_counter() - start
    start = time.perf_counter()
    model, history, head = _fit(arrays, dataset, config, verbose, cluster, run_dir)
    timings.update(_fit_timings(time.perf_counter() - start, arrays, history, head, cluster, config))
    if head is not None and head.onnx is not None:  # a non-linear head runs after the network, from its own file
        with atomic_path(run_dir / head.file) as tmp:
            tmp.write_bytes(head.onnx)
    decision, ood, timings["ood_fit_s"] = _fit_decision_and_guard(model, arrays, dataset, config, head, run_dir)
    meta = run_metadata(dataset, config, decision, head, ood)
    _save_run(run_dir, model, meta, dataset, config, history, timings, save_h5)
    predictor = KerasPredictor.of(model, meta, run_dir, ood=ood)
    metrics = None
    if evaluate_test and dataset.subset("test"):
        metrics = evaluate(
            Screener(predictor),
            dataset,
            run_dir,
            split="test",
            skip_bad=skip_bad,
            history=history if config.head == "dense" else None,
        )
    if cluster is not None and not cluster.is_chief:
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)
    return TrainResult(run_dir, model, dataset, config, history, metrics, decision, timings, head, predictor)


def _fit_timings(train_s: float, arrays, history, head, cluster, config) -> dict[str, Any]:
    timings: dict[str, Any] = {"train_s": train_s}
    if cluster is not None:
        timings["distributed"] = {
            "workers": cluster.workers,
            "task": cluster.task,
            "global_batch_size": config.batch_size * cluster.workers,
            "scaled_lr": config.lr * cluster.workers,
        }
    timings["train_images_per_s"] = len(arrays["train"][0]) * len(history) / train_s
    if head is not None:
        timings["head_fit_s"] = head.fit_s
    return timings


def _fit_decision_and_guard(model, arrays, dataset: Dataset, config: TrainConfig, head, run_dir: Path):
    """The decision rule fitted on the validation split (its predictions written), the out-of-distribution
    guard with the drift check's reference, and the rehearsal features (``ccad adapt``): (decision, guard,
    seconds the guard took)."""
    predictor = KerasPredictor.of(model, run_metadata(dataset, config, head=head), run_dir)
    val_probabilities = predictor.predict_images(arrays["val"][0])
    write_predictions(run_dir / VAL_PREDICTIONS, arrays["samples"]["val"], val_probabilities, dataset.classes)
    positive_class = dataset.positive_class or dataset.classes[-1]
    decision = fit_decision(
        arrays["val"][1],
        val_probabilities,
        dataset.classes,
        positive_class,
        config.threshold,
        config.calibration,
        fitted_on="the validation split",
    )
    start = time.perf_counter()
    train_features = predictor.pooled_features(arrays["train"][0])
    val_features = predictor.pooled_features(arrays["val"][0])
    films = [sample.path for sample in arrays["samples"]["train"]]
    ood = fit_guard(Screener(predictor), train_features, val_features, films, seed=config.seed or 0)
    save_rehearsal(run_dir, train_features, arrays["train"][1], dataset.classes, seed=config.seed or 0)
    positive = dataset.classes.index(positive_class)
    ood = replace(ood, reference_scores=val_probabilities[:, positive])  # the drift check's reference
    ood.save(run_dir / OOD_FILE)
    return decision, ood, time.perf_counter() - start


def write_predictions(path: Path, samples, probabilities: np.ndarray, classes) -> None:
    """``file,p_<class>...,label,group,source``: the model's own probabilities (before the decision rule, so no
    predicted class) for ``samples``, in ``ccad predict``'s column names; a run's ``val_predictions.csv`` is
    what its threshold was fitted on."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([RESULT_COLUMNS[0], *(f"p_{c}" for c in classes), *TRUTH_COLUMNS])
    for sample, p in zip(samples, probabilities):
        writer.writerow([sample.path, *(f"{v:.6f}" for v in p), sample.label, sample.group, sample.source])
    write_text(path, buffer.getvalue())


def _cluster(config: TrainConfig, run_dir: Path):
    """(cluster, run folder): a multi-worker cluster when ``--distributed`` (the workers other than the
    chief write to a temporary folder that is removed), else (None, ``run_dir``)."""
    if not config.distributed:
        return None, run_dir
    import tempfile

    cluster = cluster_from_env()
    return cluster, run_dir if cluster.is_chief else Path(tempfile.mkdtemp(prefix="ccad-worker-"))


def _dataset(spec: DataSpec | Dataset, seed: int) -> Dataset:
    if isinstance(spec, Dataset):
        return spec if all(s.split for s in spec.samples) else assign_splits(spec, seed=seed)
    return assign_splits(spec.discover(), seed=seed)


def _load_arrays(dataset: Dataset, config: TrainConfig, skip_bad: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train": (images, labels), "val": (...)}: every image prepared as the model will see it."""
    arrays: dict[str, Any] = {"samples": {}}
    for split in ("train", "val"):
        images, kept, bad = load_images(
            dataset.subset(split), config.input_size, skip_bad, preprocess=config.preprocess
        )
        arrays[split] = (images, label_indices(kept, dataset.classes))
        arrays["samples"][split] = kept
        dataset.bad_files.extend(bad)
    for split in ("train", "val"):
        images, labels = arrays[split]
        present = set(labels.tolist())
        if len(images) == 0 or len(present) < len(dataset.classes):
            missing = [c for i, c in enumerate(dataset.classes) if i not in present]
            raise DataError(f"{dataset.source}: the {split} split has no readable images of {', '.join(missing)}")
    return arrays


def _fit(arrays, dataset: Dataset, config: TrainConfig, verbose: int, cluster, run_dir: Path):
    """(model, history, scikit-learn head fit or None): the model built and trained by the loop the
    config asks for, then fine-tuned when it asks."""
    import keras

    strategy = None
    if cluster is not None:
        strategy = multi_worker_strategy()  # before any other TensorFlow op
    keras.utils.set_random_seed(config.seed)
    spec = get_spec(config.augmentation)
    head = None
    with strategy.scope() if strategy else contextlib.nullcontext():
        model = build_classifier(
            len(dataset.classes),
            config.input_size,
            config.dropout,
            config.weights,
            featurewise_mean=float(arrays["train"][0].mean()) if spec.featurewise_center else None,
            samplewise_center=spec.samplewise_center,
            backbone=config.backbone,
        )
        if config.head != "dense":
            history, head = fit_sklearn_head(model, arrays, dataset.classes, config)
        elif strategy is not None:
            history = fit_distributed(
                model, strategy, cluster, arrays, dataset.classes, config, run_dir / "checkpoints"
            )
        elif view_count(config.preprocess) > 1:
            model, history = _fit_views(model, arrays, dataset, config, verbose)
        else:
            fit = fit_cached_views if config.feature_views > 0 else fit_streaming
            history = fit(model, arrays, dataset.classes, config, verbose)
        if config.fine_tune_epochs and strategy is None:
            best = min((row.get("val_loss", np.inf) for row in history), default=np.inf)
            history += fine_tune(
                model, arrays, dataset.classes, config, verbose, first_epoch=len(history), best_val_loss=best
            )
    if strategy is not None:  # every worker saves (a collective step); continue on a plain copy
        with atomic_path(run_dir / "model.keras") as tmp:
            model.save(tmp)
        model = load_keras_model(run_dir / "model.keras")
    return model, history, head


def _fit_views(first, arrays, dataset: Dataset, config: TrainConfig, verbose: int):
    """A multi-view model: each view's head trained as a single-view run of that view would train it (same
    seed, same loop, the same frozen backbone), then :func:`combine_views`. The history holds each view's
    epochs in turn (phase ``view N``)."""
    import keras

    fit = fit_cached_views if config.feature_views > 0 else fit_streaming
    models, history = [], []
    for v, view in enumerate(preprocessing_views(config.preprocess)):
        keras.utils.set_random_seed(config.seed)
        model = (
            first
            if v == 0
            else build_classifier(
                len(dataset.classes), config.input_size, config.dropout, "none", backbone=config.backbone
            )
        )
        if v:
            backbone_of(model).set_weights(backbone_of(first).get_weights())
        single = {split: (arrays[split][0][..., v], arrays[split][1]) for split in ("train", "val")}
        history += [
            dict(row, phase=f"view {v + 1}: {view}")
            for row in fit(model, single, dataset.classes, replace(config, preprocess=view), verbose)
        ]
        models.append(model)
    return combine_views(models), history


def _backbone_name(name: str) -> str:
    application = get_backbone(name).application
    return f"{application} (alpha 1.0)" if name in ("mobilenet_v2", "mobilenet") else application


def run_metadata(
    dataset: Dataset,
    config: TrainConfig,
    decision: DecisionRule | None = None,
    head: HeadFit | None = None,
    ood: Guard | None = None,
) -> RunMetadata:
    """What a loader needs to use the model, plus what it was trained on."""
    return RunMetadata(
        ccad_version=__version__,
        classes=list(dataset.classes),
        positive_class=dataset.positive_class,
        input_size=config.input_size,
        backbone=_backbone_name(config.backbone),
        weights=config.weights,
        preprocessing=describe_preprocessing(config.preprocess),
        preprocess=config.preprocess,
        decision=decision.to_dict() if decision else None,
        head=head.record() if head else {"kind": "dense"},
        ood=ood.describe() if ood is not None else None,
        data={
            "source": dataset.source,
            "layout": dataset.layout,
            "counts": dataset.counts(),
            "sha256": dataset.fingerprint(),
            "bad_files_skipped": len(dataset.bad_files),
        },
    )


def _save_run(
    run_dir: Path, model, meta: RunMetadata, dataset: Dataset, config: TrainConfig, history, timings, save_h5: bool
) -> None:
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
        write_text(
            run_dir / "bad_files.csv",
            "path,error\n" + "".join(f'"{p}","{e.replace(chr(34), chr(39))}"\n' for p, e in dataset.bad_files),
        )
    total, trainable = count_parameters(model)
    best = min(range(len(history)), key=lambda i: history[i].get("val_loss", np.inf))
    replace(
        meta,
        config=asdict(config),
        parameters={"total": total, "trainable": trainable},
        best_epoch=best + 1,
        timings=timings,
        versions=library_versions(),
    ).save(run_dir)
