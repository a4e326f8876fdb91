"""Recipes compared on cross-source evidence (issue 11): which default holds up at another hospital?

Every recipe is trained on ``covid-cxr`` COVID vs normal (its fixed split), or on
that pooled with ``cohen-other`` whose 84 pneumonias become negatives
(``--relabel cohen-covid-chestxray:pneumonia=normal``: the COVID images' own
source then holds negatives too), and scored on:

- ``cv_auc``: 5-fold patient-grouped ``ccad cv`` on the recipe's training pool, pooled out-of-fold AUC
  (recipes marked ``cv``);
- ``test_auc``: the fixed test split (internal);
- ``rdb_sensitivity``: ``covid-cxr-rdb``, 1,000 COVID images of another source, at the stored rule;
- ``cohen_no_finding_called_covid`` / ``cohen_pneumonia_called_covid``: ``cohen-other``'s 13 "No
  Finding" and 84 pneumonia images, the COVID images' own source: a model reading the source calls
  them COVID. For recipes trained without ``cohen-other``: the whole set; for recipes trained with
  it: the out-of-fold predictions of ``ccad cv`` when the recipe has one, else its test split only;
- ``lung_blanked_auc``: ``ccad audit`` on the test split (the lungs blanked);
- ``shifted_normals_kept_normal``: the test split's normals as another hospital might store them
  (gamma, half resolution, JPEG 40, black border, grain);
- ``ood_*``: the share flagged out of distribution on the test split, rdb, cohen-other, and the
  two photos of ``imagenet-sanity``.

And leave-one-source-out (``ccad cv --group-by source``) for the recipes named in ``--loso``:
the pooled data of three sources (Cohen's collection: covid-cxr COVID + cohen-other; NIH;
covid-cxr-rdb), each scored by a model that never saw its source.

    KERAS_HOME=../shared/keras-home python benchmarks/generalization.py --out benchmarks/results/generalization.json
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ccad.screening import Screener

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
COVID_CXR = str(SHARED / "covid-cxr" / "manifest.csv")
COHEN = str(SHARED / "cohen-other" / "manifest.csv")
RDB = str(SHARED / "covid-cxr-rdb" / "manifest.csv")
PHOTOS = SHARED / "imagenet-sanity"
COHEN_NEGATIVES = ["--data", COHEN, "--relabel", "cohen-covid-chestxray:pneumonia=normal"]
WHOLE, THORAX, LUNGS = "none", "thorax+equalize+lowpass", "lungs+equalize+lowpass"
RECIPES = {
    # name: (cv?, extra training flags)
    "whole-image": (True, ["--preprocess", WHOLE]),
    "thorax": (True, ["--preprocess", THORAX]),
    "lungs": (True, ["--preprocess", LUNGS]),
    "lungs-clahe": (True, ["--preprocess", "lungs+clahe+lowpass"]),
    "whole-image+cohen-neg": (True, ["--preprocess", WHOLE, *COHEN_NEGATIVES]),
    "thorax+cohen-neg": (True, ["--preprocess", THORAX, *COHEN_NEGATIVES]),
    "lungs+cohen-neg": (True, ["--preprocess", LUNGS, *COHEN_NEGATIVES]),
    "lungs+fine-tune": (False, ["--preprocess", LUNGS, "--fine-tune-epochs", "5", "--feature-views", "0"]),
    "lungs argmax+temperature": (
        False,
        ["--preprocess", LUNGS, "--threshold", "argmax", "--calibration", "temperature"],
    ),
    "lungs specificity-95": (False, ["--preprocess", LUNGS, "--threshold", "specificity-95"]),
}


def run(argv: list[str]) -> None:
    from ccad.cli import main

    code = main(argv)
    if code:
        raise SystemExit(f"ccad {' '.join(argv)} failed with {code}")


def value(entry) -> dict:
    return {"value": entry["value"], "ci95": entry["ci95"]}


def rate(flags) -> dict | None:
    flags = np.asarray(list(flags), bool)
    if not len(flags):
        return None
    from scipy.stats import binomtest

    ci = binomtest(int(flags.sum()), len(flags)).proportion_ci(method="wilson")
    return {
        "value": round(float(flags.mean()), 4),
        "k": int(flags.sum()),
        "n": int(len(flags)),
        "ci95": [round(float(ci.low), 4), round(float(ci.high), 4)],
    }


def cohen_rates(rows: list[dict]) -> dict:
    """Share called COVID among cohen-other's pneumonia and No Finding rows of a predictions CSV."""
    out = {}
    for kind in ("pneumonia", "normal"):
        picked = [r for r in rows if "cohen-other" in r["file"] and f"/{kind}/" in r["file"]]
        out["cohen_pneumonia_called_covid" if kind == "pneumonia" else "cohen_no_finding_called_covid"] = rate(
            r["predicted_class"] == "covid" for r in picked
        )
    return out


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def shifted_normals(run_dir: Path) -> dict | None:
    """Share of the test split's normals kept normal when stored as another hospital might."""
    from recipes import acquisition_shift

    from ccad.data.splits import read_split_file
    from ccad.preprocessing.pipeline import load_images
    from ccad.scoring.predictor import load_predictor

    classifier = load_predictor(run_dir)
    normals = [
        s
        for s in read_split_file(run_dir / "split.csv")
        if s.split == "test" and s.label == "normal" and s.source == "nih-chestxray8"
    ]
    images, kept, _ = load_images(
        normals, classifier.input_size, skip_bad=True, preprocess=classifier.preprocess, transform=acquisition_shift
    )
    predicted = classifier.decision.predict(classifier.decision.calibrate(classifier.predict_images(images)))
    return rate(np.array(classifier.classes)[predicted] == "normal")


