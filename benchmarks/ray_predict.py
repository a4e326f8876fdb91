"""Batch screening throughput: ``ccad predict --engine ray`` (1 and 2 scoring actors) vs single-process predict.

The same N synthetic images (256 px PNG) and the same bundle for every engine; the
baseline (single-process ``predict_to_csv``) runs in the same process first.
Prints JSON (``--out`` also writes it).

    KERAS_HOME=../shared/keras-home python benchmarks/ray_predict.py --images 2000 \
        --out benchmarks/results/ray_predict.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit, synthetic_bundle  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--preprocess", default="none")
    parser.add_argument("--model", help="score with this bundle (e.g. the shipped one) instead of training one")
    parser.add_argument("--out")
    args = parser.parse_args()

    from ccad.data.synthetic import generate

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = generate(tmp / "images", n_per_class=args.images // 2, size=256, seed=3)
        images = sorted(str(p) for p in data.rglob("*.png"))[: args.images]
        (tmp / "list.txt").write_text("\n".join(images))
        train_args = ("--input-size", str(args.input_size), "--epochs", "2", "--feature-views", "1")
        if args.model:
            bundle = Path(args.model).resolve()
        else:
            bundle = synthetic_bundle(tmp, 30, 256, (*train_args, "--preprocess", args.preprocess))
        rows = _measure(bundle, images, tmp)
    emit(
        {
            "benchmark": "ray_predict",
            "model": args.model or "trained here on synthetic images",
            "input_size": args.input_size,
            "preprocess": args.preprocess if not args.model else "the bundle's own",
            "rows": rows,
            "machine": "2 CPU cores",
        },
        args.out,
    )


def _measure(bundle: Path, images: list[str], tmp: Path) -> list[dict]:
    """Single-process predict first (the baseline), then Ray with one and two scoring actors, same run."""
    from ccad.deploy.scale import ray_predict
    from ccad.screening import Screener
    from ccad.screening.results import predict_to_csv

    start = time.perf_counter()
    predict_to_csv(Screener.load(bundle), images, tmp / "single.csv", progress=False)
    single = time.perf_counter() - start
    rows = [
        {
            "engine": "single-process predict (4 decode threads, ONNX Runtime 2 threads)",
            "images": len(images),
            "seconds": round(single, 1),
            "images_per_s": round(len(images) / single, 1),
        }
    ]
    for workers in (1, 2):
        summary = ray_predict(bundle, [tmp / "list.txt"], tmp / f"ray{workers}", workers=workers, num_cpus=2)
        run = summary["this_run"]
        rows.append(
            {
                "engine": f"ray, {workers} scoring actor(s), local (num_cpus=2)",
                "images": run["processed"],
                "seconds": run["seconds"],
                "images_per_s": run["images_per_s"],
                "vs_single": round(single / run["seconds"], 2),
            }
        )
        print(rows[-1], flush=True)
    return rows


if __name__ == "__main__":
    main()
