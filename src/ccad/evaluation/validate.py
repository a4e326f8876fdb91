"""``ccad validate``: a local acceptance test, with criteria written down before the run.

    ccad validate --data site/ --criteria acceptance.toml --out site-validation

The criteria file (TOML) names what the site requires, each against a 95% interval at the model's stored
decision rule, never a point estimate (for a proportion, the wider of the patient-grouped bootstrap's and
the Wilson interval: a bootstrap of 24 right out of 24 is [1, 1]):

    [[criterion]]
    metric = "sensitivity"      # accuracy, sensitivity, specificity, precision, f1, auc, out_of_distribution
    at_least = 0.80             # the interval's lower end must reach it

    [[criterion]]
    metric = "out_of_distribution"
    at_most = 0.10              # the interval's upper end must stay within it

    [subgroups]                 # optional: results by these fields (ccad evaluate --by)
    by = ["ViewPosition", "Manufacturer"]

Each criterion gets a verdict: **pass** (the whole interval on the right side), **fail** (the whole interval
on the wrong side) or **not enough images to tell** (the interval straddles the bar), with, for the last,
about how many images would tell at the rate observed (the interval narrows as one over the square root of
the images; "none would" when the rate itself is on the wrong side). The report (``validation.json`` and
``validation.html``) records the criteria file's sha256, the model's and the data's; exit 0 when every
criterion passes, 1 otherwise, 2 on bad input.
"""

from __future__ import annotations

import html
import math
import os
import tomllib
from pathlib import Path
from typing import Any

from ccad.errors import ConfigError
from ccad.io.files import sha256, write_json, write_text

METRICS = ("accuracy", "sensitivity", "specificity", "precision", "f1", "auc", "out_of_distribution")
#: Which images a metric's count is about (for "how many would tell").
COUNTED = {"sensitivity": "positive", "specificity": "negative", "precision": "called positive"}
PASS, FAIL, UNDECIDED = "pass", "fail", "not enough images to tell"


def read_criteria(path: str | os.PathLike) -> dict[str, Any]:
    """The criteria file, checked: a list of ``[[criterion]]`` tables, each a known metric with one of
    ``at_least`` / ``at_most`` in [0, 1]; an optional ``[subgroups] by = [...]``."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"`criteria` {path}: cannot be read ({e.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"`criteria` {path}: not valid TOML ({e})") from None
    criteria = raw.get("criterion")
    if not isinstance(criteria, list) or not criteria:
        raise ConfigError(f"`criteria` {path}: no [[criterion]] tables")
    for i, c in enumerate(criteria, start=1):
        bound = [k for k in ("at_least", "at_most") if k in c]
        if c.get("metric") not in METRICS:
            raise ConfigError(f"`criteria` {path}: criterion {i}: metric must be one of {', '.join(METRICS)}")
        number = len(bound) == 1 and isinstance(c[bound[0]], (int, float)) and not isinstance(c[bound[0]], bool)
        if not number or not 0 <= c[bound[0]] <= 1:
            raise ConfigError(f"`criteria` {path}: criterion {i}: give one of at_least or at_most, a number in [0, 1]")
        unknown = set(c) - {"metric", "at_least", "at_most", "note"}
        if unknown:
            raise ConfigError(f"`criteria` {path}: criterion {i}: unknown key {sorted(unknown)[0]!r}")
    by = (raw.get("subgroups") or {}).get("by", [])
    if not isinstance(by, list) or not all(isinstance(b, str) for b in by):
        raise ConfigError(f"`criteria` {path}: [subgroups] by must be a list of field names")
    return {"criteria": criteria, "by": by, "sha256": sha256(path), "file": path.name}


def verdict(entry: dict[str, Any] | None, criterion: dict[str, Any], n: int | None) -> dict[str, Any]:
    """One criterion's verdict on a metric entry (``value``, ``ci95``) measured on ``n`` images."""
    at_least = "at_least" in criterion
    bar = float(criterion["at_least" if at_least else "at_most"])
    out = {"metric": criterion["metric"], ("at_least" if at_least else "at_most"): bar}
    if not entry or entry.get("value") is None:
        return dict(out, verdict=UNDECIDED, why="not measurable on these images (a class is missing)")
    value, (low, high) = float(entry["value"]), entry.get("ci95") or (entry["value"], entry["value"])
    out.update(value=value, ci95=[low, high])
    good, bad = (low >= bar, high < bar) if at_least else (high <= bar, low > bar)
    if good:
        return dict(out, verdict=PASS)
    if bad:
        return dict(out, verdict=FAIL)
    wrong_side = value < bar if at_least else value > bar
    half = (value - low) if at_least else (high - value)
    if wrong_side or value == bar or not n or half <= 0:
        return dict(
            out, verdict=UNDECIDED, why="more images would not tell at the rate observed: it is not past the bar"
        )
    needed = math.ceil(round(n * (half / abs(value - bar)) ** 2, 6))  # round: 0.85 - 0.75 is 0.0999...
    return dict(
        out,
        verdict=UNDECIDED,
        images_needed=needed,
        why=f"about {needed} images (now {n}) would tell, if the rate stays at {value:.3f}",
    )


def _hits(metrics: dict[str, Any], metric: str) -> tuple[int, int] | None:
    """``(k, n)`` behind a proportion (accuracy, sensitivity, specificity, precision), from the confusion
    matrix; None for the others."""
    matrix = metrics.get("confusion_matrix")
    if not matrix or len(matrix) != 2 or metric not in (*COUNTED, "accuracy"):
        return None
    positive = int((metrics.get("decision") or {}).get("positive_index", 0))
    negative = 1 - positive
    k = {
        "sensitivity": matrix[positive][positive],
        "specificity": matrix[negative][negative],
        "precision": matrix[positive][positive],
        "accuracy": matrix[0][0] + matrix[1][1],
    }[metric]
    n = _count(metrics, metric) if metric != "accuracy" else sum(map(sum, matrix))
    return (int(k), int(n)) if n else None


