"""Inference speed, latency, size and memory: Keras predict vs ONNX Runtime float / INT8 vs TFLite.

One run, 2 threads everywhere. Trains the default recipe on Dataset A (or takes
``--run``), exports a bundle with ``--int8 --tflite``, then measures:

- images/s at batch 1 and batch 32, per engine (Keras both as ``model.predict`` per image,
  which carries per-call overhead, and as a direct ``model(x)`` call);
- p50 / p99 latency of one image, model only, and end to end (PNG on disk ->
  decode -> preprocess -> model), per engine;
- file sizes;
- peak RSS of a ``ccad predict --model BUNDLE FOLDER --out CSV`` process.

    KERAS_HOME=../shared/keras-home python benchmarks/inference.py [--run RUN] [--out benchmarks/results/inference.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _report import emit

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT.parent / "shared" / "data" / "covid-cxr" / "manifest.csv"
THREADS = 2
SINGLE_RUNS = 200
BATCH = 32


def percentile_ms(seconds: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(seconds) * 1000, q))


def time_single(fn, inputs: list) -> dict:
    for x in inputs[:10]:
        fn(x)  # warm-up
    latencies = []
    for i in range(SINGLE_RUNS):
        start = time.perf_counter()
        fn(inputs[i % len(inputs)])
        latencies.append(time.perf_counter() - start)
    return {
        "images_per_s": 1 / float(np.mean(latencies)),
        "p50_ms": percentile_ms(latencies, 50),
        "p99_ms": percentile_ms(latencies, 99),
    }


def time_batch(fn, batch: np.ndarray, repeats: int = 5) -> float:
    fn(batch)
    start = time.perf_counter()
    for _ in range(repeats):
        fn(batch)
    return repeats * len(batch) / (time.perf_counter() - start)


def tflite_runner(path: Path):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=THREADS)
    index = interpreter.get_input_details()[0]["index"]
    shape = [None]

    def run(x):
        if shape[0] != x.shape:
            interpreter.resize_tensor_input(index, x.shape)
            interpreter.allocate_tensors()
            shape[0] = x.shape
        interpreter.set_tensor(index, x)
        interpreter.invoke()
        return [interpreter.get_tensor(o["index"]) for o in interpreter.get_output_details()]

    return run


def peak_rss_of_predict(bundle: Path, folder: Path, out_csv: Path) -> dict:
    """Peak RSS of a fresh ``ccad predict`` process, by GNU time (a forked child's own ru_maxrss would
    start from this big benchmark process's RSS at fork time)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    rss_file = out_csv.with_suffix(".rss")
    start = time.perf_counter()
    subprocess.run(
        [
            "/usr/bin/time",
            "-f",
            "%M",
            "-o",
            str(rss_file),
            sys.executable,
            "-m",
            "ccad",
            "predict",
            "--model",
            str(bundle),
            str(folder),
            "--out",
            str(out_csv),
        ],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    rows = sum(1 for _ in open(out_csv)) - 1
    return {
        "images": rows,
        "wall_s": time.perf_counter() - start,
        "peak_rss_mb": int(rss_file.read_text().split()[-1]) / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a trained run folder (default: train the default recipe on Dataset A)")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    os.environ.setdefault("KERAS_HOME", str(ROOT.parent / "shared" / "keras-home"))
    if not MANIFEST.is_file():
        sys.exit(f"benchmark needs {MANIFEST} (../shared beside the checkout)")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(THREADS)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from ccad.bundles.export import export_bundle
    from ccad.data.datasets import DataSpec, discover
    from ccad.preprocessing.pipeline import load_model_input
    from ccad.training.config import make_config
    from ccad.training.run import train

    work = Path(tempfile.mkdtemp(prefix="ccad-bench-"))
    spec = DataSpec(MANIFEST, ("covid", "normal"), ("paper_dataset_a=1",))
    run = Path(args.run) if args.run else train(spec, work / "run", make_config(), verbose=0).run_dir
    bundle = export_bundle(run, work / "bundle", int8=True, tflite=True)
    files = [s.path for s in discover(MANIFEST, ["covid", "normal"]).samples if s.split == "test"][:100]
    singles = [load_model_input(f, 224)[None] for f in files]
    batch = np.concatenate(singles[:BATCH])

    results = _time_engines(_engines(run, bundle), singles, batch, files)
    sizes = {p.name: p.stat().st_size for p in sorted(bundle.iterdir())}
    folder = work / "images"
    folder.mkdir()
    for i in range(500):  # a folder of 500 PNGs for the memory of a predict process
        os.symlink(files[i % len(files)], folder / f"{i:04d}.png")
    report = {
        "benchmark": "inference",
        "threads": THREADS,
        "cpu_count": os.cpu_count(),
        "images": "covid-cxr test split PNGs (320 px, decoded and resized to 224)",
        "engines": results,
        "onnx_int8_vs_float_batch1": results["onnx_int8"]["batch1"]["images_per_s"]
        / results["onnx_float"]["batch1"]["images_per_s"],
        "file_sizes_bytes": sizes,
        "ccad_predict_process": peak_rss_of_predict(bundle, folder, work / "pred.csv"),
    }
    emit(report, args.out)


def _engines(run: Path, bundle: Path) -> dict:
    """Each way to run the classifier on a (N, 224, 224, 3) batch."""
    from ccad.scoring.predictor import KerasPredictor, OnnxPredictor

    keras_model = KerasPredictor.load(run).model
    float_p, int8_p = OnnxPredictor.load(bundle, threads=THREADS), OnnxPredictor.load(bundle, "int8", threads=THREADS)
    return {
        "keras_predict": lambda x: keras_model.predict(x, verbose=0),
        "keras_call": lambda x: keras_model(x, training=False),  # direct call: no per-call predict() overhead
        "onnx_float": float_p.predict,
        "onnx_int8": int8_p.predict,
        "tflite_float": tflite_runner(bundle / "model.tflite"),
        "tflite_int8": tflite_runner(bundle / "model.int8.tflite"),
    }


def _time_engines(engines: dict, singles, batch, files) -> dict:
    """Batch 1, batch 32 and PNG-to-probability times of each engine, and batch 1's speed-up over Keras."""
    from ccad.preprocessing.pipeline import load_model_input

    results = {}
    for name, fn in engines.items():
        model_only = time_single(fn, singles)
        end_to_end = time_single(lambda f, fn=fn: fn(load_model_input(f, 224)[None]), files)
        results[name] = {
            "batch1": model_only,
            "batch32_images_per_s": time_batch(fn, batch),
            "end_to_end_png": end_to_end,
        }
        print(name, json.dumps(results[name]), file=sys.stderr, flush=True)
    for r in results.values():
        for keras_way in ("keras_predict", "keras_call"):
            r[f"batch1_speedup_vs_{keras_way}"] = (
                r["batch1"]["images_per_s"] / results[keras_way]["batch1"]["images_per_s"]
            )
    return results


if __name__ == "__main__":
    main()
