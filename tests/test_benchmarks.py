"""The benchmark scripts run: each answers --help, and one completes a bundle on the suite's own model."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_each_benchmark_answers_help(script):
    done = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT / "benchmarks"
    )
    assert done.returncode == 0 and done.stdout.startswith("usage:"), done.stderr[-2000:]


def test_drift_reference_completes_a_bundle_that_still_loads(run_and_bundle, tmp_path):
    from ccad.models.ood import load_guard
    from ccad.scoring.predictor import OnnxPredictor

    run, bundle = run_and_bundle
    copy = shutil.copytree(bundle, tmp_path / "bundle")
    (copy / "rehearsal.npz").unlink(missing_ok=True)  # as in a bundle exported before ccad stored it
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "drift_reference.py"),
            "--model",
            str(copy),
            "--run",
            str(run),
            "--rehearsal",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    guard = load_guard(copy / "ood.npz")
    assert len(guard.reference_scores) == len(guard.reference_distances) > 0
    assert (copy / "rehearsal.npz").is_file() and OnnxPredictor.load(copy).card.sha256["rehearsal.npz"]
