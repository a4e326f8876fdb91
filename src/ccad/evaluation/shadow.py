"""``ccad validate --results LOG --truth CSV``: a silent go-live (``dicom listen --shadow``) judged against the
readers' findings, by the criteria written before the period (:mod:`ccad.evaluation.validate`).

The results are the result log the listener wrote (:class:`ccad.deploy.live_metrics.ResultLog`): one record a
scored image, with the pseudonyms of its study and accession number, no patient field. The truth is the
readers' findings, a CSV with a ``finding`` column (a class name) and an ``accession_number`` or
``study_instance_uid`` column; each key is hashed the way the log's is, so the join needs no patient data
in the log. One answer a study, by a documented rule: the study's score is the highest score among its scored
images, and it is called positive when any of them was. A study in the log without a finding, or a finding
without a study in the log, is counted and left out; the metrics (with their 95% intervals) are of the
studies that have both.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from ccad._meta import DEFAULT_POSITIVE
from ccad.errors import DataError
from ccad.evaluation.metrics import compute_metrics, wilson_share
from ccad.evaluation.monitor import Rejected, iter_log
from ccad.io.files import pseudonym

#: The truth file's key columns, and the result log's field each is joined on.
KEYS = {"accession_number": "accession", "study_instance_uid": "study"}
#: The largest truth file read (a CSV of findings: tens of bytes a study).
MAX_TRUTH_BYTES = 64 * 2**20


def read_truth(path: str | os.PathLike, positive: str) -> tuple[str, dict[str, bool]]:
    """(the result log's field the truth is keyed on, pseudonym of each key -> whether the reader found
    ``positive``)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_TRUTH_BYTES + 1)
    except OSError as e:
        raise DataError(f"{path}: cannot read the readers' findings ({e.strerror})") from None
    if len(data) > MAX_TRUTH_BYTES:
        raise DataError(f"{path}: over {MAX_TRUTH_BYTES // 2**20} MB; not a CSV of findings")
    rows = csv.DictReader(io.StringIO(data.decode("utf-8-sig", errors="replace")))
    key = next((k for k in KEYS if k in (rows.fieldnames or [])), None)
    if key is None or "finding" not in (rows.fieldnames or []):
        raise DataError(f"{path}: needs a 'finding' column and an 'accession_number' or 'study_instance_uid' one")
    truth = {pseudonym(r[key].strip()): r["finding"].strip() == positive for r in rows if (r.get(key) or "").strip()}
    if not truth:
        raise DataError(f"{path}: no findings")
    return KEYS[key], truth


def study_results(log: str | os.PathLike, field: str) -> tuple[dict[str, dict[str, Any]], int]:
    """(study key -> its highest score, whether any image was called positive, whether any was flagged by the
    guard), lines rejected) of a result log; records without the key are left out."""
    rejected, studies = Rejected(), {}
    for r in iter_log(log, rejected):
        key = r.get(field)
        if not isinstance(key, str):
            continue
        study = studies.setdefault(key, {"score": 0.0, "positive": False, "flagged": False, "images": 0})
        study["score"] = max(study["score"], r["score"])
        study["positive"] |= r["positive"]
        study["flagged"] |= r.get("in_distribution") is False
        study["images"] += 1
    return studies, sum(rejected.values())


def shadow_metrics(log: str | os.PathLike, truth_path: str | os.PathLike, positive: str = DEFAULT_POSITIVE) -> dict:
    """The metrics :func:`ccad.evaluation.validate.validate` judges, of the studies with both a result and a
    finding; with the join's counts under ``"join"``."""
    field, truth = read_truth(truth_path, positive)
    studies, rejected = study_results(log, field)
    joined = [(truth[k], s) for k, s in studies.items() if k in truth]
    if not joined:
        raise DataError(f"{truth_path}: none of its studies are in {Path(log).name} (joined on {field})")
    y_true = np.array([int(t) for t, _ in joined])
    scores = np.array([s["score"] for _, s in joined])
    classes = [f"not {positive}", positive]
    metrics = compute_metrics(
        y_true,
        np.stack([1 - scores, scores], axis=1),
        classes,
        positive,
        y_pred=np.array([int(s["positive"]) for _, s in joined]),
    )
    flagged = sum(s["flagged"] for _, s in joined)
    metrics["out_of_distribution"] = {**wilson_share(flagged, len(joined)), "rate": flagged / len(joined)}
    metrics["decision"] = {"positive_index": 1, "text": f"a study is {positive} when any of its images was called so"}
    metrics["data"], metrics["split"] = f"{Path(log).name} joined with {Path(truth_path).name}", "shadow period"
    metrics["join"] = {
        "on": field,
        "studies_in_log": len(studies),
        "findings": len(truth),
        "studies_joined": len(joined),
        "studies_without_a_finding": len(studies) - len(joined),
        "findings_without_a_study": len(truth) - len(joined),
        "unreadable_log_lines": rejected,
    }
    return metrics
