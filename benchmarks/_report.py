"""Shared by the benchmark scripts: print the JSON report, and write it to --out when given."""

import json
from pathlib import Path


def emit(report: dict, out: str | None) -> None:
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        Path(out).write_text(text + "\n")
