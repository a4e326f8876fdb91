"""``ccad adapt``: the bundle's head(s) fine-tuned on a site's labelled images, without forgetting.

    ccad adapt --model BUNDLE --data site/ --out site-bundle [--test-fraction 0.3] [--sign KEY]

The backbone stays frozen (so the heatmaps, the out-of-distribution guard's features and the speed are
unchanged); only each view's Dense softmax head moves. In order:

1. The site's images are split by patient group (stratified; near-duplicate films grouped): a held-out
   local **test** split (``test_fraction``, 30%) that nothing is fitted on, and the rest to adapt on.
2. Each image is scored once by the bundle (ONNX Runtime): the *before* predictions and the pooled features.
3. Each head is refitted from its own weights by L-BFGS on the cross-entropy of the site's images plus the
   bundle's **rehearsal** features (a sample of its own training images' features, ``rehearsal.npz``: the
   old sources weigh as much as the site in all, so the model does not forget them), with an L2 pull towards
   the old weights (``l2``: the "L2-SP" prior of Li et al. 2018); :mod:`ccad.bundles.adapt_heads` holds the
   fit. A bundle without rehearsal features adapts with the pull alone, and says so.
4. The decision threshold is refitted with the bundle's own rule on out-of-fold predictions of the adapt
   split (5 folds: no image scores a head that saw it); the test split is never used to fit anything.
5. Before and after on the held-out local test split, each with its 95% interval, and the AUC before and
   after on a fifth of the rehearsal features kept out of the fit (what "does not forget" means, measured).

The new bundle is the base's files with a new ``model.onnx`` (the heads' weights replaced in the graph),
``cam_weights.npy`` and card; the INT8 model is dropped (it would need a new calibration). The card's
``site_adaptation`` records the base card's sha256, the local data's hash and counts, the split, the
settings and the before/after numbers. The drift check's reference becomes the held-out test split's own
scores and distances when it has at least 100 images; with fewer there is no drift check (the base's reference
scores belong to the old heads), until ``ccad calibrate --unlabelled`` makes one.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ccad._meta import __version__
from ccad.bundles.adapt_heads import FOLDS, HeadFit, head_initializers, head_probabilities
from ccad.bundles.files import write_derived_bundle
from ccad.data.datasets import DataSpec, group_near_duplicates, label_indices
from ccad.data.splits import _grouped_holdout
from ccad.errors import ConfigError, DataError
from ccad.evaluation.metrics import compute_metrics
from ccad.io.files import sha256
from ccad.models.card import BUNDLE_CARD, ModelCard
from ccad.models.decision import THRESHOLD_RULES, DecisionRule, fit_decision, site_target, threshold_for
from ccad.models.ood import OOD_FILE
from ccad.models.rehearsal import REHEARSAL_FILE, load_rehearsal
from ccad.screening import Screener

#: Fewer reference images than this make the drift check's PSI noise alone pass its alarm (ccad.evaluation.drift).
MIN_DRIFT_REFERENCE = 100


def _scored(screener: Screener, samples, skip_bad: bool):
    predictions = list(screener.screen([s.path for s in samples]))
    bad = [(s, p.error) for s, p in zip(samples, predictions) if p.error]
    if bad and not skip_bad:
        raise DataError(f"{bad[0][0].path}: {bad[0][1]} (pass `skip_bad` to leave unreadable files out)")
    return [(s, p) for s, p in zip(samples, predictions) if not p.error], len(bad)


def _metrics(y, probabilities, predicted, classes, positive, groups) -> dict[str, Any]:
    m = compute_metrics(y, probabilities, classes, positive, groups=groups, y_pred=predicted)
    return {k: m[k] for k in ("auc", "sensitivity", "specificity", "accuracy", "confusion_matrix") if k in m}


def adapt_bundle(
    model: str | os.PathLike,
    spec: DataSpec,
    out: str | os.PathLike,
    test_fraction: float = 0.3,
    l2: float = 1e-2,
    seed: int = 0,
    sign_key: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write ``out``: ``model`` with its head(s) fine-tuned on ``spec``'s images; returns the
    ``site_adaptation`` record."""
    model, out = Path(model), Path(out)
    if out.exists() and not overwrite:
        raise ConfigError(f"{out}: already exists (choose another `out` or remove it)")
    if not 0.1 <= test_fraction <= 0.5:
        raise ConfigError(f"`test_fraction` must be in [0.1, 0.5], got {test_fraction}")
    screener = Screener.load(model)
    graph, heads, old = _dense_heads(model, screener)
    site = _site_set(screener, spec, test_fraction, seed)
    rehearsal, check = _rehearsal(model, screener, site.features.shape[1], seed)
    fit = HeadFit(old, rehearsal, l2)
    adapt_idx = np.flatnonzero(~site.is_test)
    out_of_fold = fit.out_of_fold(site.features[adapt_idx], site.y[adapt_idx], site.groups[adapt_idx], seed)
    new_heads = fit.fit(site.features[adapt_idx], site.y[adapt_idx])
    decision = _refit_rule(screener.decision, site.y[adapt_idx], out_of_fold, screener.classes, screener.positive_class)
    after = head_probabilities(new_heads, site.features)
    record = _record(model, screener, site, decision, after, test_fraction, seed, l2, rehearsal, check, len(heads))
    record["rehearsal"] = _forgetting(model, screener, old, new_heads, check)
    positive = screener.classes.index(screener.positive_class)
    t = site.is_test
    _write(
        model, out, graph, heads, new_heads, decision, record, site.features[t], after[t, positive], screener, sign_key
    )
    return record


