"""``ccad monitor``: what a result log says about a period, for the site's review meeting.

    ccad monitor results.jsonl --out review/ [--period week] [--since 2026-11-01] [--model BUNDLE]
        [--verdicts verdicts.jsonl | --truth readers-reports.hl7] [--validated-sensitivity 0.9]

The log is the one ``ccad serve`` and ``ccad dicom listen`` append with ``--result-log``
(:class:`ccad.deploy.live_metrics.ResultLog`: no patient field). For each period (day, week or month, in UTC) and
for all of it: the images scored, the share called positive and the share the guard flagged (Wilson 95%
intervals), the lung-check flags, the mean score, how many images were scored while the live drift state was
``drift`` and when it changed. With ``--model``, each period's scores and out-of-distribution distances are
compared with that bundle's reference (the population stability index, :mod:`ccad.evaluation.drift`).

These are counts of what the model said, not of what the patients had: a rise in the positive rate is a
prevalence change or a model change, and only the radiologists' reports can tell which. With ``--verdicts``
(the readers' verdicts, :mod:`ccad.evaluation.verdicts`), each period also has the live sensitivity,
specificity and PPV, set against the levels the site validated; with ``--truth`` (the readers' findings: a CSV,
their final HL7 or FHIR reports), the same by study, for the listener's results.
"""

from __future__ import annotations

import html
import json
import math
import os
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from ccad._meta import DEFAULT_POSITIVE
from ccad.errors import DataError
from ccad.evaluation.drift import BINS, DRIFT, OK, WARMING_UP, WINDOW, Signal
from ccad.evaluation.metrics import MEASURES, wilson_share
from ccad.evaluation.verdicts import LiveTally, check_levels, readers_truth
from ccad.io.files import write_text

PERIODS = ("day", "week", "month")
NOTE = "Counts of what the model said, not of what the patients had. Screening aid for research, not a diagnosis."


#: The longest line read as a record; a longer one (or a file without newlines) is skipped in chunks, never held.
MAX_LINE = 64 * 2**10
STATES = (OK, DRIFT, WARMING_UP)


class Rejected(dict):
    """How many lines were rejected, by reason, and how many times carried no UTC offset (read as UTC)."""

    naive_times = 0

    def add(self, reason: str) -> None:
        self[reason] = self.get(reason, 0) + 1


