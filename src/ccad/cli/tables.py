"""What ``ccad predict`` prints: the results as an aligned table, CSV or JSON text, in the columns every engine
writes (:func:`ccad.screening.results.result_columns`)."""

from __future__ import annotations

import csv
import io
import json
from typing import TYPE_CHECKING, Sequence

from ..errors import ConfigError

if TYPE_CHECKING:  # the library is imported when a command runs, not when the CLI starts
    from ..screening.records import Prediction
    from ..screening.screener import Screener

FORMATS = ("table", "json", "csv")


def format_results(results: Sequence["Prediction"], screener: "Screener", fmt: str = "table") -> str:
    """The results as ``table`` (aligned columns), ``csv`` or ``json`` text."""
    from ..screening.results import result_columns, result_row

    if fmt == "json":
        return json.dumps([r.to_dict() for r in results], indent=2)
    if fmt not in FORMATS:
        raise ConfigError(f"`fmt` must be one of {', '.join(FORMATS)}, got {fmt!r}")
    scores = screener.severity_scores
    columns = result_columns(screener.classes, scores)
    rule = screener.rule_text()
    rows = [result_row(r, screener.classes, scores, rule) for r in results]
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(columns)
        writer.writerows(rows)
        return buffer.getvalue().rstrip("\r\n")
    columns, rows = columns[:-2] + columns[-1:], [row[:-2] + row[-1:] for row in rows]  # the rule once, below
    widths = [max(len(str(x)) for x in col) for col in zip(columns, *rows)]
    table = "\n".join("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in [columns] + rows)
    return f"{table}\ndecision: {rule}"
