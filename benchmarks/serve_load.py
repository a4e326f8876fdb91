"""Bounded load on loopback against ``ccad serve``: throughput, latency, errors, server peak memory.

Starts ``python -m ccad serve`` on 127.0.0.1 (a free port), sends ``--requests``
POST /api/v1/predict requests (one chest X-ray PNG each) from ``--clients``
concurrent clients, once without and once with heatmaps, then stops the server.
Only 127.0.0.1 is ever contacted; the loops are bounded in count and time.

    KERAS_HOME=../shared/keras-home python benchmarks/serve_load.py [--bundle B]
        [--out benchmarks/results/serve_load.json]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from _report import emit, free_port, vm_hwm_mb

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT.parent / "shared" / "data" / "covid-cxr" / "manifest.csv"
DEADLINE_S = 300


def make_bundle(work: Path) -> Path:
    from ccad.bundles.export import export_bundle
    from ccad.data.datasets import DataSpec
    from ccad.training.config import make_config
    from ccad.training.run import train

    spec = DataSpec(MANIFEST, classes=("covid", "normal"), where=("paper_dataset_a=1",))
    run = train(spec, work / "run", make_config(), verbose=0).run_dir
    return export_bundle(run, work / "bundle")


def load(url: str, images: list[bytes], requests: int, clients: int, heatmap: bool) -> dict:
    import httpx

    def one(i: int) -> tuple[int, float]:
        client = clients_by_thread.setdefault(threading_id(), httpx.Client(timeout=60))
        start = time.perf_counter()
        r = client.post(
            f"{url}/api/v1/predict",
            files={"files": (f"{i}.png", images[i % len(images)], "image/png")},
            data={"heatmap": str(heatmap).lower()},
        )
        return r.status_code, time.perf_counter() - start

    import threading

    threading_id = threading.get_ident
    clients_by_thread: dict = {}
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - start
    for c in clients_by_thread.values():
        c.close()
    codes = [c for c, _ in results]
    latencies = np.array([t for _, t in results]) * 1000
    return {
        "requests": requests,
        "clients": clients,
        "heatmap": heatmap,
        "wall_s": wall,
        "requests_per_s": requests / wall,
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "errors": sum(c != 200 for c in codes),
        "status_counts": {str(k): codes.count(k) for k in sorted(set(codes))},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", help="model bundle (default: train and export the default recipe)")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--out")
    args = parser.parse_args()
    os.environ.setdefault("KERAS_HOME", str(ROOT.parent / "shared" / "keras-home"))
    if not MANIFEST.is_file():
        sys.exit(f"benchmark needs {MANIFEST} (../shared beside the checkout)")
    work = Path(tempfile.mkdtemp(prefix="ccad-serve-bench-"))
    bundle = Path(args.bundle) if args.bundle else make_bundle(work)
    from ccad.data.datasets import discover

    files = [s.path for s in discover(MANIFEST, ["covid", "normal"]).samples if s.split == "test"][:64]
    images = [f.read_bytes() for f in files]
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "ccad", "serve", "--model", str(bundle), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        for _ in range(100):
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        idle = vm_hwm_mb(server.pid)
        runs = [load(url, images, args.requests, args.clients, heatmap) for heatmap in (False, True)]
        report = {
            "benchmark": "serve_load",
            "cpu_count": os.cpu_count(),
            "server": "ccad serve (2 workers, float)",
            "image": "covid-cxr test PNGs (320 px, ~100 kB)",
            "runs": runs,
            "server_peak_rss_mb": vm_hwm_mb(server.pid),
            "server_rss_after_start_mb": idle,
        }
    finally:
        server.terminate()
        server.wait(30)
    emit(report, args.out)


if __name__ == "__main__":
    main()
