"""``ccad guard``: a bundle's out-of-distribution guard refitted on labelled films, the rest of it kept.

    >>> refit_guard("bundle/", DataSpec("manifest.csv"), "new-bundle/")   # doctest: +SKIP

The data is split as ``ccad train`` splits it (with the bundle's training seed), so on the data a bundle was
trained on the guard sees the same training and validation films as the model did. The guard
(:func:`ccad.screening.guard.fit_guard`) is fitted on the training split's films against the foreign inputs made
from them, its cut-off keeps 99% of the validation split, and the drift check's reference is the validation
split's distances and the model's probabilities. The network, heads and decision rule are the bundle's own.
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ccad._meta import __version__
from ccad.bundles.files import write_derived_bundle
from ccad.data.datasets import DataSpec
from ccad.data.splits import assign_splits
from ccad.errors import ConfigError, DataError
from ccad.models.ood import OOD_FILE
from ccad.screening import Screener
from ccad.screening.guard import fit_guard


def refit_guard(
    model: str | os.PathLike,
    spec: DataSpec,
    out: str | os.PathLike,
    evidence: str | os.PathLike | None = None,
    sign_key: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write ``out``: ``model`` with its guard refitted on ``spec``; returns the card's new ``ood`` entry.
    ``evidence`` (a ``benchmarks/guard.py`` report) adds the chosen candidate's figures to it."""
    model, out = Path(model), Path(out)
    if out.exists() and not overwrite:
        raise ConfigError(f"{out}: already exists (choose another `out` or remove it)")
    evaluation = guard_evidence(evidence) if evidence is not None else None  # bad input before any work
    screener = Screener.load(model)
    card = screener.card
    seed = int((card.training_config or {}).get("seed") or 0)
    dataset = assign_splits(spec.discover(), seed=seed)
    pooled, scores, paths = {}, {}, {}
    positive = screener.classes.index(screener.positive_class)
    for split in ("train", "val"):
        paths[split] = [str(s.path) for s in dataset.samples if s.split == split]
        predictions = list(screener.screen(paths[split]))
        bad = next((p for p in predictions if p.error), None)
        if bad is not None:
            raise DataError(f"{bad.name}: {bad.error}")
        pooled[split] = np.stack([p.pooled for p in predictions])
        scores[split] = np.array([p.raw_probabilities[positive] for p in predictions])
    guard = fit_guard(screener, pooled["train"], pooled["val"], paths["train"], seed)
    guard = replace(guard, reference_scores=scores["val"])
    fingerprint = dataset.fingerprint()
    entry = dict(
        guard.describe(),
        fitted={
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "ccad": __version__,
            "data": dataset.source,
            "data_sha256": fingerprint,
            "same_data_as_the_model": fingerprint == (card.training_data or {}).get("sha256"),
            "films": len(paths["train"]),
            "cutoff_films": len(paths["val"]),
            "seed": seed,
        },
    )
    if evaluation is not None:
        entry["evaluation"] = evaluation

    def write(work: Path):
        guard.save(work / OOD_FILE)
        return replace(card, ood=entry)

    write_derived_bundle(model, out, [f for f in card.sha256 if f != OOD_FILE], write, sign_key)
    return entry


def guard_evidence(path: str | os.PathLike) -> dict[str, Any]:
    """The chosen candidate's figures from a ``benchmarks/guard.py`` report, for a card."""
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
        chosen = report["candidates"][report["chosen"]]
        return {
            "by": "benchmarks/guard.py (BENCHMARKS.md, 'The guard'): leave one source out",
            "chosen": report["chosen"],
            "foreign_flagged": chosen["foreign_flagged_all"],
            "foreign_flagged_by_kind": {k: v["value"] for k, v in chosen["foreign_by_kind"].items() if v},
            "unseen_source_films_flagged": {k: v["value"] for k, v in chosen["chest_flagged_by_cell"].items() if v},
        }
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: not a benchmarks/guard.py report ({type(e).__name__})") from e
