"""Archive-scale screening on Ray: ``ccad predict --engine ray``.

A Ray Data pipeline over the image list (folders, files, a manifest CSV with a
``path`` column, or a text file of paths):

1. ``from_items`` of the paths not yet in the output (``--resume``);
2. ``map_batches(decode)`` as Ray *tasks*: read, preprocess and resize each file
   with the screener's own :class:`ccad.screening.Reader`, exactly as single-process ``predict`` does; an
   unreadable file becomes a row with its error;
3. ``map_batches(Scorer)`` in a pool of Ray *actors*: each loads the bundle once
   (:class:`ccad.screening.Screener`, ONNX Runtime) and scores batches with the same
   :meth:`~ccad.screening.Screener.score` as ``predict``;
4. ``write_csv`` / ``write_parquet``: result shards under ``OUT/``, then
   ``OUT/summary.json`` (counts by class, errors, time).

Without ``address`` a local Ray starts on this machine; with one, the job joins
that cluster (``ray://`` client or a head node address). TensorFlow is never imported.
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ccad.errors import ConfigError, ImageReadError, ModelError
from ccad.io.files import write_json
from ccad.io.inputs import input_key, list_inputs
from ccad.models.card import is_bundle
from ccad.preprocessing.pipeline import Prepared
from ccad.preprocessing.steps import view_count
from ccad.screening import Reader, Screener, one_blas_thread
from ccad.screening.records import Prediction
from ccad.screening.results import result_columns, result_row

SUMMARY = "summary.json"


def done_files(out: Path) -> set[str]:
    """Files already in the result shards of ``out`` (CSV or Parquet), by :func:`ccad.io.inputs.input_key`
    (as the local engine's ``resume`` recognises them)."""
    done: set[str] = set()
    for shard in sorted(out.glob("*.csv")):
        with open(shard, newline="", encoding="utf-8") as f:
            done |= {input_key(row["file"]) for row in csv.DictReader(f)}
    parquet = sorted(out.glob("*.parquet"))
    if parquet:
        import pyarrow.parquet as pq

        for shard in parquet:
            done |= {input_key(f) for f in pq.read_table(shard, columns=["file"]).column("file").to_pylist()}
    return done


def decode(batch: dict[str, np.ndarray], reader: Reader) -> dict[str, np.ndarray]:
    """Ray task: files -> model inputs (zeros where unreadable), lung-QC flags and an error column, by the
    screener's own :class:`ccad.screening.Reader` (what ``ccad predict`` reads with)."""
    images, qc, errors = [], [], []
    for path in batch["file"]:
        try:
            prepared = reader.read(str(path))
            images.append(prepared.image)
            qc.append(";".join(prepared.qc_flags))
            errors.append("")
        except ImageReadError as e:
            views = view_count(reader.preprocess)
            shape = (reader.size, reader.size) if views == 1 else (reader.size, reader.size, views)
            images.append(np.zeros(shape, np.float32))
            qc.append("")
            errors.append(str(e))
    return {
        "file": batch["file"],
        "image": np.stack(images),
        "lung_qc": np.array(qc, dtype=object),
        "error": np.array(errors, dtype=object),
    }


@dataclass(frozen=True)
class _Checked:
    """The lung-QC flags found by a decode task (the fields themselves stay there)."""

    qc_flags: tuple[str, ...]


class Scorer:
    """Ray actor: loads the bundle once, scores decoded batches with the :class:`Screener` ``predict`` uses."""

    def __init__(self, bundle: str, variant: str = "float", threads: int = 1):
        one_blas_thread()
        self.screener = Screener.load(bundle, variant=variant, threads=threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        screener = self.screener
        scores, rule = screener.severity_scores, screener.rule_text()
        good = [i for i, e in enumerate(batch["error"]) if not e]
        prepared = [
            Prepared(
                np.asarray(batch["image"][i]),
                np.asarray(batch["image"][i]),
                (0, 0, 0, 0),
                _Checked(tuple(f for f in str(batch["lung_qc"][i]).split(";") if f)),
            )
            for i in good
        ]
        results = dict(zip(good, screener.score([str(batch["file"][i]) for i in good], prepared)))
        rows = [
            result_row(
                results.get(i) or Prediction(str(f), error=str(batch["error"][i])), screener.classes, scores, rule
            )
            for i, f in enumerate(batch["file"])
        ]
        columns = result_columns(screener.classes, scores)
        return {name: np.array([row[j] for row in rows], dtype=object) for j, name in enumerate(columns)}


def describe_summary(summary: dict[str, Any], out: str | os.PathLike) -> str:
    run = summary["this_run"]
    return (
        f"{run['processed']} processed, {run['skipped_already_done']} already done, {summary['errors']} "
        f"unreadable in all: {out} (screening aid, not a diagnosis)"
    )


def ray_predict(
    model: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike | None,
    address: str | None = None,
    workers: int = 2,
    batch_size: int = 16,
    resume: bool = False,
    output_format: str = "csv",
    variant: str = "float",
    num_cpus: int | None = None,
    verify_key: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Score ``inputs`` with the bundle ``model`` on Ray; write result shards and a summary to ``out``."""
    if not out:
        raise ConfigError("the Ray engine needs `out` (a folder for the result shards)")
    if not is_bundle(model):
        raise ModelError(f"{model}: the Ray engine needs a model bundle (ccad export)")
    if output_format not in ("csv", "parquet"):
        raise ConfigError(f"`output_format` must be csv or parquet, got {output_format!r}")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not resume:
        raise ConfigError(f"{out}: already holds results (`resume` to continue, or another `out`)")
    out.mkdir(parents=True, exist_ok=True)
    screener = Screener.load(model, variant=variant, verify_key=verify_key)  # checked before any cluster work
    done = done_files(out) if resume else set()
    todo = [p for p in list_inputs(inputs) if input_key(p) not in done]
    start = time.perf_counter()
    _run_pipeline(todo, screener, str(model), variant, out, address, workers, batch_size, num_cpus, output_format)
    elapsed = time.perf_counter() - start
    summary = _summarize(out, screener.classes, len(done), len(todo), elapsed, workers, address)
    write_json(out / SUMMARY, summary)
    return summary


def _run_pipeline(todo, screener, model, variant, out, address, workers, batch_size, num_cpus, output_format) -> None:
    """Ray Data: decode tasks, then a pool of scoring actors, then the shards; a local Ray started (and ended)
    here unless one is running or ``address`` names a cluster."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(
            address=address,
            num_cpus=num_cpus if address is None else None,
            include_dashboard=False,
            log_to_driver=False,
            ignore_reinit_error=True,
        )
    try:
        if todo:
            ds = ray.data.from_items([{"file": p} for p in todo])
            ds = ds.map_batches(
                decode, batch_size=batch_size, batch_format="numpy", fn_kwargs={"reader": screener.reader}
            )
            ds = ds.map_batches(
                Scorer,
                batch_size=batch_size,
                batch_format="numpy",
                concurrency=workers,
                fn_constructor_kwargs={"bundle": model, "variant": variant},
            )
            (ds.write_parquet if output_format == "parquet" else ds.write_csv)(str(out))
    finally:
        if started_here:
            ray.shutdown()


def _summarize(out: Path, classes, skipped: int, scored_now: int, elapsed: float, workers: int, address) -> dict:
    counts = {c: 0 for c in classes}
    errors = total = 0
    rows: list[dict[str, Any]] = []
    for shard in sorted(out.glob("*.csv")):
        with open(shard, newline="", encoding="utf-8") as f:
            rows += list(csv.DictReader(f))
    if not rows and list(out.glob("*.parquet")):
        import pyarrow.parquet as pq

        for shard in sorted(out.glob("*.parquet")):
            rows += pq.read_table(shard).to_pylist()
    for row in rows:
        total += 1
        if row.get("error"):
            errors += 1
        elif row.get("predicted_class") in counts:
            counts[row["predicted_class"]] += 1
    previous = {}
    if (out / SUMMARY).is_file():
        previous = json.loads((out / SUMMARY).read_text())
    return {
        "files": total,
        "errors": errors,
        "predicted": counts,
        "this_run": {
            "processed": scored_now,
            "skipped_already_done": skipped,
            "seconds": round(elapsed, 2),
            "images_per_s": round(scored_now / elapsed, 1) if elapsed > 0 and scored_now else None,
            "workers": workers,
            "cluster": address or "local",
        },
        "runs": int(previous.get("runs", 0)) + 1,
        "note": "screening aid, not a diagnosis",
    }
