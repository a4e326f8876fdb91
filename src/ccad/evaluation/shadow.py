"""``ccad validate --results LOG --truth FILE``: a silent go-live (``dicom listen --shadow``) judged against the
readers' findings, by the criteria written before the period (:mod:`ccad.evaluation.validate`).

The results are the result log the listener wrote (:class:`ccad.deploy.live_metrics.ResultLog`): one record a
scored image, with the pseudonyms of its study and accession number, no patient field. The truth is the
readers' findings (:mod:`ccad.evaluation.findings`): a CSV with a ``finding`` column (a class name) and an
``accession_number`` or ``study_instance_uid`` column, or the readers' final reports as HL7 v2 ``ORU^R01``
messages or FHIR ``DiagnosticReport`` s (keyed on the field more of them carry; the reports left out are counted
under ``"join"``). Each key is hashed the way the log's is, so the join needs no patient data in the log. One
answer a study, by a documented rule: the study's score is the highest score among its scored images, and it is
called positive when any of them was. A study in the log without a finding, or a finding without a study in the
log, is counted and left out; the metrics (with their 95% intervals) are of the studies that have both.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

from ccad._meta import DEFAULT_POSITIVE
from ccad.errors import DataError
from ccad.evaluation.findings import left_out, read_truth
from ccad.evaluation.metrics import compute_metrics, wilson_share
from ccad.evaluation.monitor import Rejected, iter_log


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


def shadow_metrics(
    log: str | os.PathLike,
    truth_path: str | os.PathLike,
    positive: str = DEFAULT_POSITIVE,
    codes: Collection[str] | None = None,
) -> dict:
    """The metrics :func:`ccad.evaluation.validate.validate` judges, of the studies with both a result and a
    finding; with the join's counts under ``"join"``. ``codes``: those of COVID-19 in HL7 or FHIR reports
    (default: :data:`ccad.evaluation.findings.COVID_CODES` and ``positive``)."""
    field, truth, skipped = read_truth(truth_path, positive, codes)
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
    data = f"{Path(log).name} joined with {Path(truth_path).name} on {field}"
    if skipped is not None:
        data += f" (reports left out: {left_out(skipped)})"
    metrics["data"], metrics["split"] = data, "shadow period"
    metrics["join"] = {
        "on": field,
        "studies_in_log": len(studies),
        "findings": len(truth),
        "studies_joined": len(joined),
        "studies_without_a_finding": len(studies) - len(joined),
        "findings_without_a_study": len(truth) - len(joined),
        "unreadable_log_lines": rejected,
    }
    if skipped is not None:
        metrics["join"]["reports_skipped"] = skipped
    return metrics
