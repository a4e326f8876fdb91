"""Shared fixtures: small synthetic data sets, and ../shared when it is there."""

import os
import threading
from pathlib import Path

import pytest
import tqdm

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if (SHARED / "keras-home").is_dir():
    os.environ.setdefault("KERAS_HOME", str(SHARED / "keras-home"))

# tqdm's default lock is a multiprocessing lock, shared by every process forked after it exists: a forked test
# process killed while holding it (a mutation run ends each mutant's process by a signal) hangs every later one
# that draws a progress bar. The tests' processes each keep a lock of their own.
tqdm.tqdm.set_lock(threading.RLock())

needs_shared = pytest.mark.skipif(
    not (SHARED / "data" / "covid-cxr" / "manifest.csv").is_file(),
    reason="../shared (real chest X-rays and ImageNet weights) is not beside the checkout",
)


@pytest.fixture(scope="session")
def synth_folders(tmp_path_factory):
    """covid/normal class folders, 24 images a class, 128 px."""
    from ccad.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("synth") / "data", n_per_class=24, size=128, seed=1)


@pytest.fixture(scope="session")
def synth_paper_layout(tmp_path_factory):
    from ccad.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("synth-paper") / "data", n_per_class=30, size=96, seed=2, layout="paper")


@pytest.fixture(scope="session")
def shared_dir():
    return SHARED


def small_training(data, out, *extra: str, preset: str = "one-view-lungs") -> list[str]:
    """The ``ccad train`` arguments of the suite's small runs on the synthetic folders ``data``: 64 px, 3 epochs,
    ImageNet weights when ../shared has them, one view of the lungs (half the backbone passes of the default
    two-view recipe, which ``tests/training/test_two_views.py`` trains); ``extra`` arguments added."""
    from ccad.models.classifier import imagenet_weights_available

    weights = "imagenet" if imagenet_weights_available(224) else "none"
    return [
        "train",
        "--data",
        str(data / "manifest.csv"),
        "--out",
        str(out),
        "--weights",
        weights,
        "--input-size",
        "64",
        "--epochs",
        "3",
        "--feature-views",
        "1",
        "--preset",
        preset,
        *extra,
    ]


@pytest.fixture(scope="session")
def run_and_bundle(synth_folders, tmp_path_factory):
    """The synthetic run and its exported bundle. With ``CCAD_TEST_BUNDLE_CACHE=DIR`` (the mutation run,
    ``benchmarks/mutation.py``: one pytest session a mutant, no mutant in training or export), made once in DIR
    and reused by every later session."""
    from ccad.cli import main
    from ccad.data.synthetic import generate

    cache = os.environ.get("CCAD_TEST_BUNDLE_CACHE")
    if cache and (Path(cache) / "bundle" / "ccad-model.json").is_file():
        return Path(cache) / "run", Path(cache) / "bundle"
    root = Path(cache) if cache else tmp_path_factory.mktemp("bundle")
    calibration = generate(root / "calibration", n_per_class=55, size=64, seed=7)
    assert main(small_training(synth_folders, root / "run")) == 0
    assert (
        main(
            [
                "export",
                "--model",
                str(root / "run"),
                "--out",
                str(root / "bundle"),
                "--int8",
                "--calibration-data",
                str(calibration),
            ]
        )
        == 0
    )
    return root / "run", root / "bundle"


@pytest.fixture(scope="module")
def bundle(run_and_bundle):
    """The synthetic run's exported bundle."""
    return run_and_bundle[1]


def run_ccad(args: list[str]) -> None:
    """``ccad ARGS`` in a child process, its output shown when it fails: a heavy run (training on real data,
    an export) whose memory is then given back, instead of staying in the test worker for the files after."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "ccad", *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]


def write_csv(path, rows):
    """Write a list of dicts as a CSV (manifests made by tests); returns the path."""
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _libc():
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


# TensorFlow's many threads each get a glibc malloc arena (up to 8 per core), and memory freed in one stays
# mapped there. Two arenas, set before TensorFlow starts its threads, keep freed memory where it can be reused.
if _libc() is not None and hasattr(_libc(), "mallopt"):
    _libc().mallopt(-8, 2)  # M_ARENA_MAX


@pytest.fixture(autouse=True, scope="module")
def _release_memory_after_each_module():
    """Keras keeps every model ever built in its global graph state, and Ray its workers: release both after
    each test module, and hand freed memory back to the system, so the suite's peak memory is that of its
    largest module, not the sum of all."""
    yield
    import gc
    import sys

    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()
    if "keras" in sys.modules:
        sys.modules["keras"].backend.clear_session(free_memory=True)
    gc.collect()
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def _memory_kib():
    """This process's resident memory now and at its peak (VmRSS, VmHWM), in KiB; (0, 0) where /proc is not."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])
    except (OSError, KeyError, ValueError):
        return 0, 0


def pytest_runtest_teardown(item, nextitem):
    """With CCAD_TEST_RSS=PREFIX, each test process appends a line per test to PREFIX.WORKER.tsv: the test, the
    memory resident after it and the process's peak so far (KiB), so a run shows which test set the peak."""
    prefix = os.environ.get("CCAD_TEST_RSS")
    if not prefix:
        return
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    rss, peak = _memory_kib()
    with open(f"{prefix}.{worker}.tsv", "a") as f:
        f.write(f"{item.nodeid}\t{rss}\t{peak}\n")
