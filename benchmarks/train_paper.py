"""Training speed and memory: the straightforward Keras baseline vs ccad's paper-a preset vs ccad's default recipe.

All three train 224 px MobileNetV2 (frozen) for 10 epochs on the training split of
Dataset A (../shared/data/covid-cxr, paper_dataset_a=1, covid vs normal) and are
scored on its test split. Each case runs in its own process, so its peak memory
(ru_maxrss) is its own. Prints one JSON object; ratios are against the baseline
measured in the same run.

    KERAS_HOME=../shared/keras-home python benchmarks/train_paper.py [--out benchmarks/results/train_paper.json]

Baseline ("the straightforward Keras version"): in-memory arrays, the paper's
augmentation as Keras layers inside the model graph, ``model.fit``, Adam 1e-3,
batch 30 (what a user would write from the paper).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import emit

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT.parent / "shared" / "data" / "covid-cxr" / "manifest.csv"
SELECT = dict(classes=["covid", "normal"], where=["paper_dataset_a=1"])
EPOCHS = 10


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_split():
    from ccad.data.datasets import discover, label_indices
    from ccad.data.splits import assign_splits
    from ccad.preprocessing.pipeline import load_images

    ds = assign_splits(discover(MANIFEST, **SELECT))
    out = {}
    for split in ("train", "val", "test"):
        images, kept, _ = load_images(ds.subset(split), 224)
        out[split] = (images, label_indices(kept, ds.classes))
    return out


def case_baseline() -> dict:
    import keras
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from ccad.models.classifier import build_classifier

    data = load_split()
    keras.utils.set_random_seed(0)
    x_train, y_train = data["train"]
    rgb = lambda a: np.repeat(a[..., None], 3, -1)  # noqa: E731
    augment = keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal_and_vertical"),
            keras.layers.RandomRotation(0.25, fill_mode="nearest"),
            keras.layers.RandomZoom((-0.5, 0.0), (-0.5, 0.0), fill_mode="nearest"),
            keras.layers.RandomTranslation(0.5, 20 / 224, fill_mode="nearest"),
        ]
    )
    classifier = build_classifier(2, 224, 0.3, "imagenet")
    inputs = keras.Input((224, 224, 3))
    model = keras.Model(inputs, classifier(augment(inputs)))
    model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy", metrics=["accuracy"])
    eye = np.eye(2, dtype="float32")
    start = time.perf_counter()
    model.fit(
        rgb(x_train),
        eye[y_train],
        batch_size=30,
        epochs=EPOCHS,
        verbose=0,
        validation_data=(rgb(data["val"][0]), eye[data["val"][1]]),
    )
    train_s = time.perf_counter() - start
    x_test, y_test = data["test"]
    p = classifier.predict(rgb(x_test), verbose=0)
    return dict(
        train_s=train_s,
        images=len(x_train),
        epochs=EPOCHS,
        accuracy=float(np.mean(p.argmax(1) == y_test)),
        auc=float(roc_auc_score(y_test == 0, p[:, 0])),
    )


def case_ccad(preset: str) -> dict:
    from ccad.data.datasets import DataSpec
    from ccad.training.config import make_config
    from ccad.training.run import train

    with tempfile.TemporaryDirectory() as out:
        result = train(DataSpec(MANIFEST, **SELECT), out, make_config(preset), verbose=0)
    m = result.metrics
    return dict(
        train_s=result.timings["train_s"],
        images=len(result.dataset.subset("train")),
        epochs=EPOCHS,
        accuracy=m["accuracy"]["value"],
        auc=m["auc"]["value"],
        feature_views=result.config.feature_views,
    )


def run_case(name: str) -> dict:
    start = time.perf_counter()
    result = case_baseline() if name == "baseline" else case_ccad(name)
    result["wall_s"] = time.perf_counter() - start
    result["train_images_per_s"] = result["images"] * result["epochs"] / result["train_s"]
    result["peak_rss_mb"] = peak_mb()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case)))
        return
    if not MANIFEST.is_file():
        sys.exit(f"benchmark needs {MANIFEST} (../shared beside the checkout)")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.setdefault("KERAS_HOME", str(ROOT.parent / "shared" / "keras-home"))
    results = {}
    for name in ("baseline", "paper-a", "default"):
        done = subprocess.run(
            [sys.executable, __file__, "--case", name], env=env, capture_output=True, text=True, check=True
        )
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    base = results["baseline"]["train_images_per_s"]
    for r in results.values():
        r["speedup_vs_baseline"] = r["train_images_per_s"] / base
    report = {
        "benchmark": "train_paper",
        "data": "covid-cxr Dataset A (paper_dataset_a=1), covid vs normal",
        "cpu_count": os.cpu_count(),
        "results": results,
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
