"""Predictions written down: CSV rows (streamed, resumable), a table, JSON, and heatmap pictures.

:func:`predict` is ``ccad predict`` (local engine) as one call: it picks the predictor, scores the
inputs and returns what to print.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from ccad.errors import ConfigError, ModelError
from ccad.io.inputs import expand_inputs, iter_inputs
from ccad.io.pictures import overlay, save_png
from ccad.models.ood import OUT_OF_DISTRIBUTION_TEXT
from ccad.scoring.predictor import Predictor, load_predictor
from ccad.scoring.score import Prediction

RESULT_COLUMNS = ("file", "predicted_class")
#: Columns after the probabilities: the out-of-distribution guard and the lung check.
SCREEN_COLUMNS = ("in_distribution", "ood_distance", "lung_qc")
FORMATS = ("table", "json", "csv")
NOT_A_DIAGNOSIS = "screening aid, not a diagnosis"


def severity_scores_of(predictor: Predictor) -> list[str]:
    return list(predictor.severity.targets) if predictor.severity is not None else []


def result_columns(classes: Sequence[str], severity_scores: Sequence[str] = ()) -> list[str]:
    """CSV header: file, predicted class, a probability per class, in_distribution, ood_distance, lung_qc,
    severity columns if any, the decision rule (the same on every row: a CSV read alone says how its classes
    were decided), error."""
    severity = [f"{s}{suffix}" for s in severity_scores for suffix in ("", "_low", "_high")]
    return [
        *RESULT_COLUMNS,
        *(f"p_{c}" for c in classes),
        *SCREEN_COLUMNS,
        *severity,
        *(["severity_band"] if severity else []),
        "decision_rule",
        "error",
    ]


def rule_text(predictor: Predictor) -> str:
    """The decision rule in words: ``covid if p_covid >= 0.732, else ... (specificity-90, chosen on ...)``."""
    return predictor.decision.describe(predictor.positive_class)


def result_row(
    result: Prediction, classes: Sequence[str], severity_scores: Sequence[str] = (), rule: str = ""
) -> list[str]:
    """One CSV row of :func:`result_columns`."""
    probabilities = result.probabilities
    row = [result.name, result.predicted_class or ""] + [
        f"{probabilities[c]:.6f}" if probabilities else "" for c in classes
    ]
    row += [
        "" if result.in_distribution is None else str(result.in_distribution).lower(),
        "" if result.ood_distance is None else f"{result.ood_distance:.3f}",
        ";".join(result.lung_qc or []),
    ]
    if severity_scores:
        severity = result.severity or {}
        for name in severity_scores:
            entry = severity.get(name)
            row += (
                [f"{entry['value']:.2f}", f"{entry['interval95'][0]:.2f}", f"{entry['interval95'][1]:.2f}"]
                if entry
                else ["", "", ""]
            )
        row.append(severity.get("band", ""))
    return row + ["" if result.error else rule, result.error or ""]


def format_results(results: Sequence[Prediction], predictor: Predictor, fmt: str = "table") -> str:
    """The results as ``table`` (aligned columns), ``csv`` or ``json`` text."""
    if fmt == "json":
        return json.dumps([r.to_dict() for r in results], indent=2)
    scores = severity_scores_of(predictor)
    columns = result_columns(predictor.classes, scores)
    rule = rule_text(predictor)
    rows = [result_row(r, predictor.classes, scores, rule) for r in results]
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(columns)
        writer.writerows(rows)
        return buffer.getvalue().rstrip("\n")
    columns, rows = columns[:-2] + columns[-1:], [row[:-2] + row[-1:] for row in rows]  # the rule once, below
    widths = [max(len(str(x)) for x in col) for col in zip(columns, *rows)]
    table = "\n".join("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in [columns] + rows)
    return f"{table}\ndecision: {rule}"


def save_overlay(result: Prediction, folder: Path) -> Path:
    """``folder/<stem>.<class>.heatmap.png``: the X-ray as stored, lung outline and heatmap mapped onto it."""
    pictures = result.pictures
    target = Path(folder) / f"{Path(result.name).stem}.{result.predicted_class}.heatmap.png"
    return save_png(overlay(pictures.original, pictures.original_heatmap, outline=pictures.lung_outline), target)


def predict_to_csv(
    predictor: Predictor,
    inputs: Iterable[str | os.PathLike],
    out_csv: str | os.PathLike,
    resume: bool = False,
    heatmap_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, int]:
    """Stream predictions into ``out_csv``, a row per file as soon as it is scored.

    With ``resume`` the files already in ``out_csv`` are skipped and new rows are
    appended; otherwise an existing ``out_csv`` is an error. Unreadable files get
    a row with their error; the run goes on. Returns counts.
    """
    from tqdm import tqdm

    out_csv = Path(out_csv)
    done: set[str] = set()
    if out_csv.exists():
        if not resume:
            raise ModelError(f"{out_csv}: already exists (use --resume to continue it, or another --out)")
        _drop_partial_last_line(out_csv)
        with open(out_csv, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            done = {_key(row.get("file") or "") for row in reader}
        header = reader.fieldnames or []
        if header and header != result_columns(predictor.classes, severity_scores_of(predictor)):
            raise ModelError(
                f"{out_csv}: its columns are not the ones this model and ccad write (another model, or "
                "an older ccad): resume into the CSV it was started with, or give another --out"
            )
    paths = (str(p) for p in iter_inputs(inputs) if _key(p) not in done)
    counts = {"scored": 0, "errors": 0, "skipped_done": len(done)}
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    heat_dir = Path(heatmap_dir) if heatmap_dir else None
    if heat_dir:
        heat_dir.mkdir(parents=True, exist_ok=True)
    new_file = not out_csv.exists() or out_csv.stat().st_size == 0
    scores = severity_scores_of(predictor)
    with open(out_csv, "a", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        if new_file:
            writer.writerow(result_columns(predictor.classes, scores))
        bar = tqdm(desc="predict", unit="img", disable=not progress, file=sys.stderr)
        rule = rule_text(predictor)
        for result in predictor.predict_stream(paths, with_heatmaps=heat_dir is not None):
            writer.writerow(result_row(result, predictor.classes, scores, rule))
            counts["errors" if result.error else "scored"] += 1
            if heat_dir and result.pictures is not None:
                save_overlay(result, heat_dir)
            f.flush()  # on disk (the OS's cache) as soon as scored: a crash loses no row already scored
            bar.update()
        bar.close()
    return counts


def _key(path: str | os.PathLike) -> str:
    """How ``--resume`` recognises a file: its absolute, resolved path, however it was spelled."""
    return str(Path(path).resolve())


def _drop_partial_last_line(path: Path) -> None:
    """A run killed mid-write can leave half a row: cut the file back to its last complete line."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


