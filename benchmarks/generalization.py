"""Recipes end to end on the real pipeline: grouped CV, shortcut audit, cross-source sensitivity (issue 5).

For each recipe (a ``ccad train`` preset plus settings):

1. ``ccad cv`` 5-fold, patient-grouped, on ``covid-cxr`` COVID vs normal: pooled
   out-of-fold AUC, sensitivity, specificity with 95% intervals;
2. ``ccad train`` on the manifest's fixed split, then ``ccad audit`` on its test
   split: AUC with the lung fields blanked / only the lungs shown, CAM mass in
   the lungs;
3. ``ccad evaluate`` of that model on ``covid-cxr-rdb`` (1,000 COVID images from
   another source): sensitivity with its interval.

And the three-class (COVID / normal / pneumonia) pooled macro-F1 by ``ccad cv``
for the default recipe. Prints JSON (``--out`` also writes it).

    KERAS_HOME=../shared/keras-home python benchmarks/generalization.py --out benchmarks/results-generalization.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RECIPES = {
    "default": [],
    "previous-default": ["--preprocess", "none"],
    "paper-a": ["--preset", "paper-a"],
}


def run(argv: list[str]) -> None:
    from ccad.cli import main

    code = main(argv)
    if code:
        raise SystemExit(f"ccad {' '.join(argv)} failed with {code}")


def value(entry) -> dict:
    return {"value": entry["value"], "ci95": entry["ci95"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated from {', '.join(RECIPES)}")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--skip-three-class", action="store_true")
    parser.add_argument("--out")
    args = parser.parse_args()
    manifest = str(SHARED / "covid-cxr" / "manifest.csv")
    rdb = str(SHARED / "covid-cxr-rdb" / "manifest.csv")
    binary = ["--data", manifest, "--classes", "covid,normal"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for i, name in enumerate(args.recipes.split(",")):
            extra = RECIPES[name]
            start = time.perf_counter()
            run(["cv", *binary, "--out", str(tmp / f"cv{i}"), "--folds", str(args.folds), *extra])
            cv_s = time.perf_counter() - start
            pooled = json.loads((tmp / f"cv{i}" / "metrics.json").read_text())["pooled"]
            run(["train", *binary, "--out", str(tmp / f"run{i}"), *extra])
            run(["audit", "--model", str(tmp / f"run{i}"), *binary, "--out", str(tmp / f"audit{i}")])
            audit = json.loads((tmp / f"audit{i}" / "audit.json").read_text())
            run(["evaluate", "--model", str(tmp / f"run{i}"), "--data", rdb, "--out", str(tmp / f"rdb{i}")])
            rdb_metrics = json.loads((tmp / f"rdb{i}" / "metrics.json").read_text())
            test = json.loads((tmp / f"run{i}" / "metrics.json").read_text())
            row = {
                "recipe": name, "flags": " ".join(extra) or "(none)",
                "cv_auc": value(pooled["auc"]), "cv_sensitivity": value(pooled["sensitivity"]),
                "cv_specificity": value(pooled["specificity"]), "cv_s": round(cv_s, 1),
                "test_auc": value(test["auc"]), "test_n": test["n"],
                "lung_blanked_auc": audit["lung_test"]["no_lungs"], "lungs_only_auc": audit["lung_test"]["lungs_only"],
                "heatmap_mass_in_lungs": audit["heatmap"]["mass_in_lungs_mean"],
                "lung_area_share": audit["heatmap"]["lung_area_share_mean"],
                "rdb_sensitivity": value(rdb_metrics["sensitivity"]),
                "decision": test.get("decision", {}).get("text"),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
        three_class = None
        if not args.skip_three_class:
            run(["cv", "--data", manifest, "--classes", "covid,normal,pneumonia", "--out", str(tmp / "cv3"),
                 "--folds", str(args.folds)])
            pooled = json.loads((tmp / "cv3" / "metrics.json").read_text())["pooled"]
            three_class = {"recipe": "default", "macro_f1": pooled["macro_f1"], "accuracy": value(pooled["accuracy"]),
                           "covid_auc_one_vs_rest": value(pooled["auc"]), "confusion_matrix": pooled["confusion_matrix"]}
    emit({"benchmark": "generalization", "folds": args.folds, "rows": rows, "three_class": three_class,
          "data": "covid-cxr manifest (COVID vs normal; CV over all splits, audit on the fixed test split), "
                  "covid-cxr-rdb"}, args.out)


if __name__ == "__main__":
    main()
