"""The DICOM listener with a real Orthanc: time from the C-STORE of an image to Orthanc to its SR arriving
back in Orthanc (routed by Orthanc's Lua script, scored, sent back; ``--per-image``), and instances per second
through the listener with 4 concurrent senders; float and INT8. The baseline, in the same run: the same bundle
scoring the same DICOM files in-process (``Screener.screen``, as ``ccad predict`` does, heatmaps on,
since the listener draws one per image). And, in the default mode (a result per study, ``--study-window 1``):
the time from the C-STORE of a study's last image (of 3) to Orthanc to the study's SR in Orthanc.

    python benchmarks/pacs.py --model BUNDLE [--images 30] [--out benchmarks/results/pacs.json]
        [--screenshots docs/pacs-figures]

Without ``--model`` a small bundle is trained on synthetic X-rays first (needs the train extra). Orthanc is
Debian's ``orthanc``; screenshots need Playwright and chromium.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from ccad.screening import Screener

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "support"))

from _report import emit, synthetic_bundle  # noqa: E402
from dicom_files import make_xray_dicom  # noqa: E402
from orthanc import ORTHANC, Orthanc, c_store, free_port, wait_for  # noqa: E402


def make_bundle(root: Path) -> Path:
    return synthetic_bundle(
        root, 60, 256, ("--epochs", "2", "--feature-views", "1"), ("--int8", "--calibration-data", str(root / "data"))
    )


def xrays(root: Path, n: int, study: str | None = None) -> list[Path]:
    from ccad.data.synthetic import render_patient

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    return [
        make_xray_dicom(root / f"x{i}.dcm", render_patient(rng, ("covid", "normal")[i % 2], 1024), study_uid=study)
        for i in range(n)
    ]


def percentile(values, q):
    return round(float(np.percentile(values, q)) * 1000, 1)


def run_variant(bundle: Path, variant: str, files: list[Path], work: Path, senders: int) -> dict:
    listener_port = free_port()
    orthanc = Orthanc(work / f"orthanc-{variant}", listener_port).start()
    command = [
        sys.executable,
        "-m",
        "ccad",
        "dicom",
        "listen",
        "--model",
        str(bundle),
        "--port",
        str(listener_port),
        "--send-to",
        f"ORTHANC@127.0.0.1:{orthanc.dicom_port}",
        "--spool",
        str(work / f"spool-{variant}"),
        "--workers",
        "2",
        "--queue-size",
        "64",
        "--per-image",
    ] + (["--int8"] if variant == "int8" else [])
    log = open(work / f"listener-{variant}.log", "wb")
    listener = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: socket.socket().connect_ex(("127.0.0.1", listener_port)) == 0, 60, "listener")
        warm = files[0]
        c_store(warm, orthanc.dicom_port, "ORTHANC")
        wait_for(lambda: len(orthanc.get("/series")) >= 3, 60, "the warm-up result")
        latencies = _latencies(orthanc, files[1:])
        return {
            "latency_ms": {"n": len(latencies), "median": percentile(latencies, 50), "p95": percentile(latencies, 95)},
            "throughput": _throughput(orthanc, listener_port, work, variant, len(files) * 2, senders),
        }
    finally:
        listener.terminate()
        listener.wait(30)
        orthanc.stop()


def study_latency(bundle: Path, work: Path, studies: int = 5, window_s: float = 1.0) -> dict:
    """The default mode: ``studies`` studies of 3 images each C-STOREd to Orthanc (routed to the listener) one
    after the other; seconds from the last image's C-STORE to the study's SR in Orthanc."""
    import pydicom

    listener_port = free_port()
    orthanc = Orthanc(work / "orthanc-studies", listener_port).start()
    command = [sys.executable, "-m", "ccad", "dicom", "listen", "--model", str(bundle), "--port", str(listener_port)]
    command += ["--send-to", f"ORTHANC@127.0.0.1:{orthanc.dicom_port}", "--spool", str(work / "spool-studies")]
    log = open(work / "listener-studies.log", "wb")
    listener = subprocess.Popen(command + ["--study-window", str(window_s)], stdout=log, stderr=subprocess.STDOUT)
    times = []
    try:
        wait_for(lambda: socket.socket().connect_ex(("127.0.0.1", listener_port)) == 0, 60, "listener")
        for i in range(studies + 1):  # the first warms the listener up
            study = pydicom.uid.generate_uid()
            files = xrays(work / f"study-{i}", 3, study)
            for path in files:
                assert c_store(path, orthanc.dicom_port, "ORTHANC") == 0
            start = time.perf_counter()
            wait_for(lambda: any(s["MainDicomTags"].get("Modality") == "SR" for s in _series(orthanc, study)), 120,
                     "the study's SR", 0.01)  # fmt: skip
            times.append(time.perf_counter() - start)
    finally:
        listener.terminate()
        listener.wait(30)
        orthanc.stop()
    seconds = times[1:]
    return {"studies": len(seconds), "images_a_study": 3, "window_s": window_s,
            "last_image_to_study_sr_s": {"median": round(float(np.median(seconds)), 2),
                                         "max": round(max(seconds), 2)}}  # fmt: skip


def _series(orthanc, study: str) -> list[dict]:
    """The series Orthanc holds of ``study``, with their main tags."""
    import json
    import urllib.request

    query = {"Level": "Series", "Query": {"StudyInstanceUID": study}, "Expand": True}
    request = urllib.request.Request(
        f"http://127.0.0.1:{orthanc.http_port}/tools/find", method="POST", data=json.dumps(query).encode()
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def _latencies(orthanc, files: list[Path]) -> list[float]:
    """One image at a time: C-STORE to Orthanc (which routes it to the listener) -> the SR stored in Orthanc."""
    import pydicom

    latencies = []
    for path in files:
        uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        before = len(orthanc.get("/instances"))
        start = time.perf_counter()
        assert c_store(path, orthanc.dicom_port, "ORTHANC") == 0
        wait_for(lambda: len(orthanc.get("/instances")) >= before + 3, 60, f"the results of {uid}", 0.005)
        latencies.append(time.perf_counter() - start)
    return latencies


def _throughput(orthanc, listener_port: int, work: Path, variant: str, images: int, senders: int) -> dict:
    """``senders`` threads C-STORE straight to the listener, until Orthanc holds every result."""
    import pydicom

    study = pydicom.uid.generate_uid()
    batch = xrays(work / f"batch-{variant}", images, study)
    before = len(orthanc.get("/instances"))
    start = time.perf_counter()
    statuses = []

    def send(chunk):
        statuses.extend(c_store(p, listener_port, "CCAD") for p in chunk)

    threads = [threading.Thread(target=send, args=(batch[i::senders],)) for i in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_for(lambda: len(orthanc.get("/instances")) >= before + 2 * len(batch), 300, "every result", 0.05)
    elapsed = time.perf_counter() - start
    return {
        "images": len(batch),
        "senders": senders,
        "seconds": round(elapsed, 2),
        "images_per_s": round(len(batch) / elapsed, 2),
        "refused_busy": sum(s == 0xA700 for s in statuses),
    }


def in_process(bundle: Path, variant: str, files: list[Path]) -> dict:
    from ccad.scoring.predictor import OnnxPredictor

    predictor = OnnxPredictor.load(bundle, variant=variant)
    list(Screener(predictor).screen(files[:2], with_heatmaps=True))
    times = []
    for path in files:
        start = time.perf_counter()
        list(Screener(predictor).screen([path], with_heatmaps=True))
        times.append(time.perf_counter() - start)
    return {"median_ms": percentile(times, 50), "images_per_s": round(len(times) / sum(times), 2)}


def screenshots(bundle: Path, work: Path, out: Path) -> list[str]:
    """The study in Orthanc Explorer and the capture's preview, for docs/pacs.md."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    listener_port = free_port()
    orthanc = Orthanc(work / "orthanc-shots", listener_port).start()
    listener = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ccad",
            "dicom",
            "listen",
            "--model",
            str(bundle),
            "--port",
            str(listener_port),
            "--send-to",
            f"ORTHANC@127.0.0.1:{orthanc.dicom_port}",
            "--spool",
            str(work / "spool-shots"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: socket.socket().connect_ex(("127.0.0.1", listener_port)) == 0, 60, "listener")
        path = xrays(work / "shots", 1)[0]
        c_store(path, orthanc.dicom_port, "ORTHANC")
        wait_for(lambda: len(orthanc.get("/instances")) >= 3, 60, "the results")
        study = orthanc.get("/studies")[0]
        capture = next(
            i
            for i in orthanc.get("/instances")
            if orthanc.get(f"/instances/{i}/simplified-tags").get("Modality") == "OT"
        )
        (out / "orthanc-capture.png").write_bytes(orthanc.get(f"/instances/{capture}/preview"))
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1100, "height": 700})
            page.goto(f"http://127.0.0.1:{orthanc.http_port}/app/explorer.html#study?uuid={study}")
            page.wait_for_timeout(1500)
            page.screenshot(path=str(out / "orthanc-study.png"))
            browser.close()
        return ["orthanc-study.png", "orthanc-capture.png"]
    finally:
        listener.terminate()
        listener.wait(30)
        orthanc.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--out")
    parser.add_argument("--screenshots")
    args = parser.parse_args()
    if ORTHANC is None:
        sys.exit("Orthanc is not installed (apt-get install orthanc)")
    work = Path(tempfile.mkdtemp(prefix="ccad-pacs-bench-"))
    bundle = Path(args.model) if args.model else make_bundle(work)
    files = xrays(work / "files", args.images + 1)
    report = {
        "benchmark": "pacs",
        "machine": f"{os.cpu_count()} CPU cores",
        "bundle": str(bundle),
        "image": "synthetic DX, 1024 x 1024, 12-bit, explicit VR little endian",
        "listener": "ccad dicom listen --workers 2 (ONNX Runtime, 2 threads); Orthanc 127.0.0.1, Lua routing",
        "variants": {},
    }
    from ccad.models.card import ModelCard

    for variant in [v for v in ("float", "int8") if v in ModelCard.load(bundle).models]:
        report["variants"][variant] = {
            "in_process_baseline": in_process(bundle, variant, files[1:]),
            **run_variant(bundle, variant, files, work, args.senders),
        }
    report["per_study"] = study_latency(bundle, work)
    if args.screenshots:
        report["screenshots"] = screenshots(bundle, work, Path(args.screenshots))
    emit(report, args.out)


if __name__ == "__main__":
    main()
