"""Fine-tuning speed on this machine: the paper's second phase (whole MobileNetV2 unfrozen, BatchNorm in
inference mode, Adam 1e-5, batch 30, 224 px, Table 4 augmentation), and what makes it faster.

Each variant runs in its own process (TensorFlow's thread pools are fixed at start-up) and fine-tunes for
``--epochs`` epochs over ``--images`` synthetic X-ray-like images, with a validation pass of a quarter as
many each epoch, through ccad's own loop (:func:`ccad.training.fit.fine_tune`). The first epoch (tracing,
XLA compilation) is reported apart; images/s is training images x later epochs / their wall time.

    KERAS_HOME=../shared/keras-home python benchmarks/fine_tune.py [--out benchmarks/results/fine_tune.json]

Variants (baseline first; ratios against it, same run):

- ``baseline``: ccad's loop as it was: Keras defaults (no XLA on CPU), TensorFlow's default thread pools.
- ``jit``: ``model.compile(jit_compile=True)`` (XLA).
- ``threads-2x1``: intra-op 2, inter-op 1 threads (the cores, no oversubscription).
- ``jit+threads-2x1``: both.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from _report import emit

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "baseline": {},
    "jit": {"CCAD_JIT_COMPILE": "1"},
    "threads-2x1": {"TF_NUM_INTRAOP_THREADS": "2", "TF_NUM_INTEROP_THREADS": "1"},
    "jit+threads-2x1": {"CCAD_JIT_COMPILE": "1", "TF_NUM_INTRAOP_THREADS": "2", "TF_NUM_INTEROP_THREADS": "1"},
}


def run_variant(images: int, epochs: int) -> dict:
    import keras
    import numpy as np

    from ccad.data.synthetic import render_patient
    from ccad.models.classifier import build_classifier
    from ccad.training.config import make_config
    from ccad.training.fit import fine_tune

    rng = np.random.default_rng(0)
    labels = np.arange(images) % 2
    x = np.stack([render_patient(rng, ("covid", "normal")[c], 224) for c in labels]).astype("float32")
    n_val = max(images // 4, 2)
    arrays = {"train": (x, labels), "val": (x[:n_val], labels[:n_val])}
    config = make_config("paper-a", fine_tune_epochs=epochs)
    keras.utils.set_random_seed(0)
    model = build_classifier(2, 224, 0.3, "imagenet", samplewise_center=True, featurewise_mean=float(x.mean()))
    times: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    history = fine_tune(model, arrays, ("covid", "normal"), config, verbose=0, first_epoch=10, callbacks=[Timer()])
    later = times[1:]
    return dict(
        images=images,
        val_images=n_val,
        epochs=epochs,
        first_epoch_s=round(times[0], 2),
        epoch_s=round(sum(later) / len(later), 2),
        images_per_s=round(images * len(later) / sum(later), 2),
        final_loss=history[-1]["loss"],
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_variant(args.images, args.epochs)))
        return
    results = {}
    for name in args.variants.split(","):
        env = dict(os.environ, **VARIANTS[name], TF_CPP_MIN_LOG_LEVEL="2")
        done = subprocess.run(
            [sys.executable, __file__, "--child", name, "--images", str(args.images), "--epochs", str(args.epochs)],
            env=env,
            capture_output=True,
            text=True,
        )
        if done.returncode:
            sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(name, results[name], file=sys.stderr)
    base = results.get("baseline", {}).get("images_per_s")
    for row in results.values():
        row["vs_baseline"] = round(row["images_per_s"] / base, 2) if base else None
    emit(
        {
            "benchmark": "fine_tune",
            "machine": f"{os.cpu_count()} CPU cores",
            "setting": "MobileNetV2 224 px, all backbone layers trainable except BatchNorm, Adam 1e-5, batch 30, "
            "Table 4 augmentation, synthetic images",
            "variants": results,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
