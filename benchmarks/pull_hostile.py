"""``ccad dicom pull`` against a misbehaving archive (support/hostile_archive.py, on 127.0.0.1): each run's peak
memory against a pull from an empty archive (its idle), how long it ran against its ``--timeout``, and how it
ended; for this checkout and, with ``--src``, another version's code (the baseline, in the same run).

    python benchmarks/pull_hostile.py [--src OTHER/src] [--timeout 60] [--out results.json]

A run still going at twice its ``--timeout`` is killed, and says so.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import emit, free_port

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "support"))
from hostile_archive import Archive, servers  # noqa: E402

CASES = {
    "empty": "no instance (the idle baseline)",
    "big": "a 300 MB QIDO-RS answer (valid JSON)",
    "endless": "endless paging: 100 new instances on every page",
    "dripwado": "a WADO-RS answer dripping a byte every 0.2 s",
    "away": "a redirect to another host",
}


def run(src: Path, base: str, route: str, timeout_s: float, spool: Path) -> dict:
    """One pull as a child process; its peak RSS from wait4's rusage."""
    env = dict(os.environ, PYTHONPATH=str(src))
    command = [
        sys.executable, "-m", "ccad", "dicom", "pull", "--from", f"{base}/{route}", "--since", "2026-01-01",
        "--send-to", f"NOBODY@127.0.0.1:{free_port()}", "--spool", str(spool), "--timeout", str(timeout_s),
    ]  # fmt: skip
    start = time.monotonic()
    log = spool.with_suffix(".log")
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        killed = False
        while True:  # wait4, not poll: the child's rusage (its peak RSS) comes with its exit status
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - start > 2 * timeout_s:
                proc.kill()
                killed = True
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - start
    output = log.read_text(errors="replace").strip().splitlines()
    lines = [line for line in output if "Traceback" not in line]
    return {
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "ended": "killed at twice its --timeout" if killed else f"exit {proc.returncode}",
        "log_lines": len(output),
        "traceback": any("Traceback" in line for line in output),
        "last_line": lines[-1][:300] if lines else "",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", default=str(ROOT / "src"))
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--out")
    args = parser.parse_args()
    Archive.big_mb = 300
    report = {"src": args.src, "timeout_s": args.timeout, "cases": {}}
    with servers() as (base, _), tempfile.TemporaryDirectory() as tmp:
        for route, what in CASES.items():
            result = run(Path(args.src), base, route, args.timeout, Path(tmp) / route)
            report["cases"][route] = {"what": what, **result}
    idle = report["cases"]["empty"]["peak_rss_mb"]
    for case in report["cases"].values():
        case["peak_over_idle_mb"] = round(case["peak_rss_mb"] - idle, 1)
    emit(report, args.out)


if __name__ == "__main__":
    main()
