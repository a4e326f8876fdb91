"""``ccad monitor``: what a result log says about a period, for the site's review meeting.

    ccad monitor results.jsonl --out review/ [--period week] [--since 2026-11-01] [--model BUNDLE]

The log is the one ``ccad serve`` and ``ccad dicom listen`` append with ``--result-log``
(:class:`ccad.deploy.monitoring.ResultLog`: no patient field). For each period (day, week or month, in UTC) and
for all of it: the images scored, the share called positive and the share out of distribution (Wilson 95%
intervals), the lung-check flags, the mean score, how many images were scored while the live drift state was
``drift`` and when it changed. With ``--model``, each period's scores and out-of-distribution distances are
compared with that bundle's reference (the population stability index, :mod:`ccad.evaluation.drift`).

These are counts of what the model said, not of what the patients had: a rise in the positive rate is a
prevalence change or a model change, and only the radiologists' reports can tell which.
"""

from __future__ import annotations

import html
import json
import os
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from ccad.errors import DataError
from ccad.evaluation.drift import DRIFT, WINDOW, psi
from ccad.io.files import write_json, write_text

PERIODS = ("day", "week", "month")
NOTE = "Counts of what the model said, not of what the patients had. Screening aid for research, not a diagnosis."


def read_log(
    path: str | os.PathLike, since: date | None = None, until: date | None = None
) -> tuple[list[dict[str, Any]], int]:
    """The log's records in ``[since, until]`` (UTC dates), in time order, and how many lines were unreadable."""
    path = Path(path)
    records, bad = [], 0
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise DataError(f"{path}: cannot read the result log ({e.strerror})") from None
    for line in lines:
        try:
            record = json.loads(line)
            record["_time"] = datetime.fromisoformat(record["time"])
            float(record["score"])
        except (ValueError, KeyError, TypeError):
            bad += int(bool(line.strip()))
            continue
        day = record["_time"].date()
        if (since is None or day >= since) and (until is None or day <= until):
            records.append(record)
    if not records:
        raise DataError(
            f"{path}: no result records{' in that period' if since or until else ''} ({bad} unreadable lines)"
        )
    return sorted(records, key=lambda r: r["_time"]), bad


def period_of(moment: datetime, period: str) -> str:
    day = moment.date()
    if period == "week":
        return (day - timedelta(days=day.weekday())).isoformat()  # the Monday
    if period == "month":
        return day.strftime("%Y-%m")
    return day.isoformat()


def _share(k: int, n: int) -> dict[str, Any]:
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(method="wilson")
    return {"k": k, "n": n, "value": k / n, "ci95": [float(ci.low), float(ci.high)]}


def summarize(records: list[dict[str, Any]], reference=None) -> dict[str, Any]:
    """One period's (or the whole log's) counts; ``reference`` is an :class:`ccad.models.ood.OodGuard` with
    drift references, or None."""
    n = len(records)
    scores = np.array([float(r["score"]) for r in records])
    flags: dict[str, int] = {}
    for r in records:
        for flag in r.get("lung_qc") or ():
            flags[flag] = flags.get(flag, 0) + 1
    out = {
        "n": n,
        "first": records[0]["time"],
        "last": records[-1]["time"],
        "positive": _share(sum(bool(r.get("positive")) for r in records), n),
        "out_of_distribution": _share(sum(r.get("in_distribution") is False for r in records), n),
        "mean_score": float(scores.mean()),
        "lung_qc": flags,
        "scored_in_drift": sum(r.get("drift") == DRIFT for r in records),
        "adapters": sorted({str(r.get("adapter")) for r in records}),
    }
    if reference is not None and getattr(reference, "reference_scores", None) is not None:
        # as the live check measures it (its bins), and only over at least its window: on fewer images the PSI is
        # mostly the noise of a small sample
        distances = [float(r["ood_distance"]) for r in records if r.get("ood_distance") is not None]
        out["psi"] = {
            "score": psi(reference.reference_scores, scores) if n >= WINDOW else None,
            "distance": psi(reference.reference_distances, distances) if len(distances) >= WINDOW else None,
            "note": f"measured only on {WINDOW} images or more",
        }
    return out


def drift_changes(records: list[dict[str, Any]]) -> list[dict[str, str]]:
    """When the live drift state changed: from ``ok`` to ``drift`` and back, and the first full window when it
    was already in ``drift``."""
    changes, state = [], None
    for r in records:
        now = r.get("drift")
        if now in (None, "warming up") or now == state:
            continue
        if state is not None or now == DRIFT:  # a window that is full and already in drift counts as a change
            changes.append({"time": r["time"], "from": state or "warming up", "to": now})
        state = now
    return changes


def monitor(
    log: str | os.PathLike,
    out: str | os.PathLike,
    period: str = "day",
    since: date | None = None,
    until: date | None = None,
    reference=None,
) -> dict[str, Any]:
    """``monitor.json`` and ``monitor.html`` in ``out``; returns the JSON record."""
    records, bad = read_log(log, since, until)
    groups: dict[str, list] = {}
    for r in records:
        groups.setdefault(period_of(r["_time"], period), []).append(r)
    record = {
        "log": Path(log).name,
        "period": period,
        "unreadable_lines": bad,
        "overall": summarize(records, reference),
        "drift_changes": drift_changes(records),
        "periods": {key: summarize(rows, reference) for key, rows in groups.items()},
        "note": NOTE,
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "monitor.json", record)
    write_text(out / "monitor.html", _html(record))
    return record


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
            "out of distribution (95% CI)",
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
<p>By {html.escape(record["period"])} (UTC); {record["unreadable_lines"]} unreadable lines skipped. PSI (only over
{WINDOW} images or more) under 0.10: no change,
0.10-0.25: some, over 0.25: a real shift of what arrives (a new scanner, a new protocol or a new mix of
patients).</p>
<table><tr>{head}</tr>{"".join(rows)}</table>
<h2>Drift state changes (live check)</h2><ul>{changes}</ul>
</body></html>
"""
