"""Results broken down by acquisition: ``ccad evaluate --by view --by source``.

A model can find COVID-19 on portable AP films and miss it on PA films, or keep one scanner's normals
normal and not another's. :func:`breakdown` gives sensitivity and specificity at the model's own decision
rule (Wilson 95% intervals) and AUC where a subgroup holds both classes, for each value of:

- ``source`` or ``label``: the data's own fields;
- a DICOM attribute (:data:`DICOM_ATTRIBUTES`: ``ViewPosition``, ``Modality``, ``Manufacturer``...), read
  from each DICOM file's header;
- any other name: a column of the manifest(s) the images came from.

An image without a value is counted under ``(missing)``. A subgroup with fewer than
:data:`SMALL_N` images of a class gets a note: its interval is too wide to tell much.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ccad.data.datasets import Sample

#: DICOM attributes ``--by`` reads from the files' headers.
DICOM_ATTRIBUTES = (
    "ViewPosition",
    "Modality",
    "Manufacturer",
    "ManufacturerModelName",
    "BodyPartExamined",
    "PatientSex",
    "PhotometricInterpretation",
)
MISSING = "(missing)"
#: Fewer images of a class than this in a subgroup: its rate gets a small-n note.
SMALL_N = 30


def subgroup_values(samples: Sequence[Sample], by: str, manifests: Sequence[str | os.PathLike] = ()) -> list[str]:
    """The value of ``by`` for each sample (``(missing)`` where it has none)."""
    if by in ("source", "label"):
        return [getattr(s, by) or MISSING for s in samples]
    if by in DICOM_ATTRIBUTES:
        return [_dicom_value(s.path, by) for s in samples]
    rows = _manifest_column(manifests, by)
    return [rows.get(str(Path(s.path).resolve()), MISSING) for s in samples]


def _dicom_value(path: str | os.PathLike, keyword: str) -> str:
    import pydicom

    try:
        with open(path, "rb") as f:
            if f.read(132)[128:132] != b"DICM":
                return MISSING
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[keyword])
        value = ds.get(keyword)
    except (OSError, ValueError, TypeError, AttributeError, pydicom.errors.InvalidDicomError):
        return MISSING
    text = "" if value is None else str(value).strip()
    return text or MISSING


def _manifest_column(manifests: Sequence[str | os.PathLike], column: str) -> dict[str, str]:
    """{resolved image path: value of ``column``} over the manifests that have that column."""
    from ccad.errors import DataError

    found, values = False, {}
    for manifest in manifests:
        manifest = Path(manifest)
        if not manifest.is_file() or manifest.suffix.lower() != ".csv":
            continue
        with open(manifest, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if column not in (reader.fieldnames or []):
                continue
            found = True
            for row in reader:
                if row.get("path"):
                    values[str((manifest.parent / row["path"]).resolve())] = (row[column] or "").strip() or MISSING
    if not found:
        raise DataError(
            f"`by` {column}: not a column of the data's manifest(s), nor source, label or one of the "
            f"DICOM attributes ({', '.join(DICOM_ATTRIBUTES)})"
        )
    return values


def _rate(hits: np.ndarray) -> dict[str, Any]:
    from scipy.stats import binomtest

    k, n = int(hits.sum()), int(len(hits))
    if not n:
        return {"value": None, "ci95": None, "k": 0, "n": 0}
    ci = binomtest(k, n).proportion_ci(method="wilson")
    return {"value": k / n, "ci95": [float(ci.low), float(ci.high)], "k": k, "n": n}


def breakdown(
    values: Sequence[str], y_true: np.ndarray, predicted: np.ndarray, scores: np.ndarray, positive_index: int
) -> list[dict[str, Any]]:
    """One row per value (most images first): n, positives, negatives, sensitivity and specificity at the
    stored rule (Wilson 95% intervals, with the counts), AUC where both classes are present, and notes."""
    from sklearn.metrics import roc_auc_score

    values = np.asarray(values, dtype=object)
    positive = np.asarray(y_true) == positive_index
    called = np.asarray(predicted) == positive_index
    rows = []
    for value in sorted(set(values), key=lambda v: (-int((values == v).sum()), str(v))):
        m = values == value
        pos, neg = m & positive, m & ~positive
        row = {
            "value": str(value),
            "n": int(m.sum()),
            "positives": int(pos.sum()),
            "negatives": int(neg.sum()),
            "sensitivity": _rate(called[pos]),
            "specificity": _rate(~called[neg]),
            "auc": float(roc_auc_score(positive[m], scores[m])) if pos.any() and neg.any() else None,
            "notes": [],
        }
        for name, count in (("positive", row["positives"]), ("negative", row["negatives"])):
            if 0 < count < SMALL_N:
                row["notes"].append(f"only {count} {name} images: a wide interval")
        rows.append(row)
    return rows


def format_breakdown(by: str, rows: Sequence[dict[str, Any]]) -> list[str]:
    """Terminal lines of one breakdown."""

    def cell(entry):
        if entry["value"] is None:
            return "-"
        return f"{entry['value']:.3f} [{entry['ci95'][0]:.3f}, {entry['ci95'][1]:.3f}] ({entry['k']}/{entry['n']})"

    lines = [f"by {by}:"]
    for r in rows:
        auc = "-" if r["auc"] is None else f"{r['auc']:.3f}"
        lines.append(
            f"  {r['value']}: n={r['n']}, sensitivity {cell(r['sensitivity'])}, specificity "
            f"{cell(r['specificity'])}, AUC {auc}" + (f"; {'; '.join(r['notes'])}" if r["notes"] else "")
        )
    return lines


def breakdown_html(by: str, rows: Sequence[dict[str, Any]]) -> str:
    """The breakdown as an HTML table for the report."""
    import html

    def cell(entry):
        if entry["value"] is None:
            return "-"
        return f"{entry['value']:.3f} ({entry['ci95'][0]:.3f}-{entry['ci95'][1]:.3f}), {entry['k']}/{entry['n']}"

    body = "".join(
        f"<tr><td>{html.escape(r['value'])}</td><td>{r['n']}</td><td>{cell(r['sensitivity'])}</td>"
        f"<td>{cell(r['specificity'])}</td><td>{'-' if r['auc'] is None else format(r['auc'], '.3f')}</td>"
        f"<td>{html.escape('; '.join(r['notes']))}</td></tr>"
        for r in rows
    )
    return (
        f"<h2>By {html.escape(by)}</h2><p>At the model's stored rule; 95% Wilson intervals.</p><table><thead>"
        "<tr><th>value</th><th>n</th><th>sensitivity</th><th>specificity</th><th>AUC</th><th>notes</th></tr>"
        f"</thead><tbody>{body}</tbody></table>"
    )
