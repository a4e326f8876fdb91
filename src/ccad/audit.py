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

The lung fields are the estimate of :mod:`ccad.lungs` (intensity inside an
anatomical prior, not a trained segmentation model); the report draws it on
examples. Writes ``DIR/audit.json``, ``DIR/report.html`` and ``DIR/figures/``.
"""

from __future__ import annotations

import base64
import html
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._files import write_json, write_text
from .errors import DataError, ImageReadError

#: Verdict thresholds (the issue's aim for a lung-reading model: lung-blanked AUC <= 0.65).
LUNG_BLANKED_AUC_LIMIT = 0.65
EXAMPLES = 8


def audit(
    model: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    split: str | None = None,
    classes: Sequence[str] | None = None,
    where: Sequence[str] = (),
    positive_class: str | None = "covid",
    max_images: int | None = None,
    seed: int = 0,
    relabel: Sequence[str] = (),
) -> dict[str, Any]:
    """Run the three checks for ``model`` (bundle, run folder or model file) on ``data``; return the results."""
    from .evaluation import bootstrap_intervals, scoring_set
    from .inference import load_classifier

    classifier = load_classifier(model)
    dataset, split = scoring_set(classifier, model, data, split, classes, where, positive_class, seed, relabel)
    samples = dataset.samples if split == "all" else dataset.subset(split)
    if max_images and len(samples) > max_images:
        rng = np.random.default_rng(seed)
        samples = [samples[i] for i in sorted(rng.choice(len(samples), max_images, replace=False))]
    if not samples:
        raise DataError(f"{dataset.source}: no images in the {split} split")
    scorer = _CamScorer(classifier)
    loaded = _load_variants(samples, scorer.input_size, scorer.preprocess)
    kept = [s for s, v in zip(samples, loaded) if v is not None]
    skipped = [{"path": str(s.path), "error": "unreadable"} for s, v in zip(samples, loaded) if v is None]
    if not kept:
        raise DataError(f"{dataset.source}: none of the {split} images could be read")
    variants = {name: np.stack([v[name] for v in loaded if v is not None]) for name in ("original", "no_lungs", "lungs_only")}
    lung_masks = np.stack([v["mask"] for v in loaded if v is not None])
    qc = [v["qc"] for v in loaded if v is not None]

    positive = classifier.classes.index(classifier.positive_class)
    is_positive = np.array([s.label == classifier.positive_class for s in kept])
    groups = [s.group for s in kept] if dataset.layout in ("manifest", "pooled") else None
    scores, cams, pooled = {}, None, None
    for name, images in variants.items():
        probabilities, maps, features = scorer(images, positive)
        scores[name] = probabilities[:, positive]
        if name == "original":
            cams, pooled = maps, features

    def aucs(idx):
        from sklearn.metrics import roc_auc_score

        truth = is_positive[idx]
        if truth.all() or not truth.any():
            return {k: None for k in scores}
        return {k: float(roc_auc_score(truth, v[idx])) for k, v in scores.items()}

    both_classes = is_positive.any() and not is_positive.all()
    point = aucs(np.arange(len(kept)))
    intervals = bootstrap_intervals(aucs, len(kept), groups, seed=seed) if both_classes else {}
    lung_test = {k: {"auc": point[k], "ci95": intervals.get(k), "mean_positive_probability": float(scores[k].mean())}
                 for k in scores}

    inside = (cams * lung_masks).sum(axis=(1, 2))
    total = cams.sum(axis=(1, 2))
    share = np.divide(inside, total, out=np.full_like(inside, np.nan), where=total > 0)
    area = lung_masks.mean(axis=(1, 2))
    heatmap = {"mass_in_lungs_mean": float(np.nanmean(share)), "lung_area_share_mean": float(area.mean()),
               "ratio_to_even_spread": float(np.nanmean(share) / area.mean()) if area.mean() > 0 else None,
               "images_with_empty_map": int(np.sum(total <= 0))}

    probe = _source_probe(dataset, kept, pooled, seed)
    result = {
        "model": str(model), "data": dataset.source, "split": split, "n": len(kept),
        "counts": {c: sum(s.label == c for s in kept) for c in classifier.classes},
        "positive_class": classifier.positive_class, "preprocess": scorer.preprocess,
        "lung_fields": {"method": "ccad.lungs: the packaged learned segmenter (U-Net, MobileNetV2 encoder)",
                        "qc_flagged": int(sum(bool(f) for f in qc)), "images": len(qc)},
        "lung_test": lung_test, "heatmap": heatmap, "source_probe": probe,
        "skipped_files": skipped,
    }
    result["verdict"] = _verdict(result)
    out = Path(out)
    figures = _figures(out / "figures", kept, variants, lung_masks, cams, scores, classifier, seed)
    write_json(out / "audit.json", result)
    _write_report(out / "report.html", result, figures)
    return result


class _CamScorer:
    """Probabilities, positive-class CAMs at input size, and pooled features, for a bundle or a Keras model."""

    def __init__(self, classifier):
        self.classifier = classifier
        self.input_size = int(classifier.input_size)
        self.preprocess = getattr(classifier, "preprocess", "none")
        if hasattr(classifier, "run"):  # ONNX bundle: outputs probabilities and the last feature map
            self._run, self.cam_weights = classifier.run, classifier.cam_weights
        else:
            from .export import export_model_of
            from .model import CLASSIFIER_LAYER

            dual = export_model_of(classifier.model)
            self._run = lambda batch: dual.predict(batch, verbose=0)
            self.cam_weights = np.asarray(classifier.model.get_layer(CLASSIFIER_LAYER).get_weights()[0])

    def __call__(self, images: np.ndarray, positive: int, batch: int = 16):
        from .images import to_model_input
        from .predictor import upsample_map

        probabilities, maps, features = [], [], []
        for i in range(0, len(images), batch):
            p, fmap = self._run(to_model_input(images[i:i + batch]).astype(np.float32))
            probabilities.append(np.asarray(p))
            fmap = np.asarray(fmap)
            features.append(fmap.mean(axis=(1, 2)))
            for f in fmap:
                cam = np.maximum(f @ self.cam_weights[:, positive], 0.0)
                maps.append(upsample_map(cam, self.input_size) if cam.max() > 0 else np.zeros((self.input_size,) * 2))
        return np.concatenate(probabilities), np.stack(maps), np.concatenate(features)


def _load_variants(samples, size: int, preprocess: str) -> list[dict[str, Any] | None]:
    from .images import prepare_with_region, read_grayscale
    from .lungs import blank, estimate_lung_fields

    def load(sample):
        try:
            gray = read_grayscale(sample.path)
        except ImageReadError:
            return None
        fields = estimate_lung_fields(gray)
        region = fields.at(*gray.shape)
        original, mask = prepare_with_region(gray, size, preprocess, region)
        return {"original": original, "mask": mask.astype(np.float32), "qc": fields.qc_flags,
                "no_lungs": prepare_with_region(blank(gray, region), size, preprocess)[0],
                "lungs_only": prepare_with_region(blank(gray, ~region), size, preprocess)[0]}

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
        result["note"] = ("every source holds one class only: source and label coincide, so this probe "
                          "cannot tell them apart; mix sources within a class to separate them")
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
    predicted = cross_val_predict(probe, features, target, groups=groups,
                                  cv=StratifiedGroupKFold(folds, shuffle=True, random_state=seed))
    return {"balanced_accuracy": float(balanced_accuracy_score(target, predicted)),
            "chance": 1.0 / len(set(target)), "folds": int(folds), "n": int(len(target))}


def _verdict(result: dict[str, Any]) -> list[str]:
    lines = []
    blanked = result["lung_test"]["no_lungs"]["auc"]
    original = result["lung_test"]["original"]["auc"]
    if blanked is None:
        lines.append("Lung test: needs images of both classes; the data has one (AUCs undefined).")
    elif blanked > LUNG_BLANKED_AUC_LIMIT:
        lines.append(f"FAIL lung test: with the lung fields blanked the model still separates the classes "
                     f"(AUC {blanked:.2f}, vs {original:.2f} as is). It reads something outside the lungs "
                     f"(borders, text, markers, exposure, the scanner): expect it to fail on other hospitals' images.")
    else:
        lines.append(f"PASS lung test: with the lung fields blanked the AUC falls to {blanked:.2f} "
                     f"(from {original:.2f}; limit {LUNG_BLANKED_AUC_LIMIT}): the decision needs the lungs.")
    only = result["lung_test"]["lungs_only"]["auc"]
    if only is not None:
        lines.append(f"With only the lung fields visible the AUC is {only:.2f}.")
    h = result["heatmap"]
    lines.append(f"Heatmaps put {h['mass_in_lungs_mean']:.0%} of their mass in the lung fields, which cover "
                 f"{h['lung_area_share_mean']:.0%} of the input ({h['ratio_to_even_spread']:.2f}x an even spread).")
    probe = result["source_probe"]
    if probe.get("all_images"):
        acc = probe["all_images"]["balanced_accuracy"]
        lines.append(f"Source probe: the model's features tell the image source apart with balanced accuracy "
                     f"{acc:.2f} (chance {probe['all_images']['chance']:.2f})."
                     + (" Source and label coincide in this data, so this cannot separate the two."
                        if probe.get("confounded_with_label") else ""))
        for label, p in probe.get("within_class", {}).items():
            if p.get("balanced_accuracy") is not None:
                lines.append(f"Within {label}, the source is predicted with balanced accuracy "
                             f"{p['balanced_accuracy']:.2f} (chance {p['chance']:.2f}).")
    else:
        lines.append(f"Source probe: {probe.get('note')}.")
    lines.append("Lung fields come from ccad's learned segmenter (held-out Dice about 0.94; see the examples); "
                 "these checks can flag a shortcut, they cannot prove there is none.")
    return lines


def _figures(folder: Path, samples, variants, masks, cams, scores, classifier, seed: int) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ._files import atomic_path

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
    paths = {}
    with atomic_path(folder / "examples.png") as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    paths["Examples: lung fields, blanked variants, heatmaps"] = folder / "examples.png"

    fig, ax = plt.subplots(figsize=(5, 3.5))
    data = [scores[k] for k in ("original", "no_lungs", "lungs_only")]
    positive = np.array([s.label == classifier.positive_class for s in samples])
    for j, values in enumerate(data):
        ax.scatter(np.full(positive.sum(), j - 0.1) + rng.normal(0, 0.03, positive.sum()), values[positive], s=6,
                   color="tab:red", label=classifier.positive_class if j == 0 else None)
        ax.scatter(np.full((~positive).sum(), j + 0.1) + rng.normal(0, 0.03, (~positive).sum()), values[~positive],
                   s=6, color="tab:blue", label="others" if j == 0 else None)
    ax.set_xticks(range(3), ["as is", "lungs blanked", "only lungs"])
    ax.set_ylabel(f"p({classifier.positive_class})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(folder / "lung_test.png") as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    paths["Lung test: scores as is, lungs blanked, only lungs"] = folder / "lung_test.png"
    return paths


def _write_report(path: Path, result: dict[str, Any], figures: dict[str, Path]) -> None:
    from .evaluation import CAVEAT

    def fmt(entry):
        if entry["auc"] is None:
            return "undefined", "n/a"
        ci = entry["ci95"]
        return f"{entry['auc']:.3f}", f"{ci[0]:.3f} - {ci[1]:.3f}" if ci else "n/a"

    rows = "".join(f"<tr><td>{name}</td><td>{fmt(result['lung_test'][key])[0]}</td><td>{fmt(result['lung_test'][key])[1]}"
                   f"</td><td>{result['lung_test'][key]['mean_positive_probability']:.3f}</td></tr>"
                   for key, name in (("original", "as is"), ("no_lungs", "lung fields blanked"),
                                     ("lungs_only", "everything but the lung fields blanked")))
    verdict = "".join(f"<li>{html.escape(line)}</li>" for line in result["verdict"])
    images = "".join(f"<figure><img alt='{html.escape(t)}' src='data:image/png;base64,"
                     f"{base64.b64encode(Path(p).read_bytes()).decode()}'><figcaption>{html.escape(t)}</figcaption></figure>"
                     for t, p in figures.items())
    lf = result["lung_fields"]
    text = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>ccad shortcut audit</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 60rem; margin: 1rem auto; padding: 0 1rem; color: #222; }}
table {{ border-collapse: collapse; margin: .5rem 0; }} td, th {{ border: 1px solid #ccc; padding: .25rem .6rem; }}
.caveat {{ background: #fff4d6; border-left: 4px solid #e0a800; padding: .6rem 1rem; }}
.verdict {{ background: #eef4ff; border-left: 4px solid #3568d4; padding: .6rem 1rem; }}
figure {{ display: inline-block; margin: .5rem; }} img {{ max-width: 100%; }} pre {{ background: #f6f6f6; padding: .5rem; overflow: auto; }}
</style></head><body>
<h1>ccad shortcut audit</h1>
<p class="caveat"><strong>Not a diagnosis.</strong> {html.escape(CAVEAT)}</p>
<div class="verdict"><h2>Verdict</h2><ul>{verdict}</ul></div>
<h2>Data</h2>
<p>Model <code>{html.escape(result['model'])}</code> (input preprocessing: {html.escape(result['preprocess'])}) on
<code>{html.escape(result['data'])}</code>, split <strong>{html.escape(result['split'])}</strong>, n = {result['n']}
({', '.join(f'{c}: {n}' for c, n in result['counts'].items())}).</p>
<h2>1. Lung test</h2>
<p>Blanked regions are set to the image's mean gray; the model's own preprocessing then runs as usual.
AUC of the positive class, 95% grouped-bootstrap intervals.</p>
<table><thead><tr><th>input</th><th>AUC</th><th>95% CI</th><th>mean p(positive)</th></tr></thead><tbody>{rows}</tbody></table>
<h2>2. Heatmap mass</h2>
<p>Mean share of the positive class's CAM inside the lung fields: <strong>{result['heatmap']['mass_in_lungs_mean']:.3f}</strong>;
the lung fields cover {result['heatmap']['lung_area_share_mean']:.3f} of the input on average.</p>
<h2>3. Source probe</h2>
<pre>{html.escape(__import__('json').dumps(result['source_probe'], indent=2))}</pre>
<h2>Lung fields</h2>
<p>{html.escape(lf['method'])}; {lf['qc_flagged']} of {lf['images']} images had a lung-QC flag.
See <code>ccad.lungs</code> for the method; judge it on the examples.</p>
{images}
</body></html>
"""
    write_text(path, text)
