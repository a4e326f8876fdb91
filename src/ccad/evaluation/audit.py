"""``ccad audit``: does the model read the lungs, or where the image came from?

Three checks (after DeGrave et al., Nature Machine Intelligence 2021):

1. *Lung test*: every image is scored three times: as is, with the lung
   fields blanked (set to the image's mean), and with everything *but* the lung
   fields blanked. A model that still separates the classes with the lungs
   hidden (AUC well above 0.5) is reading something else: borders, text,
   markers, exposure, the scanner.
2. *Heatmap mass*: the share of the positive class's activation map (CAM) that
   falls inside the lung fields, next to the share of the image the lung fields
   cover (what a map spread evenly would score).
3. *Source probe*: when the manifest has a ``source`` column, a logistic
   regression on the model's pooled features, cross-validated by patient group,
   predicts the source. Where source and label coincide (every COVID image from
   one source), the probe cannot tell source from disease, and the report says so;
   within a class that spans several sources it can.

The lung fields come from the shipped segmenter (:mod:`ccad.models.lungs`); the report draws them on
examples. Every variant is scored by :meth:`ccad.screening.Screener.score`, as ``predict`` scores; the
AUCs use the model's own probabilities (before the decision rule's temperature). Writes ``DIR/audit.json``,
``DIR/report.html`` and ``DIR/figures/``.
"""

from __future__ import annotations

import html
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ccad.data.datasets import DataSpec
from ccad.errors import DataError, ImageReadError
from ccad.evaluation.evaluate import scoring_set
from ccad.evaluation.metrics import bootstrap_intervals, interval_cells
from ccad.evaluation.reports import figures_html, html_page
from ccad.io.files import write_json, write_text
from ccad.io.images import read_grayscale
from ccad.io.pictures import pyplot, save_figure
from ccad.models.lungs import blank
from ccad.preprocessing.pipeline import prepare_full
from ccad.screening import Screener

#: Verdict thresholds (the issue's aim for a lung-reading model: lung-blanked AUC <= 0.65).
LUNG_BLANKED_AUC_LIMIT = 0.65
EXAMPLES = 8


