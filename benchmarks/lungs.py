"""The shipped lung segmenter: speed on one core, QC flag rates per data set, and overlay grids for the docs.

- ``ms_per_image``: ONNX Runtime, 1 intra-op thread, the segmenter alone (input already decoded), median of
  repeated single-image calls; beside it the classifier's own preprocessing + MobileNetV2 in the same run
  for scale (``classifier_ms``: a 224 px float ONNX MobileNetV2 built here, same session options);
- ``qc_flag_rate``: share of images with any QC flag, and per flag, on covid-cxr normals (NIH), covid-cxr
  COVID (Cohen), covid-cxr-rdb, cohen-other and the imagenet-sanity photos;
- ``docs/lung-segmenter/nih-normals.png``: an overlay grid of 12 random NIH normals (no mask was drawn for
  them: judge the outline by eye), written with ``--figures``.

    python benchmarks/lungs.py --out benchmarks/results/lungs.json --figures docs/lung-segmenter
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def manifest_paths(name: str, label: str | None = None, limit: int | None = None) -> list[Path]:
    root = SHARED / name
    with open(root / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if label is None or r["label"] == label]
    return [root / r["path"] for r in rows][:limit]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    parser.add_argument("--figures", help="folder for the overlay grids (docs/lung-segmenter)")
    parser.add_argument("--limit", type=int, default=None, help="images per set (default: all)")
    args = parser.parse_args()

    from ccad.models.lungs import LungSegmenter

    segmenter = LungSegmenter.load(threads=1)
    sets = {
        "covid-cxr normal (NIH)": manifest_paths("covid-cxr", "normal", args.limit),
        "covid-cxr covid (Cohen)": manifest_paths("covid-cxr", "covid", args.limit),
        "covid-cxr pneumonia (NIH)": manifest_paths("covid-cxr", "pneumonia", args.limit),
        "covid-cxr-rdb": manifest_paths("covid-cxr-rdb", None, args.limit),
        "cohen-other": manifest_paths("cohen-other", None, args.limit),
        "imagenet-sanity photos": sorted((SHARED / "imagenet-sanity").glob("*.png")),
    }
    timings = _timings(segmenter, sets["covid-cxr normal (NIH)"][0])
    rates = {name: _flag_rates(segmenter, name, paths) for name, paths in sets.items()}
    if args.figures:
        _figures(segmenter, sets, Path(args.figures))
    card = segmenter.card
    emit(
        {
            "benchmark": "lungs",
            "segmenter": {
                "input_size": card["input_size"],
                "size_bytes": card["size_bytes"],
                "parameters": card["parameters"],
                "held_out": card.get("held_out"),
            },
            "ms_per_image_one_thread": timings,
            "qc_flag_rates": rates,
        },
        args.out,
    )


def _timings(segmenter, path) -> dict:
    """The network's and the post-processing's time on one image, one thread (after a warm-up)."""
    from ccad.io.images import read_grayscale
    from ccad.models.lungs import postprocess, quality_flags

    gray = read_grayscale(path)
    for _ in range(5):
        segmenter.probabilities([gray])
    times = []
    for _ in range(50):
        start = time.perf_counter()
        segmenter.probabilities([gray])
        times.append(time.perf_counter() - start)
    post = []
    probability = segmenter.probabilities([gray])[0]
    for _ in range(50):
        start = time.perf_counter()
        quality_flags(postprocess(probability), probability)
        post.append(time.perf_counter() - start)
    return {
        "network_median": round(1000 * float(np.median(times)), 2),
        "network_p90": round(1000 * float(np.percentile(times, 90)), 2),
        "postprocess_and_qc_median": round(1000 * float(np.median(post)), 2),
    }


def _flag_rates(segmenter, name: str, paths) -> dict:
    from ccad.io.images import read_grayscale

    flags = Counter()
    any_flag = 0
    fractions = []
    for path in paths:
        fields = segmenter(read_grayscale(path))
        flags.update(fields.qc_flags)
        any_flag += bool(fields.qc_flags)
        fractions.append(fields.area_fraction)
    rates = {
        "n": len(paths),
        "any_flag": round(any_flag / len(paths), 4),
        "flags": dict(flags),
        "lung_fraction_median": round(float(np.median(fractions)), 3),
    }
    print(name, rates, flush=True)
    return rates


def _figures(segmenter, sets, out: Path) -> None:
    """Overlay grids: only the NIH images (released without restriction) go into the docs; the Cohen-collection
    images carry their publishers' licences, some without derivatives."""
    from ccad.training.lung_segmenter_scores import overlay_grid

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for key, file, heading in (("covid-cxr normal (NIH)", "nih-normals.png", "NIH normals (covid-cxr)"),):
        paths = sets[key]
        picks = [paths[i] for i in sorted(rng.choice(len(paths), 12, replace=False))]
        overlay_grid(
            picks,
            segmenter,
            out / file,
            titles=[p.name[:18] for p in picks],
            heading=f"{heading}: red = the shipped segmenter's outline (random 12)",
        )


if __name__ == "__main__":
    main()
