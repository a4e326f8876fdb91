"""Figures (matplotlib, Agg) and the self-contained HTML report."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ccad.data.datasets import Sample
from ccad.errors import ImageReadError
from ccad.evaluation.metrics import BINARY_METRICS, CALIBRATION_METRICS, CAVEAT, interval_cells
from ccad.io.files import write_text
from ccad.io.images import read_grayscale
from ccad.io.pictures import pyplot as _pyplot
from ccad.io.pictures import save_figure as _save
from ccad.preprocessing.pipeline import Prepared, prepare_full

GRID_IMAGES = 16
#: The style every ccad HTML page shares.
PAGE_CSS = """body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 1rem auto; padding: 0 1rem;
color: #222; }
table { border-collapse: collapse; margin: .5rem 0; } td, th { border: 1px solid #ccc; padding: .25rem .6rem; }
.caveat { background: #fff4d6; border-left: 4px solid #e0a800; padding: .6rem 1rem; }
.verdict { background: #eef4ff; border-left: 4px solid #3568d4; padding: .6rem 1rem; }
figure { display: inline-block; margin: .5rem; } img { max-width: 100%; }
pre { background: #f6f6f6; padding: .5rem; overflow: auto; }"""


def html_page(title: str, body: str, caveat: str = CAVEAT) -> str:
    """A self-contained HTML page: ``title``, the not-a-diagnosis caveat, then ``body`` (already HTML)."""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>
{PAGE_CSS}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="caveat"><strong>Not a diagnosis.</strong> {html.escape(caveat)}</p>
{body}
</body></html>
"""


def figures_html(figures: dict[str, Path]) -> str:
    """The figures embedded as base64 PNGs with their captions."""
    return "".join(
        f"<figure><img alt='{html.escape(title)}' src='data:image/png;base64,"
        f"{base64.b64encode(Path(p).read_bytes()).decode()}'><figcaption>{html.escape(title)}</figcaption></figure>"
        for title, p in figures.items()
    )


def plot_training_curves(history: Sequence[dict[str, float]], path: Path) -> Path:
    plt = _pyplot()
    epochs = np.arange(1, len(history) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric in zip(axes, ("accuracy", "loss")):
        for key, label in ((metric, "train"), (f"val_{metric}", "validation")):
            ax.plot(epochs, [row.get(key, np.nan) for row in history], marker="o", ms=3, label=label)
        phases = [row.get("phase") for row in history]
        if "fine-tune" in phases:
            ax.axvline(phases.index("fine-tune") + 0.5, color="grey", ls="--", lw=1, label="fine-tuning starts")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    return _save(fig, path)


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], classes: Sequence[str], path: Path) -> Path:
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ConfusionMatrixDisplay(np.asarray(matrix), display_labels=list(classes)).plot(ax=ax, cmap="Blues", colorbar=False)
    ax.set_title("Confusion matrix (rows: true)")
    return _save(fig, path)


def plot_roc(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    classes: Sequence[str],
    positive_class: str,
    auc: dict[str, Any],
    path: Path,
) -> Path | None:
    from sklearn.metrics import roc_curve

    pos = list(classes).index(positive_class)
    truth = y_true == pos
    if truth.all() or not truth.any():
        return None
    plt = _pyplot()
    fpr, tpr, _ = roc_curve(truth, probabilities[:, pos])
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ci = auc.get("ci95")
    label = f"AUC = {auc['value']:.3f}" + (f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else "")
    ax.plot(fpr, tpr, lw=2, label=label)
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"ROC: {positive_class} vs rest")
    ax.legend(loc="lower right")
    return _save(fig, path)


def plot_reliability(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    classes: Sequence[str],
    positive_class: str,
    ece: dict[str, Any],
    path: Path,
) -> Path:
    """Reliability diagram of the positive-class probability (scikit-learn's CalibrationDisplay)."""
    from sklearn.calibration import CalibrationDisplay

    plt = _pyplot()
    pos = list(classes).index(positive_class)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    CalibrationDisplay.from_predictions(
        y_true == pos, probabilities[:, pos], n_bins=10, ax=ax, name=f"ECE = {ece['value']:.3f}"
    )
    ax.set(
        title=f"Reliability: P({positive_class})",
        xlabel="mean predicted probability",
        ylabel="observed fraction positive",
    )
    return _save(fig, path)


def plot_prediction_grid(
    images: np.ndarray,
    y_true: np.ndarray,
    probabilities: np.ndarray,
    classes: Sequence[str],
    path: Path,
    n: int = GRID_IMAGES,
    seed: int = 0,
    predicted: np.ndarray | None = None,
    originals=None,
) -> Path:
    """A grid of images titled true/predicted, green when right, red when wrong (the paper's figure).

    With ``originals`` (each image's :class:`ccad.preprocessing.pipeline.Prepared`, or its file), each image
    is the X-ray as stored, with the lung outline of the shipped segmenter in cyan, rather than the model's
    input."""
    plt = _pyplot()
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(len(images), size=min(n, len(images)), replace=False))
    cols = 4
    rows = int(np.ceil(len(picked) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.4, rows * 2.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), picked):
        label = int(probabilities[i].argmax()) if predicted is None else int(predicted[i])
        original = _original_with_outline(originals[i]) if originals is not None else None
        if original is None:
            ax.imshow(images[i], cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(original[0], cmap="gray", vmin=0, vmax=1)
            ax.contour(original[1], levels=[0.5], colors="cyan", linewidths=0.8)
        ok = label == y_true[i]
        ax.set_title(
            f"true: {classes[y_true[i]]}\npred: {classes[label]} ({probabilities[i, label]:.2f})",
            color="green" if ok else "red",
            fontsize=8,
        )
    return _save(fig, path)


def _original_with_outline(source) -> tuple[np.ndarray, np.ndarray] | None:
    """(the image at up to 512 px, its lung mask) from a Prepared input, a sample or a file (None when the
    file cannot be read again)."""
    if isinstance(source, Prepared):
        prepared = source if source.fields is not None else prepare_full(source.gray, 64, "none", lung_fields=True)
    else:
        try:
            path = source.path if isinstance(source, Sample) else source
            prepared = prepare_full(read_grayscale(path), 64, "none", lung_fields=True)
        except (ImageReadError, OSError):
            return None
    return prepared.gray, prepared.fields.at(*prepared.gray.shape).astype(np.float32)


def write_figures(
    folder: Path,
    metrics: dict[str, Any],
    y_true: np.ndarray,
    probabilities: np.ndarray,
    images: np.ndarray | None,
    classes: Sequence[str],
    history=None,
    predicted: np.ndarray | None = None,
    originals=None,
) -> dict[str, Path]:
    """The evaluation figures; ``originals`` (Prepared inputs or samples) let the prediction grid show the
    X-rays as stored. Without ``images`` the grid is drawn from ``originals`` alone."""
    figures = {}
    if history:
        figures["Training curves"] = plot_training_curves(history, folder / "training_curves.png")
    figures["Confusion matrix"] = plot_confusion_matrix(
        metrics["confusion_matrix"], classes, folder / "confusion_matrix.png"
    )
    roc = plot_roc(y_true, probabilities, classes, metrics["positive_class"], metrics["auc"], folder / "roc_curve.png")
    if roc:
        figures["ROC curve"] = roc
    figures["Reliability diagram"] = plot_reliability(
        y_true, probabilities, classes, metrics["positive_class"], metrics["ece"], folder / "reliability.png"
    )
    if images is None and originals is not None:
        images = np.zeros((len(originals), 8, 8), np.float32)  # placeholders: the grid draws the originals
    if images is not None:
        figures["Predictions (as stored, lung outline in cyan)"] = plot_prediction_grid(
            images,
            y_true,
            probabilities,
            classes,
            folder / "predictions.png",
            predicted=predicted,
            originals=originals if originals is not None and len(originals) == len(images) else None,
        )
    return figures


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _ood_html(ood: dict[str, Any] | None) -> str:
    if not ood:
        return ""
    low, high = ood["ci95"]
    return (
        f"<p><strong>Not a frontal chest X-ray:</strong> the model's guard flags {ood['flagged']} of {ood['n']} images "
        f"({ood['rate']:.1%}, 95% CI {low:.1%}-{high:.1%}; {html.escape(ood['rule'])}). A flagged image is "
        "not a frontal chest X-ray like those the model was built for: do not rely on its result.</p>"
    )


def write_report(
    path: Path,
    metrics: dict[str, Any],
    figures: dict[str, Path],
    dataset,
    meta: dict[str, Any],
    split: str,
    title: str = "ccad evaluation report",
    extra_html: str = "",
) -> Path:
    """A single HTML file with the data, configuration, metrics (95% CIs), figures and caveat."""
    counts = dataset.counts()
    data_rows = [
        [s] + [counts[s].get(c, 0) for c in dataset.classes] for s in ("train", "val", "test", "all") if s in counts
    ]
    metric_rows = [
        [name.replace("_", " "), *interval_cells(metrics[name])]
        for name in BINARY_METRICS + CALIBRATION_METRICS
        if name in metrics
    ]
    if "macro_f1" in metrics:
        metric_rows.append(["macro F1", f"{metrics['macro_f1']:.3f}", ""])
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in metrics.get("notes", []))
    config = json.dumps({k: v for k, v in meta.items() if k not in ("data",)}, indent=2, default=str)
    body = f"""<h2>Data</h2>
<p>Scored on: <code>{html.escape(str(metrics.get("data", dataset.source)))}</code>,
split <strong>{html.escape(split)}</strong>,
n = {metrics["n"]} images ({", ".join(f"{c}: {n}" for c, n in metrics["counts"].items())}).
Positive class: <strong>{html.escape(metrics["positive_class"])}</strong>.
Backbone weights: <strong>{html.escape(str(meta.get("weights", "unknown")))}</strong>.</p>
{_table(["split"] + list(dataset.classes), data_rows)}
<h2>Metrics</h2>
<p>95% confidence intervals: percentile bootstrap, {metrics["bootstrap"]["resamples"]} resamples by
{html.escape(metrics["bootstrap"]["unit"])}.</p>
{_table(["metric", "value", "95% CI"], metric_rows)}
<p>Confusion matrix (rows true, columns predicted; order {html.escape(", ".join(dataset.classes))}):
{html.escape(str(metrics["confusion_matrix"]))}</p>
<p>Decision rule: {html.escape(metrics.get("decision", {}).get("text", "argmax"))}.</p>
{_ood_html(metrics.get("out_of_distribution"))}
<ul>{notes}</ul>
{extra_html}
<h2>Figures</h2>
{figures_html(figures)}
<h2>Configuration</h2>
<pre>{html.escape(config)}</pre>"""
    write_text(path, html_page(title, body))
    return path