@dataclass
class PredictOutcome:
    """What ``ccad predict`` prints: ``notes`` on stderr, then ``text`` on stdout."""

    text: str
    notes: list[str] = field(default_factory=list)


def predict(
    model: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    fmt: str = "table",
    out: str | os.PathLike | None = None,
    resume: bool = False,
    heatmap: str | os.PathLike | None = None,
    variant: str = "float",
    verify_key: str | os.PathLike | None = None,
) -> PredictOutcome:
    """``ccad predict`` on one machine: score ``inputs`` with ``model`` (bundle, run folder or model file).

    With ``out`` the rows stream into a CSV (``resume`` continues one); otherwise the results are
    formatted as ``fmt``. ``heatmap`` is a folder for the heatmap pictures.
    """
    if resume and not out:
        raise ConfigError("--resume needs --out")
    if heatmap and Path(heatmap).exists() and not Path(heatmap).is_dir():
        raise ConfigError(f"--heatmap {heatmap}: is a file; give a folder for the heatmap pictures")
    if out and Path(out).is_dir():
        raise ConfigError(f"--out {out}: is a folder; give a CSV file name")
    predictor = load_predictor(model, variant=variant, verify_key=verify_key)
    if out:
        counts = predict_to_csv(predictor, inputs, out, resume, heatmap)
        return PredictOutcome(
            f"{counts['scored']} scored, {counts['errors']} unreadable, {counts['skipped_done']} "
            f"already done: {out} ({NOT_A_DIAGNOSIS})"
        )
    results = predictor.predict_files(expand_inputs(inputs), with_heatmaps=bool(heatmap))
    if heatmap:
        Path(heatmap).mkdir(parents=True, exist_ok=True)
        for result in results:
            if result.pictures is not None:
                save_overlay(result, Path(heatmap))
    notes = []
    flagged = sum(r.in_distribution is False for r in results)
    if flagged:
        notes.append(
            f"{flagged} image(s) flagged out of distribution (in_distribution = false): {OUT_OF_DISTRIBUTION_TEXT}."
        )
    if fmt == "table":
        notes.append("Screening aid, not a diagnosis.")
    return PredictOutcome(format_results(results, predictor, fmt), notes)
