"""Radiographic severity of COVID-19 cases: a regression head on the classifier's own backbone features.

Targets (Cohen et al., Cureus 2020; mean of three blinded raters, manifest columns):

- ``geographic_extent`` 0-8: extent of ground-glass opacity or consolidation,
  0-4 per lung (0: none, 1: <25%, 2: 25-50%, 3: 50-75%, 4: >75% involvement);
- ``opacity`` 0-6: degree of opacity, 0-3 per lung (0: none, 1: ground glass,
  2: consolidation, 3: white-out).

``ccad severity train --model BUNDLE --data MANIFEST --out DIR`` computes, with
the bundle's ONNX backbone (same preprocessing as its classifier, no
TensorFlow), the pooled 1280-d features of every image that has both scores,
and fits one ridge regression per score (scikit-learn ``RidgeCV`` on
standardized features). It is scored by patient-grouped k-fold cross-validation
(MAE and Pearson r with grouped-bootstrap 95% intervals, against predicting the
training folds' mean). The final model, fitted on every scored image, is a
linear map and is stored as plain weights (``severity.json``), so prediction
needs numpy only. ``--attach`` adds it to the bundle: ``ccad predict`` and the
web tool then show, for an image classified COVID, both scores with an
approximate 95% interval (prediction +- 1.96 x the out-of-fold RMSE, clipped to
the scale) and a band.

Bands (ccad's own cut-offs on the geographic-extent score, in thirds of its
0-8 range): mild < 3, moderate 3 to < 6, severe >= 6. They describe how much
of the lungs looks involved on the X-ray. They are **not** the clinical
severity levels of the paper's Table 10 (which rest on symptoms, respiratory
rate, SpO2, imaging and organ failure); an X-ray score is one input to those,
not the level itself.
"""

from __future__ import annotations

import csv
import html
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ccad.errors import DataError, ImageReadError, ModelError
from ccad.evaluation.metrics import bootstrap_intervals, format_interval
from ccad.evaluation.reports import figures_html, html_page
from ccad.io.files import sha256, write_bytes, write_json, write_text
from ccad.io.pictures import pyplot, save_figure
from ccad.models.card import ModelCard, is_bundle
from ccad.models.severity import BAND_NOTE, BAND_SCORE, BANDS, SCORES, SEVERITY_FILE
from ccad.screening import Screener


def read_scored_rows(manifest: str | os.PathLike) -> list[dict[str, Any]]:
    """Manifest rows with both severity scores (others ignored): path (absolute), group, scores."""
    manifest = Path(manifest)
    if not manifest.is_file() or manifest.suffix.lower() != ".csv":
        raise DataError(f"{manifest}: `data` must be a manifest CSV with {', '.join(SCORES)} columns")
    with open(manifest, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("path", *SCORES) if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{manifest}: no {', '.join(missing)} column(s)")
        rows = []
        for row in reader:
            try:
                scores = {k: float(row[k]) for k in SCORES}
            except (TypeError, ValueError):
                continue
            rows.append({"path": manifest.parent / row["path"], "group": row.get("group") or row["path"], **scores})
    if len(rows) < 10:
        raise DataError(f"{manifest}: {len(rows)} rows carry both severity scores; at least 10 are needed")
    return rows


def pooled_features(screener: Screener, paths: Sequence[Path]) -> np.ndarray:
    """The classifier's pooled backbone features of each file (N, d), screened as ``predict`` screens it; an
    unreadable file is an error."""
    predictions = list(screener.screen(paths))
    for prediction in predictions:
        if prediction.error:
            raise ImageReadError(prediction.error)
    return np.stack([p.pooled for p in predictions])


def train_severity(
    model: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    folds: int = 5,
    seed: int = 0,
    attach: bool = False,
) -> dict[str, Any]:
    """Fit and cross-validate the severity head on a bundle's features; write ``out``; optionally attach it."""
    if not is_bundle(model):
        raise ModelError(f"{model}: severity needs a model bundle (ccad export) whose backbone it reuses")
    screener = Screener.load(model)
    rows = read_scored_rows(data)
    features = pooled_features(screener, [r["path"] for r in rows])
    groups = np.array([r["group"] for r in rows])
    folds = min(folds, len(set(groups)))
    out = Path(out)
    result: dict[str, Any] = {
        "n": len(rows),
        "patients": int(len(set(groups))),
        "folds": folds,
        "data": str(data),
        "bundle": str(model),
        "preprocess": screener.preprocess,
        "scores": {},
    }
    head: dict[str, Any] = {
        "format": "ccad-severity/1",
        "feature": "mean of the bundle's feature map (pooled)",
        "feature_dim": int(features.shape[1]),
        "band_score": BAND_SCORE,
        "bands": {name: limit for limit, name in BANDS if np.isfinite(limit)},
        "band_note": BAND_NOTE,
        "targets": {},
    }
    predictions = {}
    for name, (lo, hi) in SCORES.items():
        y = np.array([r[name] for r in rows])
        oof, baseline = _out_of_fold(features, y, groups, folds, lo, hi)
        result["scores"][name] = _regression_metrics(y, oof, baseline, groups, seed)
        predictions[name] = (y, oof)
        head["targets"][name] = _fitted_target(features, y, oof, lo, hi, result["scores"][name]["mae"]["value"])
    result["severity_model"] = head
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / SEVERITY_FILE, head)
    write_json(out / "metrics.json", {k: v for k, v in result.items() if k != "severity_model"})
    figure = _scatter(out / "figures" / "severity_scatter.png", predictions)
    _write_report(out / "report.html", result, figure)
    if attach:
        attach_severity(model, out / SEVERITY_FILE)
    return result


