"""Predictions written down, the same for every engine: CSV rows (streamed, resumable) and heatmap pictures.
``ccad predict`` (local and Ray) and the listener's reports use these columns; what ``predict`` prints (a table,
CSV or JSON text) is :mod:`ccad.cli.tables`.
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path
from typing import Iterable, Sequence

from ccad.errors import ConfigError
from ccad.io.inputs import input_key, iter_inputs
from ccad.io.pictures import overlay, save_png
from ccad.screening.records import Prediction
from ccad.screening.screener import Screener

RESULT_COLUMNS = ("file", "predicted_class")
#: What a labelled set's prediction rows add after them (``evaluate``, ``cv``, a run's split predictions).
TRUTH_COLUMNS = ("label", "group", "source")
#: Columns after the probabilities: the out-of-distribution guard and the lung check.
SCREEN_COLUMNS = ("in_distribution", "ood_distance", "lung_qc")
NOT_A_DIAGNOSIS = "screening aid, not a diagnosis"


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
        "" if result.ood_distance is None else f"{result.ood_distance:.4g}",
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


def save_overlay(result: Prediction, folder: Path) -> Path:
    """``folder/<stem>.<class>.heatmap.png``: the X-ray as stored, lung outline and heatmap mapped onto it."""
    pictures = result.pictures
    target = Path(folder) / f"{Path(result.name).stem}.{result.predicted_class}.heatmap.png"
    return save_png(overlay(pictures.original, pictures.original_heatmap, outline=pictures.lung_outline), target)


def save_overlays(results: Iterable[Prediction], folder: str | os.PathLike) -> int:
    """:func:`save_overlay` for each result that has pictures; how many were written."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    written = 0
    for result in results:
        if result.pictures is not None:
            save_overlay(result, Path(folder))
            written += 1
    return written


def check_outputs(out: str | os.PathLike | None, resume: bool, heatmap_dir: str | os.PathLike | None) -> None:
    """Refuse outputs that cannot be written, before any work: the errors name the parameters."""
    if resume and not out:
        raise ConfigError("`resume` needs `out`")
    if heatmap_dir and Path(heatmap_dir).exists() and not Path(heatmap_dir).is_dir():
        raise ConfigError(f"`heatmap` {heatmap_dir}: is a file; give a folder for the heatmap pictures")
    if out and Path(out).is_dir():
        raise ConfigError(f"`out` {out}: is a folder; give a CSV file name")


def predict_to_csv(
    screener: Screener,
    inputs: Iterable[str | os.PathLike],
    out_csv: str | os.PathLike,
    resume: bool = False,
    heatmap_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, int]:
    """Stream predictions into ``out_csv``, a row per file as soon as it is scored.

    With ``resume`` the files already in ``out_csv`` are skipped (recognised by
    :func:`ccad.io.inputs.input_key`, as the Ray engine does) and new rows are
    appended; otherwise an existing ``out_csv`` is an error. Unreadable files get
    a row with their error; the run goes on. Returns counts.
    """
    from tqdm import tqdm

    out_csv = Path(out_csv)
    columns = result_columns(screener.classes, screener.severity_scores)
    done = _done(out_csv, columns, resume)
    paths = (str(p) for p in iter_inputs(inputs) if input_key(p) not in done)
    counts = {"scored": 0, "errors": 0, "skipped_done": len(done)}
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    heat_dir = Path(heatmap_dir) if heatmap_dir else None
    if heat_dir:
        heat_dir.mkdir(parents=True, exist_ok=True)
    new_file = not out_csv.exists() or out_csv.stat().st_size == 0
    scores, rule = screener.severity_scores, screener.rule_text()
    with open(out_csv, "a", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        if new_file:
            writer.writerow(columns)
        bar = tqdm(desc="predict", unit="img", disable=not progress, file=sys.stderr)
        for result in screener.screen(paths, with_heatmaps=heat_dir is not None):
            writer.writerow(result_row(result, screener.classes, scores, rule))
            counts["errors" if result.error else "scored"] += 1
            if heat_dir and result.pictures is not None:
                save_overlay(result, heat_dir)
            f.flush()  # on disk (the OS's cache) as soon as scored: a crash loses no row already scored
            bar.update()
        bar.close()
    return counts


def _done(out_csv: Path, columns: list[str], resume: bool) -> set[str]:
    """The files already in ``out_csv`` (their :func:`input_key`); an existing CSV needs ``resume`` and the
    same columns."""
    if not out_csv.exists():
        return set()
    if not resume:
        raise ConfigError(f"{out_csv}: already exists (`resume` to continue it, or another `out`)")
    _drop_partial_last_line(out_csv)
    with open(out_csv, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        done = {input_key(row.get("file") or "") for row in reader}
        header = reader.fieldnames or []  # read here: an empty file's header is asked for only now
    if header and header != columns:
        raise ConfigError(
            f"{out_csv}: its columns are not the ones this model and ccad write (another model, or "
            "an older ccad): resume into the CSV it was started with, or give another `out`"
        )
    return done


def _drop_partial_last_line(path: Path) -> None:
    """A run killed mid-write can leave half a row: cut the file back to its last complete line."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
