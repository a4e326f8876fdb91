"""``ccad serve`` under load from ``wrk`` (Debian's HTTP benchmark, C, with a Lua script for the multipart
body), server and client pinned to separate cores; against single-process ``ccad predict`` on the same
images, bundle and core, in the same run.

    KERAS_HOME=../shared/keras-home python benchmarks/serve_wrk.py [--bundle B] [--seconds 20]
        [--out benchmarks/results/serve_wrk.json]

Variants of the server (each a fresh process on core 0, ONNX Runtime on 1 thread, 1 decoding thread):

- ``no-batching``: ``--max-batch 1``, one model call per image (as the server was before micro-batching);
- ``micro-batching``: the default, images of concurrent requests gathered for up to 5 ms, 16 at most.

Then, on a fresh default server, an **open-loop** client (httpx on asyncio, core 1; written here, as Debian has
no wrk2): first one request at a time (the single-request latency), then requests sent at fixed times at half
the micro-batching server's saturated rate, whether or not earlier ones have been answered, each request's
latency counted from the time it was due (so a stalled server is not hidden by a client that waits for it).

The baseline, ``predict``: ``Screener.screen`` (what ``ccad predict`` runs) over the same
PNGs, pinned to core 0 with 1 ONNX Runtime thread. wrk runs on core 1 with 16 connections. Only 127.0.0.1
is contacted. Without ``--bundle`` the default recipe is trained on Dataset A first (a minute or two).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from _report import emit, free_port, vm_hwm_mb
from serve_load import make_bundle

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT.parent / "shared" / "data" / "covid-cxr" / "manifest.csv"
LUA = """
local files = { %s }
local bodies, i = {}, 0
local boundary = "ccadbenchboundary"
for n, path in ipairs(files) do
  local f = assert(io.open(path, "rb")); local data = f:read("*all"); f:close()
  bodies[n] = "--" .. boundary .. "\\r\\nContent-Disposition: form-data; name=\\"files\\"; filename=\\"x.png\\"\\r\\n"
    .. "Content-Type: image/png\\r\\n\\r\\n" .. data .. "\\r\\n--" .. boundary .. "--\\r\\n"
end
request = function()
  i = i %% #bodies + 1
  return wrk.format("POST", "/api/v1/predict",
    { ["Content-Type"] = "multipart/form-data; boundary=" .. boundary }, bodies[i])
end
"""


def baseline(bundle: Path, files: list[Path], repeat: int, cores: str, threads: int) -> dict:
    """``ccad predict``'s path, in a child pinned to ``cores`` with ``threads`` ONNX Runtime and decoding threads."""
    code = (
        "import sys, time; from ccad.screening import Screener\n"
        f"s = Screener.load({str(bundle)!r}, threads={threads}); files = sys.argv[1:]\n"
        f"list(s.screen(files[:8], workers={threads}))\n"
        f"t = time.perf_counter(); n = sum(1 for _ in s.screen(files * {repeat}, workers={threads}))\n"
        "print(n / (time.perf_counter() - t))"
    )
    out = subprocess.run(
        ["taskset", "-c", cores, sys.executable, "-c", code, *map(str, files)],
        capture_output=True,
        text=True,
        check=True,
    )
    return {"images_per_s": round(float(out.stdout.strip().splitlines()[-1]), 1)}


def parse_wrk(text: str) -> dict:
    def ms(value: str) -> float:
        number, unit = re.match(r"([\d.]+)(\w+)", value).groups()
        return float(number) * {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]

    latency = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", text, re.M))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return {
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
        "requests": int(re.search(r"(\d+) requests in", text).group(1)),
        "p50_ms": ms(latency["50"]),
        "p99_ms": ms(latency["99"]),
        "errors": (sum(map(int, errors.groups())) if errors else 0) + (int(non2xx.group(1)) if non2xx else 0),
    }