def audit(
    model: str | os.PathLike,
    spec: DataSpec,
    out: str | os.PathLike,
    split: str | None = None,
    max_images: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the three checks for ``model`` (bundle, run folder or model file) on ``spec``'s data; return the results."""
    screener = Screener.load(model)
    dataset, split = scoring_set(screener, model, spec, split, seed)
    samples = _audit_samples(dataset, split, max_images, seed)
    loaded = _load_variants(samples, screener.input_size, screener.preprocess)
    kept = [s for s, v in zip(samples, loaded) if v is not None]
    skipped = [{"path": str(s.path), "error": "unreadable"} for s, v in zip(samples, loaded) if v is None]
    if not kept:
        raise DataError(f"{dataset.source}: none of the {split} images could be read")
    loaded = [v for v in loaded if v is not None]
    lung_masks = np.stack([v["mask"] for v in loaded])
    qc = [v["original"].qc_flags for v in loaded]
    is_positive = np.array([s.label == screener.positive_class for s in kept])
    groups = [s.group for s in kept] if dataset.layout in ("manifest", "pooled") else None
    scores, variants, cams, pooled = _score_variants(screener, [str(s.path) for s in kept], loaded)
    result = {
        "model": str(model),
        "data": dataset.source,
        "split": split,
        "n": len(kept),
        "counts": {c: sum(s.label == c for s in kept) for c in screener.classes},
        "positive_class": screener.positive_class,
        "preprocess": screener.preprocess,
        "lung_fields": {
            "method": "ccad.models.lungs: the packaged learned segmenter (U-Net, MobileNetV2 encoder)",
            "qc_flagged": int(sum(bool(f) for f in qc)),
            "images": len(qc),
        },
        "lung_test": _lung_test(scores, is_positive, groups, seed),
        "heatmap": _heatmap_mass(cams, lung_masks),
        "source_probe": _source_probe(dataset, kept, pooled, seed),
        "skipped_files": skipped,
    }
    result["verdict"] = _verdict(result)
    out = Path(out)
    figures = _figures(out / "figures", kept, variants, lung_masks, cams, scores, screener.positive_class, seed)
    write_json(out / "audit.json", result)
    _write_report(out / "report.html", result, figures)
    return result


def _audit_samples(dataset, split: str, max_images: int | None, seed: int):
    samples = dataset.samples if split == "all" else dataset.subset(split)
    if max_images and len(samples) > max_images:
        rng = np.random.default_rng(seed)
        samples = [samples[i] for i in sorted(rng.choice(len(samples), max_images, replace=False))]
    if not samples:
        raise DataError(f"{dataset.source}: no images in the {split} split")
    return samples


def _score_variants(screener: Screener, names: list[str], loaded: list[dict]):
    """Each variant scored as ``predict`` scores it: (positive-class score by variant, the pictures by variant,
    the original's class activation maps of the positive class, its pooled features)."""
    positive = screener.classes.index(screener.positive_class)
    scores, variants = {}, {}
    for name in VARIANTS:
        predictions = screener.score(
            names, [v[name] for v in loaded], with_heatmaps=name == "original", heatmap_class=screener.positive_class
        )
        scores[name] = np.array([p.raw_probabilities[positive] for p in predictions])
        variants[name] = np.stack([v[name].picture for v in loaded])
        if name == "original":
            cams = np.stack([p.pictures.heatmap for p in predictions])
            pooled = np.stack([p.pooled for p in predictions])
    return scores, variants, cams, pooled


VARIANTS = ("original", "no_lungs", "lungs_only")


def _lung_test(scores: dict[str, np.ndarray], is_positive: np.ndarray, groups, seed: int) -> dict[str, Any]:
    """AUC of the positive class's score for each variant, with grouped-bootstrap 95% intervals."""
    from sklearn.metrics import roc_auc_score

    def aucs(idx):
        truth = is_positive[idx]
        if truth.all() or not truth.any():
            return {k: None for k in scores}
        return {k: float(roc_auc_score(truth, v[idx])) for k, v in scores.items()}

    both_classes = is_positive.any() and not is_positive.all()
    point = aucs(np.arange(len(is_positive)))
    intervals = bootstrap_intervals(aucs, len(is_positive), groups, seed=seed) if both_classes else {}
    return {
        k: {"auc": point[k], "ci95": intervals.get(k), "mean_positive_probability": float(scores[k].mean())}
        for k in scores
    }


def _heatmap_mass(cams: np.ndarray, lung_masks: np.ndarray) -> dict[str, Any]:
    """The share of each map's mass inside the lung fields, against the share of the input they cover."""
    inside = (cams * lung_masks).sum(axis=(1, 2))
    total = cams.sum(axis=(1, 2))
    share = np.divide(inside, total, out=np.full_like(inside, np.nan), where=total > 0)
    area = lung_masks.mean(axis=(1, 2))
    return {
        "mass_in_lungs_mean": float(np.nanmean(share)),
        "lung_area_share_mean": float(area.mean()),
        "ratio_to_even_spread": float(np.nanmean(share) / area.mean()) if area.mean() > 0 else None,
        "images_with_empty_map": int(np.sum(total <= 0)),
    }


def _load_variants(samples, size: int, preprocess: str) -> list[dict[str, Any] | None]:
    """Per sample, the model's input as is, with the lung fields blanked and with everything else blanked
    (each a Prepared), and the lung mask on the input; None for an unreadable file."""

    def load(sample):
        try:
            gray = read_grayscale(sample.path)
        except ImageReadError:
            return None
        original = prepare_full(gray, size, preprocess, lung_fields=True)
        region = original.fields.at(*gray.shape)
        return {
            "original": original,
            "mask": original.to_input(region).astype(np.float32),
            "no_lungs": prepare_full(blank(gray, region), size, preprocess),
            "lungs_only": prepare_full(blank(gray, ~region), size, preprocess),
        }

    with ThreadPoolExecutor(min(8, (os.cpu_count() or 2) * 2)) as pool:
        return list(pool.map(load, samples))


def _source_probe(dataset, samples, features: np.ndarray, seed: int) -> dict[str, Any]:
    labels = [s.source or "unknown" for s in samples]
    table: dict[str, dict[str, int]] = {}
    for s, src in zip(samples, labels):
        table.setdefault(src, {}).setdefault(s.label, 0)
        table[src][s.label] += 1
    result: dict[str, Any] = {"available": True, "sources": table}
    if len(table) < 2:
        result["note"] = "one source only: nothing to probe"
        return result
    result["all_images"] = _probe(features, np.array(labels), [s.group for s in samples], seed)
    confounded = all(len(by_label) == 1 for by_label in table.values())
    result["confounded_with_label"] = confounded
    if confounded:
        result["note"] = (
            "every source holds one class only: source and label coincide, so this probe "
            "cannot tell them apart; mix sources within a class to separate them"
        )
    within = {}
    for label in sorted({s.label for s in samples}):
        idx = [i for i, s in enumerate(samples) if s.label == label]
        srcs = np.array([labels[i] for i in idx])
        if len(set(srcs)) > 1 and min(np.unique(srcs, return_counts=True)[1]) >= 10:
            within[label] = _probe(features[idx], srcs, [samples[i].group for i in idx], seed)
    result["within_class"] = within
    return result


def _probe(features: np.ndarray, target: np.ndarray, groups, seed: int) -> dict[str, Any]:
    """Grouped 5-fold logistic-regression probe of ``target``: balanced accuracy (chance = 1 / classes)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = min(5, min(np.unique(target, return_counts=True)[1]), len(set(groups)))
    if folds < 2:
        return {"balanced_accuracy": None, "note": "too few images per source to cross-validate"}
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    predicted = cross_val_predict(
        probe, features, target, groups=groups, cv=StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    )
    return {
        "balanced_accuracy": float(balanced_accuracy_score(target, predicted)),
        "chance": 1.0 / len(set(target)),
        "folds": int(folds),
        "n": int(len(target)),
    }


def _verdict(result: dict[str, Any]) -> list[str]:
    lines = []
    blanked = result["lung_test"]["no_lungs"]["auc"]
    original = result["lung_test"]["original"]["auc"]
    if blanked is None:
        lines.append("Lung test: needs images of both classes; the data has one (AUCs undefined).")
    elif blanked > LUNG_BLANKED_AUC_LIMIT:
        lines.append(
            f"FAIL lung test: with the lung fields blanked the model still separates the classes "
            f"(AUC {blanked:.2f}, vs {original:.2f} as is). It reads something outside the lungs "
            f"(borders, text, markers, exposure, the scanner): expect it to fail on other hospitals' images."
        )
    else:
        lines.append(
            f"PASS lung test: with the lung fields blanked the AUC falls to {blanked:.2f} "
            f"(from {original:.2f}; limit {LUNG_BLANKED_AUC_LIMIT}): the decision needs the lungs."
        )
    only = result["lung_test"]["lungs_only"]["auc"]
    if only is not None:
        lines.append(f"With only the lung fields visible the AUC is {only:.2f}.")
    h = result["heatmap"]
    lines.append(
        f"Heatmaps put {h['mass_in_lungs_mean']:.0%} of their mass in the lung fields, which cover "
        f"{h['lung_area_share_mean']:.0%} of the input ({h['ratio_to_even_spread']:.2f}x an even spread)."
    )
    probe = result["source_probe"]
    if probe.get("all_images"):
        acc = probe["all_images"]["balanced_accuracy"]
        lines.append(
            f"Source probe: the model's features tell the image source apart with balanced accuracy "
            f"{acc:.2f} (chance {probe['all_images']['chance']:.2f})."
            + (
                " Source and label coincide in this data, so this cannot separate the two."
                if probe.get("confounded_with_label")
                else ""
            )
        )
        for label, p in probe.get("within_class", {}).items():
            if p.get("balanced_accuracy") is not None:
                lines.append(
                    f"Within {label}, the source is predicted with balanced accuracy "
                    f"{p['balanced_accuracy']:.2f} (chance {p['chance']:.2f})."
                )
    else:
        lines.append(f"Source probe: {probe.get('note')}.")
    lines.append(
        "Lung fields come from ccad's learned segmenter (held-out Dice about 0.94; see the examples); "
        "these checks can flag a shortcut, they cannot prove there is none."
    )
    return lines


def _figures(folder: Path, samples, variants, masks, cams, scores, positive_class: str, seed: int) -> dict[str, Path]:
    plt = pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(len(samples), min(EXAMPLES, len(samples)), replace=False))
    fig, axes = plt.subplots(len(picked), 4, figsize=(10, 2.6 * len(picked)), squeeze=False)
    titles = ("lung fields (estimate)", "lungs blanked", "only lungs", "heatmap (positive class)")
    for row, i in zip(axes, picked):
        row[0].imshow(variants["original"][i], cmap="gray", vmin=0, vmax=1)
        row[0].contour(masks[i], [0.5], colors="red", linewidths=1)
        row[1].imshow(variants["no_lungs"][i], cmap="gray", vmin=0, vmax=1)
        row[2].imshow(variants["lungs_only"][i], cmap="gray", vmin=0, vmax=1)
        row[3].imshow(variants["original"][i], cmap="gray", vmin=0, vmax=1)
        row[3].imshow(cams[i], cmap="jet", alpha=0.4, vmin=0, vmax=1)
        row[3].contour(masks[i], [0.5], colors="white", linewidths=0.8)
        for ax, title, key in zip(row, titles, ("original", "no_lungs", "lungs_only", "original")):
            ax.set_title(f"{title}\n{samples[i].label}: p={scores[key][i]:.2f}", fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    paths = {"Examples: lung fields, blanked variants, heatmaps": save_figure(fig, folder / "examples.png", dpi=80)}

    fig, ax = plt.subplots(figsize=(5, 3.5))
    data = [scores[k] for k in ("original", "no_lungs", "lungs_only")]
    positive = np.array([s.label == positive_class for s in samples])
    for j, values in enumerate(data):
        ax.scatter(
            np.full(positive.sum(), j - 0.1) + rng.normal(0, 0.03, positive.sum()),
            values[positive],
            s=6,
            color="tab:red",
            label=positive_class if j == 0 else None,
        )
        ax.scatter(
            np.full((~positive).sum(), j + 0.1) + rng.normal(0, 0.03, (~positive).sum()),
            values[~positive],
            s=6,
            color="tab:blue",
            label="others" if j == 0 else None,
        )
    ax.set_xticks(range(3), ["as is", "lungs blanked", "only lungs"])
    ax.set_ylabel(f"p({positive_class})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths["Lung test: scores as is, lungs blanked, only lungs"] = save_figure(fig, folder / "lung_test.png", dpi=90)
    return paths


def _write_report(path: Path, result: dict[str, Any], figures: dict[str, Path]) -> None:
    def fmt(entry):
        return interval_cells({"value": entry["auc"], "ci95": entry["ci95"]})

    rows = "".join(
        f"<tr><td>{name}</td><td>{fmt(result['lung_test'][key])[0]}</td><td>{fmt(result['lung_test'][key])[1]}"
        f"</td><td>{result['lung_test'][key]['mean_positive_probability']:.3f}</td></tr>"
        for key, name in (
            ("original", "as is"),
            ("no_lungs", "lung fields blanked"),
            ("lungs_only", "everything but the lung fields blanked"),
        )
    )
    verdict = "".join(f"<li>{html.escape(line)}</li>" for line in result["verdict"])
    lf = result["lung_fields"]
    body = f"""<div class="verdict"><h2>Verdict</h2><ul>{verdict}</ul></div>
<h2>Data</h2>
<p>Model <code>{html.escape(result["model"])}</code> (input preprocessing: {html.escape(result["preprocess"])}) on
<code>{html.escape(result["data"])}</code>, split <strong>{html.escape(result["split"])}</strong>, n = {result["n"]}
({", ".join(f"{c}: {n}" for c, n in result["counts"].items())}).</p>
<h2>1. Lung test</h2>
<p>Blanked regions are set to the image's mean gray; the model's own preprocessing then runs as usual.
AUC of the positive class, 95% grouped-bootstrap intervals.</p>
<table><thead><tr><th>input</th><th>AUC</th><th>95% CI</th><th>mean p(positive)</th></tr></thead>
<tbody>{rows}</tbody></table>
<h2>2. Heatmap mass</h2>
<p>Mean share of the positive class's CAM inside the lung fields:
<strong>{result["heatmap"]["mass_in_lungs_mean"]:.3f}</strong>;
the lung fields cover {result["heatmap"]["lung_area_share_mean"]:.3f} of the input on average.</p>
<h2>3. Source probe</h2>
<pre>{html.escape(json.dumps(result["source_probe"], indent=2))}</pre>
<h2>Lung fields</h2>
<p>{html.escape(lf["method"])}; {lf["qc_flagged"]} of {lf["images"]} images had a lung-QC flag.
See <code>ccad.models.lungs</code> for the method; judge it on the examples.</p>
{figures_html(figures)}"""
    write_text(path, html_page("ccad shortcut audit", body))
