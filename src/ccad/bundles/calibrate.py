"""``ccad calibrate``: a bundle's decision threshold (and, optionally, its out-of-distribution reference)
refitted on a site's own images, written as a new bundle.

A threshold is a property of the site as much as of the model: one fitted where the training sources still
separate the classes keeps another hospital's normals normal far less often (docs/generalization.md). A
specificity target needs only the site's normal images, which every site has in number:

    ccad calibrate --model BUNDLE --data site_normals/ --target specificity=0.90 --out site-bundle

- ``specificity=T``: the lowest threshold that keeps at least T of the site's negatives below it;
  ``sensitivity=T``: the highest threshold that still finds T of its positives.
- The operating point reached is reported with its 95% interval (Wilson on the images; the threshold's own
  spread from 2,000 bootstrap refits), and, when the data hold the other class too, the other rate at the
  new threshold. Both are measured on the images the threshold was fitted on: check them on other images.
- Refused, in one line, with fewer than :func:`minimum_images` images of the class the target is about.
- ``--unlabelled DIR``: the out-of-distribution reference is refitted on the site's own images (80% for the
  reference, 20% for the cut-off), so that its normal range is in distribution.

The new bundle is the base bundle's files with the new card (and guard): the card keeps everything it had,
with ``decision`` replaced and ``site_calibration`` recording the base card's and model's sha256, the
local data (source, fingerprint, counts), the target, the rule and the operating point. A signature of the
base bundle does not carry over; ``--sign KEY`` signs the new one.
"""

from __future__ import annotations

import datetime
import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ccad._meta import __version__
from ccad.bundles.files import write_derived_bundle
from ccad.data.datasets import DataSpec, label_indices
from ccad.errors import ConfigError, DataError
from ccad.io.files import sha256
from ccad.io.inputs import list_inputs
from ccad.models.card import BUNDLE_CARD, ModelCard
from ccad.models.decision import DecisionRule, threshold_for
from ccad.models.ood import OOD_FILE
from ccad.screening import Screener
from ccad.screening.guard import fit_guard

TARGETS = ("specificity", "sensitivity")
#: Held-back images a site's drift reference needs (ccad.evaluation.drift: fewer, and its noise passes the alarm).
MIN_DRIFT_REFERENCE = 100
BOOTSTRAP = 2000


def parse_target(text: str) -> tuple[str, float]:
    """``specificity=0.90`` -> ("specificity", 0.9)."""
    name, sep, value = text.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not sep or name not in TARGETS or not 0.5 <= number < 1.0:
        raise ConfigError(f"`target` {text!r}: expected specificity=T or sensitivity=T with T in [0.5, 1)")
    return name, number


def minimum_images(target: float) -> int:
    """Images of the target's class needed: at least 50, and enough that 5 of them fall on the far side of
    the threshold (for 0.90: 50; for 0.95: 100; for 0.99: 500)."""
    return max(50, math.ceil(5 / (1 - target) - 1e-9))


def _wilson(k: int, n: int) -> dict[str, Any]:
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(method="wilson")
    return {"value": k / n, "k": k, "n": n, "ci95": [float(ci.low), float(ci.high)]}


def calibrate_bundle(
    model: str | os.PathLike,
    spec: DataSpec,
    target: str,
    out: str | os.PathLike,
    unlabelled: str | os.PathLike | None = None,
    sign_key: str | os.PathLike | None = None,
    overwrite: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Write ``out``, the bundle ``model`` with its threshold fitted on ``spec``'s images to ``target`` (and
    its guard refitted on ``unlabelled``); returns the ``site_calibration`` record."""
    name, value = parse_target(target)
    out, model = Path(out), Path(model)
    if out.exists() and not overwrite:
        raise ConfigError(f"{out}: already exists (choose another `out` or remove it)")
    screener = Screener.load(model)
    dataset = spec.discover(model_classes=screener.classes)
    labels, score, unreadable = _site_scores(screener, dataset, spec.skip_bad)
    y = labels == screener.classes.index(screener.positive_class)
    group = score[~y] if name == "specificity" else score[y]
    needed = minimum_images(value)
    kind = f"non-{screener.positive_class}" if name == "specificity" else screener.positive_class
    if len(group) < needed:
        raise DataError(
            f"{dataset.source}: {len(group)} {kind} images cannot support {name} {value:.2f} with a "
            f"useful interval (needs at least {needed})"
        )
    threshold = threshold_for(group, name, value)
    record = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "ccad": __version__,
        "base": {
            "card_sha256": sha256(model / BUNDLE_CARD),
            "model_sha256": screener.card.sha256.get("model.onnx"),
            "decision": screener.decision.to_dict(),
        },
        "data": _data_record(dataset, labels, unreadable, screener.classes),
        "target": {name: value},
        "threshold": threshold,
        "threshold_bootstrap_ci95": _threshold_interval(group, name, value, seed),
        "achieved": _achieved(score, y, threshold, name),
        "note": "measured on the images the threshold was fitted on; check it on others of the site",
    }
    decision = DecisionRule(
        int(screener.classes.index(screener.positive_class)),
        threshold,
        screener.decision.temperature,
        f"{name}-{value:.2f} at the site",
        f"{dataset.source} (n={len(group)} {kind})",
    )
    guard = None
    if unlabelled is not None:
        guard, record["ood"] = _refit_guard(screener, unlabelled, seed)
    _write(model, out, screener.card, decision, record, guard, sign_key)
    return record


def _site_scores(screener: Screener, dataset, skip_bad: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """(label indices, the positive class's probability after the bundle's temperature, unreadable count) of
    the site's images, screened as ``predict`` screens them."""
    positive = screener.classes.index(screener.positive_class)
    scored = list(zip(dataset.samples, screener.screen([s.path for s in dataset.samples])))
    bad = [(str(s.path), p.error) for s, p in scored if p.error]
    kept = [(s, p) for s, p in scored if not p.error]
    if bad and not skip_bad:
        raise DataError(f"{bad[0][0]}: {bad[0][1]} (pass `skip_bad` to leave unreadable files out)")
    labels = label_indices([s for s, _ in kept], screener.classes)
    score = np.array([float(screener.decision.calibrate(p.raw_probabilities[None])[0, positive]) for _, p in kept])
    return labels, score, len(bad)