def _ridge():
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-1, 5, 25)))


def _out_of_fold(features, y, groups, folds: int, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """(patient-grouped out-of-fold ridge predictions clipped to the score's range, the same folds' baseline:
    the training folds' mean)."""
    from sklearn.model_selection import GroupKFold, cross_val_predict

    oof = np.clip(cross_val_predict(_ridge(), features, y, groups=groups, cv=GroupKFold(folds)), lo, hi)
    baseline = np.zeros_like(y)
    for train_idx, test_idx in GroupKFold(folds).split(features, y, groups):
        baseline[test_idx] = y[train_idx].mean()
    return oof, baseline


def _fitted_target(features, y, oof, lo: float, hi: float, cv_mae: float) -> dict[str, Any]:
    """The ridge fitted on all images, folded into one weight vector and bias on the raw features."""
    final = _ridge().fit(features, y)
    scaler, regression = final[0], final[1]
    weights = regression.coef_ / scaler.scale_
    return {
        "weights": weights.tolist(),
        "bias": float(regression.intercept_ - np.dot(weights, scaler.mean_)),
        "range": [lo, hi],
        "alpha": float(regression.alpha_),
        "interval_halfwidth": float(1.96 * np.sqrt(np.mean((oof - y) ** 2))),
        "cv_mae": cv_mae,
    }


def _regression_metrics(y: np.ndarray, predicted: np.ndarray, baseline: np.ndarray, groups, seed: int):
    def statistic(idx):
        yt, yp = y[idx], predicted[idx]
        r = float(np.corrcoef(yt, yp)[0, 1]) if np.std(yt) > 0 and np.std(yp) > 0 else None
        return {
            "mae": float(np.mean(np.abs(yt - yp))),
            "pearson_r": r,
            "mae_predicting_mean": float(np.mean(np.abs(yt - baseline[idx]))),
        }

    point = statistic(np.arange(len(y)))
    ci = bootstrap_intervals(statistic, len(y), list(groups), seed=seed)
    return {k: {"value": v, "ci95": ci.get(k)} for k, v in point.items()}


def describe_scores(result: dict[str, Any]) -> str:
    """One line per score: MAE and Pearson r with their 95% intervals, against predicting the mean."""
    return "\n".join(
        f"{name}: MAE {format_interval(m['mae'], 2)}, Pearson r {format_interval(m['pearson_r'], 2)} "
        f"(predicting the mean: MAE {format_interval(m['mae_predicting_mean'], 2)})"
        for name, m in result["scores"].items()
    )


def attach_severity(bundle: str | os.PathLike, severity_file: str | os.PathLike) -> None:
    """Copy ``severity.json`` (the file, or the folder ``ccad severity train`` wrote it to) into ``bundle``
    and record it (with its sha256) in the model card."""
    import json

    bundle = Path(bundle)
    severity_file = Path(severity_file)
    if severity_file.is_dir():
        severity_file = severity_file / SEVERITY_FILE
    head = json.loads(Path(severity_file).read_text())
    card = ModelCard.load(bundle)
    dim = int(np.load(bundle / card.heatmap["weights"]).shape[0])
    if head.get("feature_dim") != dim:
        raise ModelError(f"{severity_file}: made for {head.get('feature_dim')}-d features, the bundle has {dim}")
    write_bytes(bundle / SEVERITY_FILE, Path(severity_file).read_bytes())
    card.severity = {
        "file": SEVERITY_FILE,
        "scores": list(head["targets"]),
        "band_note": head["band_note"],
        "cv_mae": {k: v["cv_mae"] for k, v in head["targets"].items()},
    }
    card.sha256[SEVERITY_FILE] = sha256(bundle / SEVERITY_FILE)
    card.save(bundle)


def _scatter(path: Path, predictions: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(predictions), figsize=(4.2 * len(predictions), 4))
    for ax, (name, (y, p)) in zip(np.atleast_1d(axes), predictions.items()):
        lo, hi = SCORES[name]
        ax.scatter(y, p, s=12, alpha=0.7)
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set_xlim(lo - 0.3, hi + 0.3)
        ax.set_ylim(lo - 0.3, hi + 0.3)
        ax.set_xlabel(f"rated {name} (mean of 3 raters)")
        ax.set_ylabel("predicted (out of fold)")
        ax.set_title(name.replace("_", " "))
    fig.tight_layout()
    return save_figure(fig, path, dpi=90)


def _write_report(path: Path, result: dict[str, Any], figure: Path) -> None:
    def fmt(entry):
        return format_interval(entry, digits=2)

    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{fmt(m['mae'])}</td><td>{fmt(m['pearson_r'])}</td>"
        f"<td>{fmt(m['mae_predicting_mean'])}</td></tr>"
        for name, m in result["scores"].items()
    )
    body = f"""<p>{html.escape(BAND_NOTE)}.</p>
<p>{result["n"]} scored COVID images ({result["patients"]} patients) from <code>{html.escape(result["data"])}</code>;
features from bundle <code>{html.escape(result["bundle"])}</code> (preprocessing {html.escape(result["preprocess"])});
ridge regression per score, {result["folds"]}-fold cross-validation grouped by patient;
95% grouped-bootstrap intervals.</p>
<table><thead><tr><th>score</th><th>MAE</th><th>Pearson r</th><th>MAE predicting the mean</th></tr></thead>
<tbody>{rows}</tbody></table>
<p>Reference: Cohen et al. (2020) report MAE 1.14 (extent) and 0.78 (opacity) with a chest-X-ray-pretrained network.</p>
{figures_html({"Out-of-fold predictions vs the raters' mean": figure})}"""
    write_text(path, html_page("ccad severity model", body))