def _number(value, low: float = -math.inf, high: float = math.inf) -> bool:
    """A finite int or float (not a boolean) in [low, high]: 1e999 parses as infinity and is not one."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and low <= value <= high
    )


def validate(obj: Any, rejected: Rejected) -> dict[str, Any] | None:
    """``obj`` (a parsed line) as a record with its ``_time`` (timezone-aware), or None with the reason counted
    in ``rejected``: each field must have the type and range :class:`ccad.deploy.live_metrics.ResultLog` writes
    (a score in [0, 1], ``positive`` a boolean, a finite distance or null, ...). A time without a UTC offset is
    read as UTC and counted."""
    if not isinstance(obj, dict):
        return rejected.add("not a JSON object")
    try:
        moment = datetime.fromisoformat(obj["time"]) if isinstance(obj.get("time"), str) else None
    except ValueError:
        moment = None
    checks = [
        ("time", moment is not None),
        ("score", _number(obj.get("score"), 0.0, 1.0)),
        ("positive", isinstance(obj.get("positive"), bool)),
        ("in_distribution", obj.get("in_distribution") is None or isinstance(obj.get("in_distribution"), bool)),
        ("ood_distance", obj.get("ood_distance") is None or _number(obj.get("ood_distance"), 0.0)),
        (
            "lung_qc",
            isinstance(obj.get("lung_qc", []), list) and all(isinstance(f, str) for f in obj.get("lung_qc", [])),
        ),
        ("drift", obj.get("drift") is None or obj.get("drift") in STATES),
    ]
    bad = next((name for name, ok in checks if not ok), None)
    if bad is not None:
        return rejected.add(f"{bad} missing or out of range")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
        rejected.naive_times += 1
    return {**obj, "_time": moment.astimezone(timezone.utc)}


def iter_log(
    path: str | os.PathLike, rejected: Rejected, since: date | None = None, until: date | None = None
) -> Iterator[dict[str, Any]]:
    """The log's valid records in ``[since, until]`` (UTC dates), one line at a time, in the order they were
    written (the log is appended as images are scored); what is rejected is counted in ``rejected``."""
    path = Path(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DataError(f"{path}: cannot read the result log ({e.strerror})") from None
    with f:
        while line := f.readline(MAX_LINE + 1):
            if len(line) > MAX_LINE:
                while line and not line.endswith(b"\n"):  # the rest of the line, a chunk at a time
                    line = f.readline(MAX_LINE)
                rejected.add(f"a line over {MAX_LINE // 1024} KB")
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line, parse_constant=_no_constant)
            except ValueError:
                rejected.add("not JSON")
                continue
            record = validate(obj, rejected)
            if record is None:
                continue
            day = record["_time"].date()
            if (since is None or day >= since) and (until is None or day <= until):
                yield record


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity: Python's json accepts them, JSON does not


def read_log(
    path: str | os.PathLike, since: date | None = None, until: date | None = None
) -> tuple[list[dict[str, Any]], int]:
    """The log's records in ``[since, until]`` as a list (for small logs: :func:`monitor` streams), and how
    many lines were rejected."""
    rejected = Rejected()
    records = list(iter_log(path, rejected, since, until))
    if not records:
        scope = " in that period" if since or until else ""
        raise DataError(f"{path}: no result records{scope} ({sum(rejected.values())} rejected lines)")
    return records, sum(rejected.values())


def period_of(moment: datetime, period: str) -> str:
    day = moment.date()
    if period == "week":
        return (day - timedelta(days=day.weekday())).isoformat()  # the Monday
    if period == "month":
        return day.strftime("%Y-%m")
    return day.isoformat()


def _share(k: int, n: int) -> dict[str, Any]:
    return wilson_share(k, n)


class Tally:
    """One period's (or the whole log's) counts, added to a record at a time: memory does not grow with the
    log. ``reference`` is an :class:`ccad.models.ood.OodGuard` with drift references, or None: then the
    scores and distances are counted in the reference's bins, as the live check counts them."""

    def __init__(self, reference=None):
        self.n = self.positive = self.ood = self.in_drift = 0
        self.score_sum = 0.0
        self.first = self.last = None
        self.flags: dict[str, int] = {}
        self.adapters: set[str] = set()
        with_reference = reference is not None and getattr(reference, "reference_scores", None) is not None
        self.signals = (
            {
                "score": Signal.of(np.asarray(reference.reference_scores), BINS),
                "distance": Signal.of(np.asarray(reference.reference_distances), BINS),
            }
            if with_reference
            else None
        )

    def add(self, r: dict[str, Any]) -> None:
        self.n += 1
        self.positive += r["positive"]
        self.ood += r.get("in_distribution") is False
        self.in_drift += r.get("drift") == DRIFT
        self.score_sum += r["score"]
        self.first = self.first or r["time"]
        self.last = r["time"]
        for flag in r.get("lung_qc") or ():
            self.flags[flag] = self.flags.get(flag, 0) + 1
        self.adapters.add(str(r.get("adapter")))
        if self.signals is not None:
            self.signals["score"].counts[self.signals["score"].bin(r["score"])] += 1
            if r.get("ood_distance") is not None:
                self.signals["distance"].counts[self.signals["distance"].bin(r["ood_distance"])] += 1

    def summary(self) -> dict[str, Any]:
        out = {
            "n": self.n,
            "first": self.first,
            "last": self.last,
            "positive": _share(self.positive, self.n),
            "out_of_distribution": _share(self.ood, self.n),
            "mean_score": self.score_sum / self.n,
            "lung_qc": self.flags,
            "scored_in_drift": self.in_drift,
            "adapters": sorted(self.adapters),
        }
        if self.signals is not None:
            # only over at least the live check's window: on fewer images the PSI is mostly a small sample's noise
            out["psi"] = {
                name: signal.psi() if signal.counts.sum() >= WINDOW else None for name, signal in self.signals.items()
            }
            out["psi"]["note"] = f"measured only on {WINDOW} images or more"
        return out


class DriftChanges(list):
    """When the live drift state changed, added to a record at a time: from ``ok`` to ``drift`` and back, and
    the first full window when it was already in ``drift``."""

    state = None

    def add(self, r: dict[str, Any]) -> None:
        now = r.get("drift")
        if now in (None, WARMING_UP) or now == self.state:
            return
        if self.state is not None or now == DRIFT:  # a window that is full and already in drift counts as a change
            self.append({"time": r["time"], "from": self.state or WARMING_UP, "to": now})
        self.state = now


def drift_changes(records: Iterable[dict[str, Any]]) -> list[dict[str, str]]:
    changes = DriftChanges()
    for r in records:
        changes.add(r)
    return list(changes)


def monitor(
    log: str | os.PathLike,
    out: str | os.PathLike,
    period: str = "day",
    since: date | None = None,
    until: date | None = None,
    reference=None,
    verdicts: str | os.PathLike | None = None,
    validated: dict[str, float] | None = None,
    findings: str | os.PathLike | None = None,
    codes: list[str] | None = None,
) -> dict[str, Any]:
    """``monitor.json`` and ``monitor.html`` in ``out``; returns the JSON record. The log is read once, a line at
    a time: memory holds one tally a period, whatever the log's size. With ``verdicts`` (the readers' verdict
    log, :mod:`ccad.evaluation.verdicts`) or ``findings`` (their findings by study), each period's live
    sensitivity, specificity and PPV, set against the ``validated`` levels (``{"sensitivity": 0.9}``)."""
    rejected, overall, changes = Rejected(), Tally(reference), DriftChanges()
    periods: dict[str, Tally] = {}
    truth, field, left_out = readers_truth(verdicts, findings, DEFAULT_POSITIVE, codes)
    live = {"all": LiveTally(truth, field)} if verdicts or findings else {}
    for r in iter_log(log, rejected, since, until):
        overall.add(r)
        key = period_of(r["_time"], period)
        periods.setdefault(key, Tally(reference)).add(r)
        changes.add(r)
        if live:
            live["all"].add(r)
            live.setdefault(key, LiveTally(truth, field)).add(r)
    if overall.n == 0:
        raise DataError(
            f"{log}: no result records{' in that period' if since or until else ''} "
            f"({sum(rejected.values())} rejected lines)"
        )
    record = {
        "log": Path(log).name,
        "period": period,
        "unreadable_lines": sum(rejected.values()),
        "rejected": dict(sorted(rejected.items())),
        "times_without_utc_offset_read_as_utc": rejected.naive_times,
        "overall": overall.summary(),
        "drift_changes": list(changes),
        "periods": {key: tally.summary() for key, tally in sorted(periods.items())},
        "note": NOTE,
    }
    if live:
        record["live"] = _live_record(live, verdicts or findings, field, left_out, check_levels(validated or {}))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "monitor.json", json.dumps(record, indent=2, allow_nan=False) + "\n")
    write_text(out / "monitor.html", _html(record))
    return record


