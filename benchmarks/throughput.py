"""The screening path against the hardware, in one run: ``ccad predict FOLDER``'s speed on one core and on
two, one image's latency, and the bare classifier at batch 1 (the ceiling the issue measures against), for
this tree and a baseline tree (another commit, checked out beside it), each in its own child process
pinned with ``taskset``.

    python benchmarks/throughput.py --data ../shared/data/covid-cxr/manifest.csv [--images 300]
        [--baseline-tree DIR] [--out benchmarks/results/throughput.json]

``--baseline-tree`` is a checkout of another commit (``git worktree add /tmp/base REV``); its ``src`` is put
first on the child's path. The model is the bundle shipped with this tree, for both. Timings vary ~30% run
to run: compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from _report import emit

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
import numpy as np
from ccad.io.inputs import list_inputs
bundle, data, images, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
files = [str(p) for p in list_inputs([data])][:images]
try:
    from ccad.screening import Screener
    screener = Screener.load(bundle, threads=threads)
    screen, predictor = screener.screen, screener.predictor
    read = screener.read
except ImportError:  # a tree from before the application layer
    from ccad.scoring.predictor import OnnxPredictor
    predictor = OnnxPredictor.load(bundle, threads=threads)
    screen, read = predictor.predict_stream, lambda f: predictor._load(f)
list(screen(files[:20]))
start = time.perf_counter()
n = sum(1 for _ in screen(files))
folder = n / (time.perf_counter() - start)
single = []
for f in files[:100]:
    t = time.perf_counter()
    list(screen([f]))
    single.append(time.perf_counter() - t)
x = predictor.model_input(np.stack([read(files[0]).image]))
for _ in range(10):
    predictor.predict(x)
t = time.perf_counter()
for _ in range(100):
    predictor.predict(x)
bare = 100 / (time.perf_counter() - t)
print(json.dumps({
    "folder_images_per_s": round(folder, 1),
    "single_ms": {
        "p50": round(1000 * float(np.median(single)), 1),
        "p95": round(1000 * float(np.percentile(single, 95)), 1),
    },
    "bare_classifier_batch1_images_per_s": round(bare, 1),
}))
"""


def child(tree: Path, bundle: str, data: str, images: int, cores: str, threads: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree / "src"))
    done = subprocess.run(
        ["taskset", "-c", cores, sys.executable, "-c", CHILD, bundle, data, str(images), str(threads)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(tree: Path, bundle: str, data: str, images: int) -> dict:
    one = child(tree, bundle, data, images, "0", 1)
    two = child(tree, bundle, data, images, "0,1", 2)
    return {
        "one_core": one,
        "two_cores": two,
        "two_cores_vs_one": round(two["folder_images_per_s"] / one["folder_images_per_s"], 2),
        "folder_vs_bare_classifier": round(two["folder_images_per_s"] / two["bare_classifier_batch1_images_per_s"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--baseline-tree", help="a checkout of the commit to compare with")
    parser.add_argument("--out")
    args = parser.parse_args()
    bundle = str(ROOT / "src" / "ccad" / "models" / "default")
    report = {"benchmark": "throughput", "model": "the shipped bundle (two views, float)", "images": args.images}
    if args.baseline_tree:
        report["baseline"] = measure(Path(args.baseline_tree), bundle, args.data, args.images)
    report["this_tree"] = measure(ROOT, bundle, args.data, args.images)
    if args.baseline_tree:
        for key in ("one_core", "two_cores"):
            report[f"{key}_speedup"] = round(
                report["this_tree"][key]["folder_images_per_s"] / report["baseline"][key]["folder_images_per_s"], 2
            )
    emit(report, args.out)


if __name__ == "__main__":
    main()
