"""Shared by the benchmark scripts: print the JSON report (and write it to --out when given), the peak memory of a
process, a free port, and a small bundle trained on synthetic data for the benchmarks that need any model."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from net import free_port  # noqa: E402,F401  (re-exported: shared with the tests, in support/)


def emit(report: dict, out: str | None) -> None:
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        Path(out).write_text(text + "\n")


def vm_hwm_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of a running process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def synthetic_bundle(folder: Path, n_per_class: int = 24, size: int = 128, train_args=(), export_args=()) -> Path:
    """``folder/bundle``: ``ccad synth`` -> ``ccad train`` -> ``ccad export``, each in its own process (so the
    benchmark's own process never imports TensorFlow). ``train_args`` / ``export_args`` are added to each
    command, e.g. ``("--weights", "none", "--epochs", "1")``."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root / "src"))
    ccad = [sys.executable, "-m", "ccad"]
    data, run, bundle = folder / "data", folder / "run", folder / "bundle"
    for command in (
        ["synth", str(data), "--n-per-class", str(n_per_class), "--size", str(size)],
        ["train", "--data", str(data / "manifest.csv"), "--out", str(run), *train_args],
        ["export", "--model", str(run), "--out", str(bundle), *export_args],
    ):
        done = subprocess.run(ccad + command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"ccad {command[0]} failed: {done.stderr.strip()[-500:]}")
    return bundle