def _data_record(dataset, labels: np.ndarray, unreadable: int, classes) -> dict[str, Any]:
    return {
        "source": dataset.source,
        "sha256": dataset.fingerprint(),
        "images": len(labels),
        "unreadable": unreadable,
        "counts": {c: int((labels == i).sum()) for i, c in enumerate(classes)},
    }


def _threshold_interval(group: np.ndarray, name: str, value: float, seed: int) -> list[float]:
    """The threshold's bootstrap 95% interval: refitted on resamples of the images it was fitted on."""
    rng = np.random.default_rng(seed)
    refits = [threshold_for(rng.choice(group, len(group)), name, value) for _ in range(BOOTSTRAP)]
    return [float(np.percentile(refits, 2.5)), float(np.percentile(refits, 97.5))]


def _achieved(score: np.ndarray, y: np.ndarray, threshold: float, name: str) -> dict[str, Any]:
    """The target's proportion and the other one at ``threshold``, each with its Wilson interval."""
    group, other = (score[~y], score[y]) if name == "specificity" else (score[y], score[~y])
    hits = group < threshold if name == "specificity" else group >= threshold
    other_hits = other >= threshold if name == "specificity" else other < threshold
    other_name = "sensitivity" if name == "specificity" else "specificity"
    return {
        name: _wilson(int(hits.sum()), len(group)),
        other_name: _wilson(int(other_hits.sum()), len(other)) if len(other) else None,
    }


def _refit_guard(screener: Screener, folder: str | os.PathLike, seed: int):
    """The out-of-distribution guard fitted on the site's own films: 80% against the foreign inputs made from
    them, 20% the cut-off (and the drift check's reference: their distances and scores)."""
    paths = [str(p) for p in list_inputs([folder])]
    scored = [(path, p) for path, p in zip(paths, screener.screen(paths)) if not p.error]
    if len(scored) < 50:
        raise DataError(f"{folder}: {len(scored)} readable images; refitting the guard needs at least 50")
    pooled = np.stack([p.pooled for _, p in scored])
    positive = screener.classes.index(screener.positive_class)
    scores = np.array([p.raw_probabilities[positive] for _, p in scored])
    order = np.random.default_rng(seed).permutation(len(pooled))
    cut = int(0.8 * len(pooled))
    films = [scored[i][0] for i in order[:cut]]
    guard = fit_guard(screener, pooled[order[:cut]], pooled[order[cut:]], films, seed)
    # the drift check's reference becomes the site's own held-back images, when there are enough to be quiet (the
    # base's reference was measured against the old guard: it cannot stay)
    if len(pooled) - cut >= MIN_DRIFT_REFERENCE:
        guard = replace(guard, reference_scores=scores[order[cut:]])
    else:
        guard = replace(guard, reference_distances=None)
    return guard, {
        "source": str(folder),
        "images": len(pooled),
        "reference": cut,
        "cutoff_images": len(pooled) - cut,
        "cutoff": guard.cutoff,
        "drift_reference": len(pooled) - cut
        if guard.reference_distances is not None
        else f"none: {len(pooled) - cut} held-back images, under {MIN_DRIFT_REFERENCE} (use 500 or more)",
    }


def _write(
    base: Path, out: Path, card: ModelCard, decision: DecisionRule, record: dict[str, Any], guard, sign_key
) -> None:
    """The new bundle: the base's files, the new guard (if any) and card, renamed into place."""

    def write(work: Path) -> ModelCard:
        ood = card.ood
        if guard is not None:
            guard.save(work / OOD_FILE)
            ood = dict(guard.describe(), cutoff_rule=f"keeps {guard.keep:.0%} of the site's held-back images")
        return replace(card, decision=decision.to_dict(), ood=ood, extra=dict(card.extra, site_calibration=record))

    write_derived_bundle(base, out, card.sha256, write, sign_key)
