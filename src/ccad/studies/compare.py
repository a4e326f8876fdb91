"""``ccad compare``: backbones (the paper's Tables 3 and 9) and classifier heads on one split.

Every combination is trained by :func:`ccad.training.train` on the *same*
patient-grouped split and scored on the same test images. Per row: parameters
and size on disk (the paper's Table 3 columns), accuracy, sensitivity,
specificity, F1 and AUC with 95% intervals, training time, and single-image
latency (Keras, warm, median of 20 calls on this machine). Offline, only
MobileNetV2 has ImageNet weights here: a backbone whose weights cannot be had
is trained with ``--weights none`` (a random backbone) and its row says so.
Writes ``DIR/comparison.json``, ``DIR/comparison.md`` and one run folder per row.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ccad.data.datasets import DataSpec
from ccad.data.splits import assign_splits
from ccad.evaluation.metrics import format_interval
from ccad.io.files import write_json, write_text
from ccad.models.classifier import (
    count_parameters,
    get_backbone,
    imagenet_available_for,
    imagenet_original_parameters,
)
from ccad.training.config import TrainConfig, make_config
from ccad.training.run import train

METRICS = ("accuracy", "sensitivity", "specificity", "f1", "auc")
#: The paper's Table 3 as printed: (parameters, disk space in MB) of each network with its 1000-class top.
PAPER_TABLE3 = {
    "mobilenet": (4_253_864, 16),
    "mobilenet_v2": (3_538_984, 14),
    "vgg16": (138_357_544, 528),
    "vgg19": (143_667_240, 549),
    "resnet50": (25_636_712, 98),
}


def compare(
    spec: DataSpec,
    out: str | os.PathLike,
    backbones: Sequence[str] = ("mobilenet_v2",),
    heads: Sequence[str] = ("dense",),
    config: TrainConfig | None = None,
    feature_selection: str = "none",
    input_size: int | None = None,
) -> dict[str, Any]:
    """Train and score every backbone x head on one split of ``spec``'s data; ``input_size`` None: each
    backbone's own. ``config`` None: the one-view lungs preset (every head takes one view)."""
    base = config or make_config("one-view-lungs")
    explicit_size = input_size or 0
    out = Path(out)
    for name in backbones:
        get_backbone(name)
    dataset = assign_splits(spec.discover(), seed=base.seed)
    rows = []
    for backbone in backbones:
        weights, note = base.weights, ""
        if weights == "imagenet" and not imagenet_available_for(backbone, explicit_size or None):
            weights, note = "none", "no ImageNet weights offline: random backbone (--weights none)"
        for head in heads:
            config = replace(
                base,
                backbone=backbone,
                weights=weights,
                input_size=explicit_size,
                head=head,
                feature_selection=feature_selection if head != "dense" else "none",
                fine_tune_epochs=base.fine_tune_epochs if head == "dense" else 0,
            ).validate()
            run_dir = out / (f"{backbone}-{head}" if len(heads) > 1 else backbone)
            result = train(dataset, run_dir, config, skip_bad=spec.skip_bad, verbose=0)
            rows.append(_row(result, backbone, head, weights, note, run_dir))
    summary = {
        "data": dataset.source,
        "split": "test",
        "n_test": rows[0]["n_test"] if rows else 0,
        "config": {k: v for k, v in base.__dict__.items() if k not in ("backbone", "weights")},
        "latency": "Keras, one image, warm, median of 20 calls; 2-core CPU",
        "rows": rows,
    }
    write_json(out / "comparison.json", summary)
    write_text(out / "comparison.md", comparison_markdown(summary))
    return summary


def _row(result, backbone: str, head: str, weights: str, note: str, run_dir: Path) -> dict[str, Any]:
    total, trainable = count_parameters(result.model)
    size = sum(p.stat().st_size for p in run_dir.glob("model.*") if p.is_file())
    row = {
        "backbone": backbone,
        "head": head,
        "weights": weights,
        "note": note,
        "feature_selection": result.config.feature_selection,
        "features_kept": result.features_kept,
        "input_size": result.config.input_size,
        "parameters": total,
        "trainable": trainable,
        "imagenet_original_parameters": imagenet_original_parameters(backbone),
        "paper_table3": dict(zip(("parameters", "size_mb"), PAPER_TABLE3[backbone]))
        if backbone in PAPER_TABLE3
        else None,
        "size_mb": round(size / 2**20, 2),
        "train_s": round(result.timings.get("train_s", 0.0), 1),
        "fit_s": round(result.timings.get("head_fit_s", result.timings.get("train_s", 0.0)), 2),
        "latency_ms": round(_latency_ms(result.model, result.config.input_size), 1),
        "n_test": result.metrics["n"] if result.metrics else 0,
        "run": str(run_dir),
    }
    for name in METRICS:
        entry = (result.metrics or {}).get(name) or {"value": None, "ci95": None}
        row[name] = {"value": entry["value"], "ci95": entry["ci95"]}
    return row


def _latency_ms(model, size: int, calls: int = 20) -> float:
    x = np.random.default_rng(0).random((1, size, size, 3), dtype=np.float32)
    model(x, training=False)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        model(x, training=False)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def comparison_markdown(summary: dict[str, Any]) -> str:
    def fmt(entry):
        return format_interval(entry, undefined="n/a")

    lines = [
        f"Data: `{summary['data']}`, test split n = {summary['n_test']}. 95% grouped-bootstrap intervals. "
        f"Latency: {summary['latency']}.",
        "",
        "| backbone | head | weights | parameters | trainable | size (MB) | "
        + " | ".join(METRICS)
        + " | features kept | train (s) | latency (ms) |",
        "| --- " * (10 + len(METRICS)) + "|",
    ]
    for r in summary["rows"]:
        weights = r["weights"] + (" (no ImageNet weights offline)" if r["note"] else "")
        selection = ("all" if r["features_kept"] is None else f"{r['features_kept']}") + (
            " (WOA)" if r["feature_selection"] == "woa" else ""
        )
        lines.append(
            f"| {r['backbone']} | {r['head']} | {weights} | {r['parameters']:,} | {r['trainable']:,} | "
            f"{r['size_mb']} | "
            + " | ".join(fmt(r[m]) for m in METRICS)
            + f" | {selection} | {r['train_s']} | {r['latency_ms']} |"
        )
    lines += [
        "",
        "The paper's Table 3 beside ours. The paper counts each network as published for ImageNet, "
        "with its 1000-class top; so does our second column (the network built with random weights, no "
        'download). "As trained" is the model here: no top, global average pooling, dropout and a Dense '
        "softmax; its disk size is that run's model file(s).",
        "",
        "| backbone | paper: parameters (1000-class top) | ours: parameters, 1000-class top | paper: disk "
        "(MB) | ours: parameters as trained | ours: disk (MB) |",
        "| --- " * 6 + "|",
    ]
    seen = set()
    for r in summary["rows"]:
        if r["backbone"] in seen:
            continue
        seen.add(r["backbone"])
        paper = r.get("paper_table3") or {}
        lines.append(
            f"| {r['backbone']} | {paper.get('parameters', 'n/a'):,} | {r['imagenet_original_parameters']:,} | "
            f"{paper.get('size_mb', 'n/a')} | {r['parameters']:,} | {r['size_mb']} |"
            if paper
            else f"| {r['backbone']} | n/a | {r['imagenet_original_parameters']:,} | n/a | {r['parameters']:,} | "
            f"{r['size_mb']} |"
        )
    return "\n".join(lines) + "\n"
