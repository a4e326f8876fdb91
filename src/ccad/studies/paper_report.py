"""The report of ``ccad reproduce-paper``: the paper's numbers beside ours, and what one batch of 32 can show.

:func:`batches_of_32` takes a case's test predictions: the first batch of 32 (the paper scored one) and the
range (2.5th-97.5th percentile) each metric takes over 2,000 random batches of 32. :func:`reproduction_markdown`
writes ``paper-reproduction.md`` from the summary :func:`ccad.studies.paper.reproduce_paper` makes: the cases,
Tables 5-9 with the paper's number, ours with its 95% interval and the batches' range side by side, which of the
paper's numbers a batch of 32 could have shown, and the figures.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from ccad.evaluation.metrics import binary_metrics, format_interval

#: (row label, our metric key, where the paper's value is) for the per-metric tables.
METRIC_ROWS = {
    "Table 6: precision, recall and F1": (
        ("precision", "precision", "precision"),
        ("recall", "sensitivity", "recall"),
        ("F1", "f1", "f1"),
    ),
    "Table 8: ROC area": (("AUC", "auc", "auc"),),
    "Table 9: the proposed network's row": (
        ("accuracy", "accuracy", "table9.accuracy"),
        ("sensitivity", "sensitivity", "table9.sensitivity"),
        ("specificity", "specificity", "table9.specificity"),
        ("F1", "f1", "table9.f1"),
    ),
}
METRICS = ("accuracy", "sensitivity", "specificity", "precision", "f1", "auc")
FIGURES = (
    ("training curves", "training_curves.png"),
    ("confusion matrix", "confusion_matrix.png"),
    ("ROC", "roc_curve.png"),
    ("predictions", "predictions.png"),
)
BATCH = 32
DRAWS = 2000


def batches_of_32(predictions_csv: Path, seed: int, positive: str = "covid") -> dict[str, Any]:
    """What one test batch of 32 shows: the first batch's metrics and confusion matrix, and each metric's
    2.5th-97.5th percentile over random batches of 32 (drawn without replacement; a batch where a metric
    is undefined, e.g. recall with no COVID image, is left out of that metric's range)."""
    with open(predictions_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    truth = np.array([r["label"] == positive for r in rows])
    predicted = np.array([r["predicted_class"] == positive for r in rows])
    score = np.array([float(r[f"p_{positive}"]) for r in rows])
    size = min(BATCH, len(rows))
    rng = np.random.default_rng(seed)
    draws = [
        binary_metrics(truth[i], predicted[i], score[i])
        for i in (rng.choice(len(rows), size, replace=False) for _ in range(DRAWS))
    ]
    ranges = {}
    for metric in METRICS:
        values = [d[metric] for d in draws if d[metric] is not None]
        ranges[metric] = [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))] if values else None
    first = slice(0, size)
    t, p = truth[first], predicted[first]
    return {
        "first": binary_metrics(t, p, score[first]),
        "first_confusion_matrix": [
            [int(np.sum(t & p)), int(np.sum(t & ~p))],
            [int(np.sum(~t & p)), int(np.sum(~t & ~p))],
        ],
        "range95": ranges,
    }


def _paper_value(paper: dict[str, Any], where: str) -> float | None:
    value: Any = paper
    for key in where.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _inside(value: float | None, bounds: list[float] | None) -> str:
    if value is None or bounds is None:
        return "n/a"
    return "yes" if bounds[0] - 1e-9 <= value <= bounds[1] + 1e-9 else "**no**"


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def reproduction_markdown(summary: dict[str, Any], figure_path=None, skip_figures: tuple[str, ...] = ()) -> str:
    """The report; ``figure_path(case, file name)`` says where each figure is (default: the case's run folder,
    as ``reproduce-paper`` writes it), and figures named in ``skip_figures`` are left out (docs/ leaves out
    the prediction grids, which show the data's images)."""
    figure_path = figure_path or (lambda case, name: f"{case}/figures/{name}")
    cases = summary["cases"]
    lines = _intro_and_cases(summary) + _table5(cases)
    tables, verdicts = _metric_tables(cases)
    lines += tables + _confusion_tables(cases) + _verdicts(verdicts) + _figures(cases, figure_path, skip_figures)
    return "\n".join(lines)