@dataclass
class SiteSet:
    """The site's images as the base bundle scores them, and which of them are the held-out local test."""

    source: str
    fingerprint: str
    counts: dict[str, int]
    unreadable: int
    is_test: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    features: np.ndarray
    before: np.ndarray


def _dense_heads(model: Path, screener: Screener):
    """The float graph, its Dense heads' initializer names in view order, and their weights."""
    import onnx
    from onnx import numpy_helper

    card = screener.card
    if card.head_file:
        raise ConfigError(f"{model}: its head is a scikit-learn model ({card.head_file}); adapt refits Dense heads")
    graph = onnx.load(str(card.checked_file(model, card.models["float"])))
    heads = head_initializers(graph, len(screener.classes))
    if len(heads) != screener.views:
        raise ConfigError(f"{model}: found {len(heads)} Dense heads in model.onnx for {screener.views} views")
    inits = {i.name: numpy_helper.to_array(i) for i in graph.graph.initializer}
    old = [(inits[w].astype(np.float32), inits[b].astype(np.float32)) for w, b in heads]
    return graph, heads, old


def _site_set(screener: Screener, spec: DataSpec, test_fraction: float, seed: int) -> SiteSet:
    classes = screener.classes
    dataset = spec.discover(model_classes=classes)
    samples = group_near_duplicates(dataset.samples)
    labels = label_indices(samples, classes)
    counts = {c: int((labels == i).sum()) for i, c in enumerate(classes)}
    if min(counts.values()) < 20:
        raise DataError(f"{dataset.source}: adapting needs at least 20 images of each class (has {counts})")
    test = _grouped_holdout(samples, range(len(samples)), test_fraction, seed)
    scored, unreadable = _scored(screener, samples, spec.skip_bad)
    index = {id(s): i for i, s in enumerate(samples)}
    return SiteSet(
        dataset.source,
        dataset.fingerprint(),
        counts,
        unreadable,
        np.array([index[id(s)] in test for s, _ in scored]),
        label_indices([s for s, _ in scored], classes),
        np.array([s.group for s, _ in scored]),
        np.stack([p.pooled for _, p in scored]).astype(np.float32),
        np.stack([p.raw_probabilities for _, p in scored]),
    )


def _rehearsal(model: Path, screener: Screener, dim: int, seed: int):
    """(features, labels) of the base model's training images to rehearse, and a fifth of them kept out of the
    fit to measure forgetting out of sample; empty without a stored ``rehearsal.npz``."""
    card = screener.card
    if (model / REHEARSAL_FILE).is_file() and REHEARSAL_FILE in card.sha256:
        r_x, r_y, r_classes = load_rehearsal(card.checked_file(model, REHEARSAL_FILE))
        if r_classes != screener.classes:
            raise ConfigError(
                f"{model}: its rehearsal features are of {r_classes}, the model's classes {screener.classes}"
            )
    else:
        r_x, r_y = np.zeros((0, dim), np.float32), np.zeros(0, np.int64)
    kept_out = np.random.default_rng(seed).permutation(len(r_x))[: len(r_x) // 5]
    check = np.zeros(len(r_x), bool)
    check[kept_out] = True
    return (r_x[~check], r_y[~check]), (r_x[check], r_y[check])


def _record(model, screener, site: SiteSet, decision, after, test_fraction, seed, l2, rehearsal, check, heads):
    """The card's ``site_adaptation`` record: the data, the split, the settings, the local test before and after."""
    rule, classes, positive, t = screener.decision, screener.classes, screener.positive_class, site.is_test
    before = site.before
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "ccad": __version__,
        "base": {"card_sha256": sha256(model / BUNDLE_CARD), "decision": rule.to_dict()},
        "data": {
            "source": site.source,
            "sha256": site.fingerprint,
            "images": len(site.y),
            "unreadable": site.unreadable,
            "counts": site.counts,
        },
        "split": {
            "adapt": int((~t).sum()),
            "test": int(t.sum()),
            "test_fraction": test_fraction,
            "seed": seed,
            "by": "patient group (near-duplicate films grouped), stratified by class",
        },
        "settings": {
            "l2_to_old_weights": l2,
            "rehearsal_images": int(len(rehearsal[0]) + len(check[0])),
            "folds_for_threshold": FOLDS,
            "heads": heads,
            "trained": "each view's Dense softmax head; the backbone frozen",
        },
        "local_test": {
            "before": _metrics(
                site.y[t], before[t], rule.predict(rule.calibrate(before[t])), classes, positive, site.groups[t]
            ),
            "after": _metrics(site.y[t], after[t], decision.predict(after[t]), classes, positive, site.groups[t]),
        },
        "note": "before and after on the same held-out local test split, which nothing was fitted on",
    }