def _widened(entry: dict[str, Any] | None, hits: tuple[int, int] | None) -> dict[str, Any] | None:
    """A proportion's interval as the wider of the (grouped) bootstrap's and Wilson's: the bootstrap of
    24 right out of 24 is [1, 1], which would let "specificity at least 1.0" pass on 24 images."""
    if not entry or entry.get("value") is None or hits is None:
        return entry
    from scipy.stats import binomtest

    wilson = binomtest(*hits).proportion_ci(method="wilson")
    low, high = entry.get("ci95") or (entry["value"], entry["value"])
    return dict(entry, ci95=[min(low, float(wilson.low)), max(high, float(wilson.high))])


def _count(metrics: dict[str, Any], metric: str) -> int | None:
    """How many images a metric is measured on (the positives for sensitivity, the negatives for
    specificity...)."""
    matrix = metrics.get("confusion_matrix")
    if metric == "out_of_distribution":
        return (metrics.get("out_of_distribution") or {}).get("n")
    if matrix and len(matrix) == 2 and metric in COUNTED:
        positive = int((metrics.get("decision") or {}).get("positive_index", 0))
        negative = 1 - positive
        return {
            "sensitivity": sum(matrix[positive]),
            "specificity": sum(matrix[negative]),
            "precision": matrix[positive][positive] + matrix[negative][positive],
        }[metric]
    return metrics.get("n")


def validate(metrics: dict[str, Any], criteria: dict[str, Any]) -> list[dict[str, Any]]:
    """Every criterion's verdict on an evaluation's metrics."""
    out = []
    for criterion in criteria["criteria"]:
        metric = criterion["metric"]
        entry = metrics.get(metric)
        if metric == "out_of_distribution" and entry is not None:
            entry = {"value": entry.get("rate"), "ci95": entry.get("ci95")}
        entry = _widened(entry, _hits(metrics, metric))
        out.append(verdict(entry, criterion, _count(metrics, metric)))
    return out


def _bar(v: dict[str, Any]) -> str:
    return "&ge; " + format(v["at_least"], ".3f") if "at_least" in v else "&le; " + format(v["at_most"], ".3f")


def write_validation(
    out: Path, verdicts: list[dict[str, Any]], criteria: dict[str, Any], metrics: dict[str, Any], model: dict[str, Any]
) -> dict[str, Any]:
    """``validation.json`` and ``validation.html``; returns the JSON record."""
    overall = (
        PASS
        if all(v["verdict"] == PASS for v in verdicts)
        else (FAIL if any(v["verdict"] == FAIL for v in verdicts) else UNDECIDED)
    )
    record = {
        "verdict": overall,
        "criteria_file": criteria["file"],
        "criteria_sha256": criteria["sha256"],
        "model": model,
        "data": metrics.get("data"),
        "split": metrics.get("split"),
        "n": metrics.get("n"),
        "decision": metrics.get("decision", {}).get("text"),
        "verdicts": verdicts,
        "by": metrics.get("by", {}),
        "note": "a local acceptance test of a research screening aid, not a "
        "diagnosis; every number is from the images named, at the model's stored rule",
    }
    write_json(out / "validation.json", record)
    rows = "".join(
        f"<tr class='{v['verdict'].split()[0]}'><td>{html.escape(v['metric'])}</td>"
        f"<td>{_bar(v)}</td>"
        f"<td>{'-' if 'value' not in v else format(v['value'], '.3f')}</td>"
        f"<td>{'-' if 'ci95' not in v else format(v['ci95'][0], '.3f') + ' - ' + format(v['ci95'][1], '.3f')}</td>"
        f"<td><b>{html.escape(v['verdict'])}</b></td><td>{html.escape(v.get('why', ''))}</td></tr>"
        for v in verdicts
    )
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>ccad local acceptance test</title>
<style>body{{font-family:sans-serif;max-width:60rem;margin:auto;padding:1rem}}
td,th{{border:1px solid #ccc;padding:.3rem}}
table{{border-collapse:collapse}}tr.pass{{background:#e6f4ea}}tr.fail{{background:#fce8e6}}tr.not{{background:#fef7e0}}
.caveat{{background:#fef7e0;padding:.5rem}}</style></head><body>
<h1>Local acceptance test: {html.escape(overall)}</h1>
<p class="caveat">A research screening aid, not a diagnosis. Every number comes from the images named below, at the
model's stored decision rule ({html.escape(str(record["decision"]))}), with 95% intervals.</p>
<p>Data: {html.escape(str(record["data"]))} ({record["n"]} images, {html.escape(str(record["split"]))} split).
Criteria: {html.escape(criteria["file"])} (sha256 {criteria["sha256"]}). Model: {html.escape(str(model.get("name")))}
(card sha256 {html.escape(str(model.get("card_sha256")))}).</p>
<table><thead><tr><th>metric</th><th>required</th><th>measured</th><th>95% interval</th><th>verdict</th><th></th></tr>
</thead><tbody>{rows}</tbody></table>
<p>The full evaluation (figures, subgroups, every image's result):
<a href="evaluation/report.html">evaluation/report.html</a>.</p>
</body></html>"""
    write_text(out / "validation.html", page)
    return record
