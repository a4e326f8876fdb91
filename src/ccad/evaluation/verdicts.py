"""Readers' verdicts (or findings) joined with the result log: whether ccad was right, per period, for ``ccad
monitor --verdicts`` (``--truth``).

The verdicts are the log ``ccad serve --verdict-log`` appends (one JSON object a line: the result's pseudonym
``image``, the reader's ``outcome`` of it). Each result record of the log with a verdict counts as a true or
false positive or negative in the period of the result; the live sensitivity, specificity and PPV of a period
are those counts' shares with Wilson 95% intervals, set against the levels the site validated: a period whose
lower bound is under its level is marked. A result with no verdict is not counted (the readers' coverage is
reported); a later verdict on the same result replaces an earlier one.

The listener's results are judged by study instead: ``--truth`` takes the readers' findings as ``ccad validate``
does (a CSV, or their final HL7 ``ORU^R01`` or FHIR reports: :mod:`ccad.evaluation.findings`), keyed on the
study's accession number or UID, and each study with a finding counts once in each period it has an image in,
called positive when any of its images was (the listener's study rule).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ccad.errors import DataError
from ccad.evaluation.metrics import MEASURES, OUTCOMES, live_bounds, outcome_of

#: The longest verdict line read (a verdict is a few fields); a longer one is skipped.
MAX_LINE = 4096


def read_verdicts(path: str | os.PathLike) -> tuple[dict[str, bool], int]:
    """(result pseudonym -> whether the reader found the positive class, lines rejected) of a verdict log."""
    truth, rejected = {}, 0
    try:
        f = open(Path(path), "rb")
    except OSError as e:
        raise DataError(f"{path}: cannot read the verdicts ({e.strerror})") from None
    with f:
        while line := f.readline(MAX_LINE + 1):
            try:
                record = json.loads(line) if len(line) <= MAX_LINE else None
            except ValueError:
                record = None
            image = record.get("image") if isinstance(record, dict) else None
            outcome = record.get("outcome") if isinstance(record, dict) else None
            if not (isinstance(image, str) and len(image) == 16 and outcome in OUTCOMES):
                rejected += bool(line.strip())
                while line and not line.endswith(b"\n"):  # the rest of an over-long line
                    line = f.readline(MAX_LINE)
                continue
            truth[image] = outcome in ("true_positive", "false_negative")
    return truth, rejected


class LiveTally:
    """One period's outcomes, a result record at a time: each result (``field`` ``"image"``: a verdict a result)
    or each study (``"accession"`` or ``"study"``: a finding a study) with a truth counted once, called positive
    when any of its records was."""

    def __init__(self, truth: dict[str, bool], field: str = "image"):
        self.truth, self.field, self.results = truth, field, 0
        self.called: dict[str, bool] = {}  # each judged result's (or study's) key -> called positive

    def add(self, record: dict[str, Any]) -> None:
        self.results += 1
        key = record.get(self.field)
        if isinstance(key, str) and key in self.truth:
            self.called[key] = self.called.get(key, False) or bool(record["positive"])

    @property
    def outcomes(self) -> dict[str, int]:
        counts = dict.fromkeys(OUTCOMES, 0)
        for key, called in self.called.items():
            counts[outcome_of(called, self.truth[key])] += 1
        return counts

    def summary(self, validated: dict[str, float]) -> dict[str, Any]:
        outcomes = self.outcomes
        measures = live_bounds(outcomes)
        return {
            "results": self.results,
            "with_a_verdict": sum(outcomes.values()),
            "outcomes": outcomes,
            **measures,
            "under_validated": sorted(
                m for m, level in validated.items() if m in measures and measures[m]["ci95"][0] < level
            ),
        }


def readers_truth(
    verdicts: str | os.PathLike | None, findings: str | os.PathLike | None, positive: str, codes=None
) -> tuple[dict[str, bool], str, int]:
    """(key -> whether the readers found ``positive``, the result log's field it is keyed on, how much of the
    file was left out) from the verdict log or the readers' findings (at most one of them; ``codes``: of
    COVID-19 in their reports, :func:`ccad.evaluation.findings.read_truth`)."""
    if verdicts and findings:
        raise DataError("give the readers' verdicts or their findings, not both")
    if findings:
        from ccad.evaluation.findings import read_truth

        field, truth, skipped = read_truth(findings, positive, codes)
        return truth, field, sum((skipped or {}).values())
    truth, rejected = read_verdicts(verdicts) if verdicts else ({}, 0)
    return truth, "image", rejected


def check_levels(validated: dict[str, float]) -> dict[str, float]:
    """The validated levels, each a measure of :data:`MEASURES` in (0, 1)."""
    for measure, level in validated.items():
        if measure not in MEASURES or not 0 < level < 1:
            raise DataError(f"a validated level must be a measure ({', '.join(MEASURES)}) in (0, 1): {measure} {level}")
    return validated