def _intro_and_cases(summary: dict[str, Any]) -> list[str]:
    cases = summary["cases"]
    override = ""
    if summary.get("epochs_override") or summary.get("fine_tune_epochs_override") is not None:
        override = (
            f" **Epochs overridden for a quick look** (frozen {summary.get('epochs_override')}, fine-tuning "
            f"{summary.get('fine_tune_epochs_override')}): not the paper's settings."
        )
    lines = [
        "# The paper's cases as the paper ran them, its tables beside ours",
        "",
        f"Generated by `ccad reproduce-paper --data {summary['data']}` (seed {summary['seed']}).{override} "
        "**The paper's numbers** come from one batch of 32 test images (its Tables 5-9, transcribed in "
        "`ccad.studies.paper.PAPER`). **Ours** come from the whole patient-grouped test split of the same "
        "subset of `covid-cxr`, with 95% grouped-bootstrap intervals, and, to show what one batch can say, "
        "from the 2.5th-97.5th percentile of the same metric over "
        f"{DRAWS:,} random batches of {BATCH} of our test predictions. COVID-19 is the positive class. "
        "These are internal scores on sources where label and hospital coincide: they overstate what any "
        "of these models does on another hospital's X-rays (docs/generalization.md). Not a diagnosis.",
        "",
        '"First batch of 32" is the first 32 rows of the case\'s test predictions, which are in the '
        "split's order (COVID first): like the paper's, one batch, not a random one.",
        "",
        "## The cases",
        "",
        "| case | the paper's name | data | dropout | optimizer, lr, batch, input | epochs run (frozen + "
        "fine-tuning at lr) | best validation epoch (phase) | training time (images/s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in cases:
        s, run = r["settings"], r["epochs_run"]
        tuning = (
            f" + {run['fine-tune']} (lr {s['fine_tune_lr']:g}, from {s['fine_tune_from']})" if run["fine-tune"] else ""
        )
        lines.append(
            f"| {r['case']} | {r['paper_name']} | {r['dataset']} | {s['dropout']} | {s['optimizer']}, "
            f"{s['lr']:g}, {s['batch_size']}, {s['input_size']} px | {run['frozen']}{tuning} | "
            f"{r['best_epoch']} ({r['best_phase']}) | {r['train_s']:.0f} s ({r['train_images_per_s']}) |"
        )
    return lines


def _table5(cases) -> list[str]:
    lines: list[str] = []
    lines += [
        "",
        "The model kept is the one of the epoch with the lowest validation loss, across both phases.",
        "",
        "## Table 5: final loss and final accuracy",
        "",
        "The paper's \"final\" values are its training log's last epoch. Ours: the last epoch's training and "
        "validation values, and the kept model's test accuracy.",
        "",
        "| case | paper: final loss | paper: final accuracy | ours: last epoch loss (train / val) | "
        "ours: last epoch accuracy (train / val) | ours: test accuracy (95% CI) | ours: accuracy over "
        "batches of 32 | paper inside? |",
        "| --- " * 8 + "|",
    ]
    for r in cases:
        f, p = r["final_epoch"], r["paper"]
        bounds = r["batches_of_32"]["range95"]["accuracy"]
        lines.append(
            f"| {r['case']} | {_num(p.get('final_loss'), 2)} | {_num(p.get('final_accuracy'), 4)} | "
            f"{_num(f['loss'])} / {_num(f['val_loss'])} | {_num(f['accuracy'])} / {_num(f['val_accuracy'])}"
            f" | {format_interval(r['metrics']['accuracy'], undefined='n/a')} | {_range(bounds)} | "
            f"{_inside(p.get('final_accuracy'), bounds)} |"
        )
    return lines


def _metric_tables(cases) -> tuple[list[str], list[tuple[str, str, str]]]:
    """Tables 6, 8 and 9: each metric, the paper's number beside ours; and whether each of the paper's numbers
    lies inside the range our batches of 32 span."""
    lines: list[str] = []
    verdicts: list[tuple[str, str, str]] = []
    for table, metric_rows in METRIC_ROWS.items():
        lines += [
            "",
            f"## {table}",
            "",
            "| case | metric | paper (one batch of 32) | ours: whole test split (95% CI) | ours: first batch "
            "of 32 | ours: random batches of 32 (95% range) | paper inside that range? |",
            "| --- " * 7 + "|",
        ]
        for r in cases:
            for label, key, where in metric_rows:
                paper = _paper_value(r["paper"], where)
                bounds = r["batches_of_32"]["range95"][key]
                inside = _inside(paper, bounds)
                if paper is not None:
                    verdicts.append((r["case"], f"{table} {label}", inside))
                lines.append(
                    f"| {r['case']} | {label} | {_num(paper)} | "
                    f"{format_interval(r['metrics'][key], undefined='n/a')} | "
                    f"{_num(r['batches_of_32']['first'][key])} | {_range(bounds)} | {inside} |"
                )
    return lines, verdicts


def _confusion_tables(cases) -> list[str]:
    lines: list[str] = []
    lines += [
        "",
        "## Table 7: confusion matrices",
        "",
        "Ours: rows true (covid, normal), columns predicted (covid, normal).",
        "",
        "| case | paper (one batch, as printed) | ours: whole test split | ours: first batch of 32 |",
        "| --- | --- | --- | --- |",
    ]
    for r in cases:
        lines.append(
            f"| {r['case']} | {r['paper'].get('confusion_matrix', 'n/a')} | {r['confusion_matrix']} | "
            f"{r['batches_of_32']['first_confusion_matrix']} |"
        )
    return lines


def _verdicts(verdicts) -> list[str]:
    lines: list[str] = []
    outside = [f"{case} {what}" for case, what, inside in verdicts if inside != "yes"]
    lines += [
        "",
        "## Which of the paper's numbers one batch of 32 could have shown",
        "",
        f"Of the paper's {len(verdicts)} per-metric numbers above, {len(verdicts) - len(outside)} fall inside "
        "the range our models' batches of 32 span"
        + (f"; outside it: {', '.join(outside)}." if outside else ".")
        + " A number inside the range is one a batch of 32 of our test images could have given; it is not "
        "evidence that the model is that good: the whole-split interval is the estimate.",
        "",
        "## Figures",
        "",
        "Per case, in its run folder: training and validation accuracy and loss over both phases with "
        "the start of fine-tuning marked (the paper's Figures 4, 8, 13), the confusion matrix (5, 9, 14), "
        "the ROC curve (6, 10, 15), and test images titled green when right and red when wrong "
        "(7, 11, 16).",
        "",
    ]
    return lines


def _figures(cases, figure_path, skip_figures) -> list[str]:
    lines: list[str] = []
    for r in cases:
        lines.append(
            f"**{r['case']}**: "
            + " ".join(
                f"![{title}]({figure_path(r['run'], name)})" for title, name in FIGURES if name not in skip_figures
            )
        )
        lines.append("")
    return lines


def _range(bounds: list[float] | None) -> str:
    return "n/a" if bounds is None else f"{bounds[0]:.3f}-{bounds[1]:.3f}"
