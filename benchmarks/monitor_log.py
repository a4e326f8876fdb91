"""``ccad monitor`` on a large result log: its peak memory and time, for this checkout and, with ``--src``,
another version's code (the baseline, in the same run), on logs of the sizes given.

    python benchmarks/monitor_log.py --sizes-mb 250 1000 [--src OTHER/src --baseline-sizes-mb 250] [--out F]

The log is written as ``serve`` and ``dicom listen`` write theirs (one JSON line an image), over 30 days.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from _report import emit

ROOT = Path(__file__).resolve().parents[1]


def write_log(path: Path, megabytes: int) -> int:
    """A result log of about ``megabytes`` MB; returns its line count."""
    rng = np.random.default_rng(0)
    start = datetime(2026, 11, 1, tzinfo=timezone.utc)
    block = []
    for i in range(20_000):
        moment = start + timedelta(seconds=int(i * 30 * 86400 / 20_000))
        score = float(rng.beta(2, 5))
        block.append(
            json.dumps(
                {
                    "time": moment.isoformat(timespec="milliseconds"),
                    "adapter": "dicom",
                    "image": f"{i:016x}",
                    "decision": "covid" if score > 0.5 else "normal",
                    "positive": score > 0.5,
                    "score": round(score, 6),
                    "in_distribution": bool(rng.random() > 0.05),
                    "ood_distance": round(float(rng.normal(12, 1)), 3),
                    "lung_qc": [],
                    "drift": "ok",
                },
                separators=(",", ":"),
            )
        )
    text = ("\n".join(block) + "\n").encode()
    repeats = max(1, megabytes * 2**20 // len(text))
    with open(path, "wb") as f:
        for _ in range(repeats):
            f.write(text)
    return repeats * len(block)


def monitor(src: Path, log: Path, out: Path) -> dict:
    """``ccad monitor`` as a child process: seconds, peak RSS (wait4), exit code."""
    env = dict(os.environ, PYTHONPATH=str(src))
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ccad", "monitor", str(log), "--out", str(out), "--period", "week"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    return {
        "seconds": round(time.monotonic() - start, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "exit": os.waitstatus_to_exitcode(status),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[250, 1000])
    parser.add_argument("--src", help="another version's src/ (the baseline)")
    parser.add_argument("--baseline-sizes-mb", type=int, nargs="*", default=[250])
    parser.add_argument("--out")
    args = parser.parse_args()
    report = {"this": {}, "baseline": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for megabytes in sorted(set(args.sizes_mb) | set(args.baseline_sizes_mb if args.src else [])):
            log = Path(tmp) / f"log-{megabytes}.jsonl"
            lines = write_log(log, megabytes)
            size = f"{log.stat().st_size / 2**20:.0f} MB ({lines:,} lines)"
            if megabytes in args.sizes_mb:
                report["this"][size] = monitor(ROOT / "src", log, Path(tmp) / "out")
            if args.src and megabytes in args.baseline_sizes_mb:
                report["baseline"][size] = monitor(Path(args.src), log, Path(tmp) / "out-baseline")
            log.unlink()
    emit(report, args.out)


if __name__ == "__main__":
    main()