@contextlib.contextmanager
def served(bundle: Path, extra: list[str], server_cores: str, workers: int):
    """A fresh ``ccad serve`` pinned to ``server_cores``; yields its URL."""
    port = free_port()
    serve = ["ccad", "serve", "--model", str(bundle), "--port", str(port), "--workers", str(workers), "--queue", "64"]
    server = subprocess.Popen(
        ["taskset", "-c", server_cores, sys.executable, "-m", *serve, *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port)
        yield f"http://127.0.0.1:{port}", server.pid
    finally:
        server.terminate()
        server.wait(30)


def serve_and_load(
    bundle: Path,
    script: Path,
    extra: list[str],
    seconds: int,
    connections: int,
    server_cores: str,
    client_cores: str,
    workers: int,
) -> dict:
    with served(bundle, extra, server_cores, workers) as (url, pid):
        wrk = ["taskset", "-c", client_cores, "wrk", "-t1"]
        subprocess.run([*wrk, "-c4", "-d3s", "-s", str(script), url], capture_output=True, check=True)  # warm-up
        done = subprocess.run(
            [*wrk, f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "10s", "-s", str(script), url],
            capture_output=True,
            text=True,
            check=True,
        )
        return dict(parse_wrk(done.stdout), server_peak_rss_mb=round(vm_hwm_mb(pid)))


def open_loop(bundle: Path, files: list[Path], rate: float, seconds: int, cores: tuple[str, str], workers: int) -> dict:
    """The single-request latency, then p50 / p99 at ``rate`` requests/s sent at fixed times (open loop)."""
    server_cores, client_cores = cores
    with served(bundle, [], server_cores, workers) as (url, _):
        os.sched_setaffinity(0, {int(c) for c in client_cores.split(",")})
        return asyncio.run(_open_loop(f"{url}/api/v1/predict", files, rate, seconds))


async def _open_loop(url: str, files: list[Path], rate: float, seconds: int) -> dict:
    bodies = [f.read_bytes() for f in files]
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=256)) as client:

        async def post(i: int, due: float) -> float:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            answer = await client.post(url, files={"files": ("x.png", bodies[i % len(bodies)], "image/png")})
            answer.raise_for_status()
            return time.perf_counter() - due

        for i in range(8):  # warm-up
            await post(i, time.perf_counter())
        single = [await post(i, time.perf_counter()) for i in range(64)]
        start = time.perf_counter() + 0.1
        loaded = await asyncio.gather(*(post(i, start + i / rate) for i in range(int(rate * seconds))))
    single_p50 = float(np.percentile(single, 50)) * 1000
    p50, p99 = (float(np.percentile(loaded, q)) * 1000 for q in (50, 99))
    return {
        "single_request_p50_ms": round(single_p50, 1),
        "rate_per_s": round(rate, 1),
        "requests": len(loaded),
        "p50_ms": round(p50, 1),
        "p99_ms": round(p99, 1),
        "p99_vs_single_p50": round(p99 / single_p50, 2),
    }


def _wait_for_port(port: int, tries: int = 200) -> None:
    for _ in range(tries):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--server-cores", default="0", help="taskset list for the server and the baseline")
    parser.add_argument("--client-cores", default="1", help="taskset list for wrk")
    parser.add_argument("--workers", type=int, default=1, help="the server's --workers (and the baseline's threads)")
    parser.add_argument("--out")
    args = parser.parse_args()
    if not MANIFEST.is_file():
        sys.exit(f"benchmark needs {MANIFEST} (../shared beside the checkout)")
    work = Path(tempfile.mkdtemp(prefix="ccad-wrk-"))
    bundle = Path(args.bundle) if args.bundle else make_bundle(work)
    from ccad.data.datasets import discover

    files = [s.path for s in discover(MANIFEST, ["covid", "normal"]).samples if s.split == "test"][:32]
    script = work / "post.lua"
    script.write_text(LUA % ", ".join(f'"{f}"' for f in files))
    report = {
        "benchmark": "serve_wrk",
        "cpu_count": os.cpu_count(),
        "bundle": str(bundle),
        "images": f"{len(files)} covid-cxr test PNGs, one per request, no heatmap",
        "pinning": f"server and baseline on cores {args.server_cores}, wrk on {args.client_cores}; "
        f"{args.workers} ONNX Runtime and decoding thread(s)",
        "connections": args.connections,
        "seconds": args.seconds,
        "baseline_predict": baseline(bundle, files, 4, args.server_cores, args.workers),
    }
    common = (args.seconds, args.connections, args.server_cores, args.client_cores, args.workers)
    report["no_batching"] = serve_and_load(bundle, script, ["--max-batch", "1"], *common)
    report["micro_batching"] = serve_and_load(bundle, script, [], *common)
    base = report["baseline_predict"]["images_per_s"]
    for key in ("no_batching", "micro_batching"):
        report[key]["vs_predict"] = round(report[key]["requests_per_s"] / base, 2)
    rate = report["micro_batching"]["requests_per_s"] / 2
    cores = (args.server_cores, args.client_cores)
    report["open_loop_half_rate"] = open_loop(bundle, files, rate, args.seconds, cores, args.workers)
    emit(report, args.out)


if __name__ == "__main__":
    main()