def _live_record(live: dict[str, LiveTally], source, field: str, left_out: int, levels: dict[str, float]) -> dict:
    """The readers' part of the record: each period's live measures from ``source`` (their verdicts, or their
    findings by study when ``field`` is a study's)."""
    verdicts = field == "image"
    return {
        "verdicts": Path(source).name,
        "unit": "result" if verdicts else "study",
        "unreadable_verdict_lines" if verdicts else "reports_left_out": left_out,
        "validated": levels,
        "by_period": {key: tally.summary(levels) for key, tally in sorted(live.items())},
        "note": f"From the readers' {'verdicts' if verdicts else 'findings'} on the "
        f"{'results' if verdicts else f'studies (by {field})'} that have one; Wilson 95% intervals.",
    }


def _live_html(live: dict[str, Any] | None) -> str:
    """The readers' verdicts table: each period's live measures, marked where under the validated level."""
    if live is None:
        return ""
    rows = []
    for key, s in live["by_period"].items():
        cells = [key, s["results"], s["with_a_verdict"]]
        cells += [_pct(s[m]) + (" UNDER" if m in s["under_validated"] else "") if m in s else "-" for m in MEASURES]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    levels = ", ".join(f"{m} {v:.1%}" for m, v in live["validated"].items()) or "none given"
    head = "".join(f"<th>{h}</th>" for h in ["period", "results", "with a verdict", *MEASURES])
    return (
        f"<h2>Readers' verdicts: live performance (95% CI)</h2><p>{html.escape(live['note'])} Validated levels: "
        f"{html.escape(levels)}; UNDER: the lower bound is under it.</p><table><tr>{head}</tr>{''.join(rows)}</table>"
    )


def _pct(share: dict[str, Any]) -> str:
    return f"{share['value']:.1%} [{share['ci95'][0]:.1%}, {share['ci95'][1]:.1%}] ({share['k']}/{share['n']})"


def _html(record: dict[str, Any]) -> str:
    with_psi = "psi" in record["overall"]
    head = "".join(
        f"<th>{h}</th>"
        for h in [
            "period",
            "images",
            "called positive (95% CI)",
            "flagged: not a frontal chest X-ray (95% CI)",
            "mean score",
            "scored in drift",
        ]
        + (["score PSI", "distance PSI"] if with_psi else [])
    )
    rows = []
    for key, s in [*record["periods"].items(), ("all", record["overall"])]:
        cells = [
            key,
            s["n"],
            _pct(s["positive"]),
            _pct(s["out_of_distribution"]),
            f"{s['mean_score']:.3f}",
            s["scored_in_drift"],
        ]
        if with_psi:
            cells += [f"{v:.3f}" if v is not None else "-" for v in (s["psi"]["score"], s["psi"]["distance"])]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    changes = (
        "".join(
            f"<li>{html.escape(c['time'])}: {html.escape(str(c['from']))} &rarr; {html.escape(str(c['to']))}</li>"
            for c in record["drift_changes"]
        )
        or "<li>none</li>"
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>ccad monitoring</title>
<style>body{{font-family:sans-serif;max-width:70em;margin:2em auto}}td,th{{border:1px solid #ccc;padding:.3em}}
table{{border-collapse:collapse}}</style></head><body>
<h1>ccad monitoring: {html.escape(record["log"])}</h1>
<p><b>{html.escape(NOTE)}</b></p>
<p>By {html.escape(record["period"])} (UTC); {record["unreadable_lines"]} lines rejected
({html.escape(", ".join(f"{k}: {v}" for k, v in record["rejected"].items()) or "none")});
{record["times_without_utc_offset_read_as_utc"]} times without a UTC offset read as UTC. PSI (only over
{WINDOW} images or more) under 0.10: no change,
0.10-0.25: some, over 0.25: a real shift of what arrives (a new scanner, a new protocol or a new mix of
patients).</p>
<table><tr>{head}</tr>{"".join(rows)}</table>
<h2>Drift state changes (live check)</h2><ul>{changes}</ul>
{_live_html(record.get("live"))}
</body></html>
"""