def photos_flagged(run_dir: Path) -> dict | None:

    results = list(Screener.load(run_dir).screen(sorted(PHOTOS.glob("*.png"))))
    return rate(r.get("in_distribution") is False for r in results)


def recipe_row(name: str, with_cv: bool, extra: list[str], tmp: Path, folds: int) -> dict:
    data = ["--data", COVID_CXR, "--classes", "covid,normal"]
    pooled_cohen = COHEN in extra
    row: dict = {"recipe": name, "flags": " ".join(a for a in extra if not a.startswith(str(SHARED)))}
    start = time.perf_counter()
    if with_cv:
        run(["cv", *data, *extra, "--out", str(tmp / "cv"), "--folds", str(folds)])
        pooled = json.loads((tmp / "cv" / "metrics.json").read_text())["pooled"]
        row.update(
            cv_auc=value(pooled["auc"]),
            cv_sensitivity=value(pooled["sensitivity"]),
            cv_specificity=value(pooled["specificity"]),
            cv_s=round(time.perf_counter() - start),
        )
    start = time.perf_counter()
    run(["train", *data, *extra, "--out", str(tmp / "run")])
    row["train_s"] = round(time.perf_counter() - start)
    test = json.loads((tmp / "run" / "metrics.json").read_text())
    row.update(
        test_auc=value(test["auc"]),
        test_n=test["n"],
        decision=test["decision"]["text"],
        ood_test=test.get("out_of_distribution"),
    )
    run(["evaluate", "--model", str(tmp / "run"), "--data", RDB, "--out", str(tmp / "rdb")])
    rdb = json.loads((tmp / "rdb" / "metrics.json").read_text())
    row.update(rdb_sensitivity=value(rdb["sensitivity"]), ood_rdb=rdb.get("out_of_distribution"))
    if not pooled_cohen:
        run(
            [
                "evaluate",
                "--model",
                str(tmp / "run"),
                "--data",
                COHEN,
                "--relabel",
                "pneumonia=normal",
                "--split",
                "all",
                "--out",
                str(tmp / "cohen"),
            ]
        )
        row.update(cohen_rates(read_csv(tmp / "cohen" / "predictions.csv")), cohen_measured_on="all 97 (unseen)")
        row["ood_cohen"] = json.loads((tmp / "cohen" / "metrics.json").read_text()).get("out_of_distribution")
    elif with_cv:
        row.update(cohen_rates(read_csv(tmp / "cv" / "oof_predictions.csv")), cohen_measured_on="out-of-fold (cv)")
    else:
        row.update(cohen_rates(read_csv(tmp / "run" / "predictions.csv")), cohen_measured_on="test split only")
    run(["audit", "--model", str(tmp / "run"), *data, "--out", str(tmp / "audit")])
    audit = json.loads((tmp / "audit" / "audit.json").read_text())
    row.update(
        lung_blanked_auc=audit["lung_test"]["no_lungs"],
        lungs_only_auc=audit["lung_test"]["lungs_only"],
        shifted_normals_kept_normal=shifted_normals(tmp / "run"),
        ood_photos=photos_flagged(tmp / "run"),
    )
    return row


