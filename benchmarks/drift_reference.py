"""Add the drift check's reference (and ``--rehearsal``: ccad adapt's rehearsal features) to a bundle exported
before ccad stored them (the shipped default's was).

    python benchmarks/drift_reference.py --model src/ccad/models/default --run /work/runs/default-model [--rehearsal]

The rehearsal features are what ``ccad train`` now stores: up to 200 training images a class (a fixed seed),
here their pooled features computed by the bundle on the run's ``split.csv`` training rows.

The reference is what ``ccad train`` now stores at training time: the validation split's out-of-distribution
distances and positive-class probabilities, here computed by the bundle itself (ONNX Runtime) on the images
listed in the run's ``val_predictions.csv``. The bundle's ``ood.npz`` and the card's hash of it are rewritten;
nothing else changes (the guard's cut-off and every other file stay as they were).
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from ccad.io.files import sha256
from ccad.models.card import ModelCard
from ccad.models.ood import OOD_FILE, load_guard
from ccad.scoring.predictor import OnnxPredictor
from ccad.screening import Screener


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="the bundle to complete")
    parser.add_argument("--run", required=True, help="the run folder it was exported from")
    parser.add_argument("--rehearsal", action="store_true", help="also add rehearsal.npz")
    parser.add_argument("--skip-reference", action="store_true")
    args = parser.parse_args()
    bundle = Path(args.model)
    if args.rehearsal:
        add_rehearsal(bundle, Path(args.run))
    if args.skip_reference:
        return
    with open(Path(args.run) / "val_predictions.csv", newline="") as f:
        paths = [row["file"] for row in csv.DictReader(f)]
    predictor = OnnxPredictor.load(bundle)
    scored = [p for p in list(Screener(predictor).screen(paths)) if not p.error]
    positive = predictor.classes.index(predictor.positive_class)
    guard = load_guard(bundle / OOD_FILE)
    distances = np.array([p.ood_distance for p in scored])
    guard = replace(
        guard, reference_distances=distances, reference_scores=np.array([p.raw_probabilities[positive] for p in scored])
    )
    guard.save(bundle / OOD_FILE)
    card = ModelCard.load(bundle)
    replace(
        card,
        ood=dict(card.ood, drift_reference={"images": len(scored), "scores": True}),
        sha256=dict(card.sha256, **{OOD_FILE: sha256(bundle / OOD_FILE)}),
    ).save(bundle)
    print(
        json.dumps(
            {
                "images": len(scored),
                "of": len(paths),
                "kept_by_guard": float(np.mean(distances <= guard.cutoff)),
                OOD_FILE: sha256(bundle / OOD_FILE),
            }
        )
    )


def add_rehearsal(bundle: Path, run: Path) -> None:
    from ccad.models.rehearsal import PER_CLASS, REHEARSAL_FILE, save_rehearsal

    predictor = OnnxPredictor.load(bundle)
    with open(run / "split.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "train" and r["label"] in predictor.classes]
    rng = np.random.default_rng(0)
    chosen = []
    for c in predictor.classes:
        mine = [r for r in rows if r["label"] == c]
        chosen += [mine[i] for i in rng.permutation(len(mine))[:PER_CLASS]]
    scored = [
        (r, p) for r, p in zip(chosen, list(Screener(predictor).screen([r["path"] for r in chosen]))) if not p.error
    ]
    save_rehearsal(
        bundle,
        np.stack([p.pooled for _, p in scored]),
        np.array([predictor.classes.index(r["label"]) for r, _ in scored]),
        predictor.classes,
    )
    card = ModelCard.load(bundle)
    replace(card, sha256=dict(card.sha256, **{REHEARSAL_FILE: sha256(bundle / REHEARSAL_FILE)})).save(bundle)
    print(json.dumps({"rehearsal_images": len(scored), REHEARSAL_FILE: sha256(bundle / REHEARSAL_FILE)}))


if __name__ == "__main__":
    main()