def _forgetting(model, screener, old, new_heads, check) -> dict[str, Any]:
    c_x, c_y = check
    if not len(c_x):
        return {"note": f"{model} has no {REHEARSAL_FILE}: adapted with the L2 pull alone"}
    positive = screener.classes.index(screener.positive_class)
    return {
        "images_checked": int(len(c_x)),
        "auc_before": _auc(c_y, head_probabilities(old, c_x), positive),
        "auc_after": _auc(c_y, head_probabilities(new_heads, c_x), positive),
        "note": "on the fifth of the rehearsal features kept out of the fit (training images "
        "of the base model, so its own AUC there is optimistic)",
    }


def _refit_rule(rule: DecisionRule, y: np.ndarray, out_of_fold: np.ndarray, classes, positive: str) -> DecisionRule:
    """The bundle's own rule refitted on out-of-fold predictions: a training rule (youden, specificity-90...) as
    training fits it, a site's target (``ccad calibrate``: "specificity-0.90 at the site") at the same target."""
    index = classes.index(positive)
    fitted_on = "out-of-fold predictions of the site's adapt split"
    if rule.threshold is None:
        return DecisionRule(index)
    target = site_target(rule.rule)
    if target is not None:
        name, value = target
        scores = out_of_fold[:, index][(y != index) if name == "specificity" else (y == index)]
        return DecisionRule(index, threshold_for(scores, name, value), 1.0, rule.rule, f"{fitted_on} (n={len(y)})")
    if rule.rule not in THRESHOLD_RULES:  # a number given at training: kept as it is
        return replace(rule, fitted_on=f"{rule.fitted_on}; kept as given")
    decision = fit_decision(y, out_of_fold, classes, positive, rule.rule, fitted_on=fitted_on)
    return replace(decision, rule=f"{rule.rule} at the site")


def _auc(y, p, positive: int) -> float | None:
    from sklearn.metrics import roc_auc_score

    truth = np.asarray(y) == positive
    return float(roc_auc_score(truth, p[:, positive])) if 0 < truth.sum() < len(truth) else None


def _write(
    base: Path, out: Path, graph, heads, new_heads, decision, record, test_features, test_scores, screener, sign_key
) -> None:
    card = screener.card
    _replace_heads(graph, heads, new_heads)
    dropped = {name for variant, name in card.models.items() if variant != "float"}

    def write(work: Path) -> ModelCard:
        import onnx

        onnx.save(graph, str(work / card.models["float"]))
        np.save(
            work / card.heatmap["weights"],
            np.concatenate([w for w, _ in new_heads]).astype(np.float32) / len(new_heads),
        )
        ood = card.ood if screener.ood is None else _adapted_guard(screener, card, work, test_features, test_scores)
        return replace(
            card,
            decision=decision.to_dict(),
            ood=ood,
            models={"float": card.models["float"]},
            int8_check=None,
            extra=dict(card.extra, site_adaptation=record),
        )

    write_derived_bundle(base, out, [name for name in card.sha256 if name not in dropped], write, sign_key)


def _replace_heads(graph, heads, new_heads) -> None:
    from onnx import numpy_helper

    by_name = {i.name: i for i in graph.graph.initializer}
    for (w_name, b_name), (w, b) in zip(heads, new_heads):
        for name, value in ((w_name, w), (b_name, b)):
            dtype = numpy_helper.to_array(by_name[name]).dtype
            by_name[name].CopyFrom(numpy_helper.from_array(value.astype(dtype), name))


def _adapted_guard(screener, card: ModelCard, work: Path, test_features, test_scores) -> dict[str, Any]:
    """The guard is unchanged (the features are), but the scores are the new heads': the drift reference is the
    site's held-out split when it is large enough to be quiet, else there is none (the base's scores would
    describe another model). Saves the guard into ``work``; returns the card's ``ood`` entry."""
    enough = len(test_scores) >= MIN_DRIFT_REFERENCE
    guard = replace(
        screener.ood,
        reference_distances=screener.ood.distance(test_features) if enough else None,
        reference_scores=np.asarray(test_scores) if enough else None,
    )
    guard.save(work / OOD_FILE)
    reference = (
        {"images": len(test_scores), "scores": True, "source": "the site's held-out adapt test split"}
        if enough
        else {
            "images": 0,
            "why": f"the held-out split has {len(test_scores)} images, under "
            f"{MIN_DRIFT_REFERENCE}: no drift check (ccad calibrate --unlabelled gives one)",
        }
    )
    return dict(card.ood, drift_reference=reference)
