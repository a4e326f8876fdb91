"""What the page and the API show of a model: its card without internals or server paths, its decision rule in
words."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any


def decision_view(screener) -> dict[str, Any]:
    """How a probability becomes the class shown, in the words every output uses (``DecisionRule.describe``),
    without server paths."""
    rule, positive = screener.decision, screener.positive_class
    fitted_on = _without_paths(rule.fitted_on)
    return {
        "positive_class": positive,
        "threshold": rule.threshold,
        "rule": rule.rule,
        "fitted_on": fitted_on,
        "text": replace(rule, fitted_on=fitted_on).describe(positive),
    }


def data_names(source: str) -> list[str]:
    """Readable names of a training data description ("../shared/data/covid-cxr/manifest.csv + ..."): a
    manifest by its folder's name, a folder by its own."""
    names = []
    for part in str(source or "").split(" + "):
        part = part.split(" (")[0].strip()
        path = Path(part)
        names.append(path.parent.name if path.suffix.lower() == ".csv" and path.parent.name else path.name)
    return [n for n in names if n]


def model_card_view(card) -> dict[str, Any]:
    """What the page and ``GET /api/v1/model`` show (from a :class:`ccad.models.card.ModelCard`): no file
    hashes or internals, and no server paths (a path is shown by its last part)."""
    card = card.to_dict()
    keep = (
        "intended_use",
        "classes",
        "positive_class",
        "input_size",
        "backbone",
        "weights",
        "training_data",
        "evaluation",
        "preprocessing",
        "preprocess",
        "decision",
        "heatmap",
        "ood",
        "lung_segmenter",
        "versions",
    )
    view = _without_paths({k: card.get(k) for k in keep})
    if isinstance(view.get("training_data"), dict):
        view["training_data"]["names"] = data_names(card["training_data"].get("source", ""))
    if isinstance(view.get("evaluation"), dict):
        view["evaluation"]["names"] = data_names(card["evaluation"].get("data", ""))
    view["caveat"] = (
        "Screening aid for research, not a diagnosis. The metrics come only from the data named; "
        "images from other hospitals or scanners can score far worse."
    )
    return view


_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\s\\/'\"()]+)+[\\/]([^\s\\/'\"()]+)")


def _without_paths(value):
    if isinstance(value, dict):
        return {k: _without_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_paths(v) for v in value]
    if isinstance(value, str):
        return _PATH.sub(lambda m: m.group(1), value)
    return value
