"""Readers' verdicts joined with the result log: whether ccad was right, per period, for ``ccad monitor
--verdicts``.

The verdicts are the log ``ccad serve --verdict-log`` appends (one JSON object a line: the result's pseudonym
``image``, the reader's ``outcome`` of it). Each result record of the log with a verdict counts as a true or
false positive or negative in the period of the result; the live sensitivity, specificity and PPV of a period
are those counts' shares with Wilson 95% intervals, set against the levels the site validated: a period whose
lower bound is under its level is marked. A result with no verdict is not counted (the readers' coverage is
reported); a later verdict on the same result replaces an earlier one.
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
    """One period's verdict outcomes, a result record at a time."""

    def __init__(self, truth: dict[str, bool]):
        self.truth, self.results, self.outcomes = truth, 0, dict.fromkeys(OUTCOMES, 0)

    def add(self, record: dict[str, Any]) -> None:
        self.results += 1
        truly = self.truth.get(record.get("image") or "")
        if truly is None:
            return
        self.outcomes[outcome_of(bool(record["positive"]), truly)] += 1

    def summary(self, validated: dict[str, float]) -> dict[str, Any]:
        measures = live_bounds(self.outcomes)
        return {
            "results": self.results,
            "with_a_verdict": sum(self.outcomes.values()),
            "outcomes": dict(self.outcomes),
            **measures,
            "under_validated": sorted(
                m for m, level in validated.items() if m in measures and measures[m]["ci95"][0] < level
            ),
        }


def check_levels(validated: dict[str, float]) -> dict[str, float]:
    """The validated levels, each a measure of :data:`MEASURES` in (0, 1)."""
    for measure, level in validated.items():
        if measure not in MEASURES or not 0 < level < 1:
            raise DataError(f"a validated level must be a measure ({', '.join(MEASURES)}) in (0, 1): {measure} {level}")
    return validated
