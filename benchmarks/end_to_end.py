"""End to end with the default preprocessing: from a PNG path to a probability, one image at a time, with
each stage's share; and batch throughput of ``ccad predict`` on the same files.

Stages (medians over ``--images`` files, after 10 warm-up images, 2 threads):

- decode: ``read_grayscale`` (the file to a float image);
- segment: ``estimate_lung_fields`` on the working copy (the learned lung segmenter on ONNX Runtime and its
  post-processing);
- crop/normalize: the rest of ``prepare_full`` (crop to the lungs, blank outside, equalize, low-pass,
  resize to the input);
- classify: the classifier's ONNX call on one image;
- score: the decision rule, the out-of-distribution distance and the lung QC (``score`` minus the call).

"single image" times ``Screener.screen([path])``, all of it; "batch" times ``screen`` over the files
(what ``ccad predict --model B FOLDER`` runs), after a warm-up.

    python benchmarks/end_to_end.py --model BUNDLE --data FOLDER_OR_MANIFEST [--images 500]
        [--out benchmarks/results/end_to_end.json]
        [--baseline OTHER_BUNDLE]

With ``--baseline`` both bundles are measured in the same run, the baseline first, and the report holds
both and the ratios (what a second view costs, for example).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _report import emit

from ccad.screening import Screener


def main() -> None:
    from ccad.io.inputs import list_inputs

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--baseline", help="another bundle, measured first in the same run")
    parser.add_argument("--data", required=True)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--variant", default="float")
    parser.add_argument("--out")
    args = parser.parse_args()
    files = [str(p) for p in list_inputs([args.data])][: args.images]
    if not args.baseline:
        emit(measure(args.model, args.variant, files), args.out)
        return
    baseline, model = measure(args.baseline, args.variant, files), measure(args.model, args.variant, files)
    emit(
        {
            "benchmark": "end_to_end",
            "baseline": baseline,
            "model": model,
            "ratio_single_image_median": round(
                model["median_ms"]["single_image"] / baseline["median_ms"]["single_image"], 3
            ),
            "ratio_batch_throughput": round(model["batch_images_per_s"] / baseline["batch_images_per_s"], 3),
        },
        args.out,
    )


def measure(bundle: str, variant: str, files: list[str]) -> dict:
    from ccad.io.images import read_grayscale, resize_hw
    from ccad.models.lungs import estimate_lung_fields
    from ccad.preprocessing.pipeline import prepare_full
    from ccad.preprocessing.steps import WORK_SIDE

    screener = Screener.load(bundle, variant=variant, threads=2)
    predictor = screener.predictor
    size, preprocess = predictor.input_size, predictor.preprocess
    stages = {k: [] for k in ("decode", "segment", "crop_normalize", "classify", "score", "single_image")}
    for i, path in enumerate(files):
        t0 = time.perf_counter()
        gray = read_grayscale(path)
        t1 = time.perf_counter()
        prepared = prepare_full(gray, size, preprocess, lung_fields=True)
        t2 = time.perf_counter()
        work = gray
        if max(gray.shape) > WORK_SIDE:
            scale = WORK_SIDE / max(gray.shape)
            work = resize_hw(gray, max(1, round(gray.shape[0] * scale)), max(1, round(gray.shape[1] * scale)))
        t3 = time.perf_counter()
        estimate_lung_fields(work)
        t4 = time.perf_counter()
        predictor.predict(predictor.model_input(prepared.image[None]))
        t5 = time.perf_counter()
        screener.score([path], [prepared])
        t6 = time.perf_counter()
        list(screener.screen([path]))
        t7 = time.perf_counter()
        if i < 10:
            continue
        stages["decode"].append(t1 - t0)
        stages["segment"].append(t4 - t3)
        stages["crop_normalize"].append(max((t2 - t1) - (t4 - t3), 0.0))
        stages["classify"].append(t5 - t4)
        stages["score"].append(max((t6 - t5) - (t5 - t4), 0.0))
        stages["single_image"].append(t7 - t6)
    medians = {k: round(float(np.median(v)) * 1000, 2) for k, v in stages.items()}
    parts = sum(v for k, v in medians.items() if k != "single_image")
    list(screener.screen(files[:20]))
    start = time.perf_counter()
    n = sum(1 for _ in screener.screen(files))
    batch = n / (time.perf_counter() - start)
    return {
        "benchmark": "end_to_end",
        "model": bundle,
        "variant": variant,
        "preprocess": preprocess,
        "images": len(files),
        "median_ms": medians,
        "share_of_stages": {k: round(v / parts, 3) for k, v in medians.items() if k != "single_image"},
        "single_image_p95_ms": round(float(np.percentile(stages["single_image"], 95)) * 1000, 2),
        "batch_images_per_s": round(batch, 1),
    }


if __name__ == "__main__":
    main()