def loso_row(name: str, extra: list[str], tmp: Path) -> dict:
    """Leave-one-source-out over Cohen's collection (+ cohen-other), NIH and covid-cxr-rdb."""
    flags = [a for a in extra if a not in COHEN_NEGATIVES]
    run(
        [
            "cv",
            "--data",
            COVID_CXR,
            "--data",
            COHEN,
            "--data",
            RDB,
            "--classes",
            "covid,normal",
            "--relabel",
            "cohen-covid-chestxray:pneumonia=normal",
            "--group-by",
            "source",
            *flags,
            "--out",
            str(tmp / "loso"),
        ]
    )
    summary = json.loads((tmp / "loso" / "metrics.json").read_text())
    rows = read_csv(tmp / "loso" / "oof_predictions.csv")
    by_source = {}
    for source in sorted({r["source"] for r in rows}):
        picked = [r for r in rows if r["source"] == source]
        labels = np.array([r["label"] == "covid" for r in picked])
        scores = np.array([float(r["p_covid"]) for r in picked])
        entry = {
            "n": len(picked),
            "covid": int(labels.sum()),
            "called_covid_of_covid": rate(r["predicted_class"] == "covid" for r in picked if r["label"] == "covid"),
            "called_normal_of_normal": rate(r["predicted_class"] == "normal" for r in picked if r["label"] == "normal"),
        }
        if 0 < labels.sum() < len(labels):
            from sklearn.metrics import roc_auc_score

            entry["auc_within_source"] = round(float(roc_auc_score(labels, scores)), 4)
        by_source[source] = entry
    return {
        "recipe": name,
        "flags": " ".join(flags),
        "pooled_out_of_source_auc": value(summary["pooled"]["auc"]),
        "by_source": by_source,
        "elapsed_s": summary["elapsed_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated from: " + ", ".join(RECIPES))
    parser.add_argument(
        "--loso",
        default="lungs,whole-image",
        help="recipes also run leave-one-source-out (comma-separated; empty for none)",
    )
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--out")
    args = parser.parse_args()
    rows, loso = [], []
    partial = Path(args.out).with_suffix(".partial.json") if args.out else None
    for name in [n for n in args.recipes.split(",") if n]:
        with tempfile.TemporaryDirectory() as tmp:
            with_cv, extra = RECIPES[name]
            rows.append(recipe_row(name, with_cv, extra, Path(tmp), args.folds))
        print(json.dumps(rows[-1]), flush=True)
        if partial:
            partial.write_text(json.dumps({"rows": rows, "loso": loso}, indent=1))
    for name in [n for n in args.loso.split(",") if n]:
        with tempfile.TemporaryDirectory() as tmp:
            loso.append(loso_row(name, RECIPES[name][1], Path(tmp)))
        print(json.dumps(loso[-1]), flush=True)
        if partial:
            partial.write_text(json.dumps({"rows": rows, "loso": loso}, indent=1))
    emit(
        {
            "benchmark": "generalization",
            "folds": args.folds,
            "rows": rows,
            "leave_one_source_out": loso,
            "data": "trained on covid-cxr (COVID vs normal, fixed split; cv: all splits) and, for +cohen-neg, "
            "cohen-other with its pneumonias as negatives; scored on covid-cxr-rdb, cohen-other, "
            "imagenet-sanity photos",
        },
        args.out,
    )


if __name__ == "__main__":
    main()
