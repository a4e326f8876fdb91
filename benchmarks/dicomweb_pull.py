"""``ccad dicom pull`` on 100 studies in a real Orthanc (Debian's, with its DICOMweb plugin): killed with
SIGKILL part-way, run again, and counted: every study must end with exactly one SR, one capture and one FHIR
report, none lost and none twice. Peak memory (VmHWM) of each pull process.

    python benchmarks/dicomweb_pull.py [--studies 100] [--kill-after 40] [--model BUNDLE]
        [--out benchmarks/results/dicomweb_pull.json]

Each study holds one synthetic 512 x 512 DX (the generator ccad's tests use, not a medical image), uploaded
through Orthanc's REST API. The results are stored back into the same Orthanc with STOW-RS.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from _report import emit, free_port

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def start_orthanc(root: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    config = root / "orthanc.json"
    config.write_text(
        json.dumps(
            {
                "Name": "bench",
                "StorageDirectory": str(root / "db"),
                "IndexDirectory": str(root / "db"),
                "HttpPort": port,
                "DicomPort": free_port(),
                "RemoteAccessAllowed": False,
                "AuthenticationEnabled": False,
                "Plugins": [PLUGIN],
                "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            }
        )
    )
    process = subprocess.Popen(
        [shutil.which("Orthanc") or "/usr/sbin/Orthanc", str(config)],
        stdout=open(root / "orthanc.log", "wb"),
        stderr=subprocess.STDOUT,
    )
    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/system", timeout=2).read()
            return process, port
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("Orthanc did not start")


def xray_bytes(seed: int) -> bytes:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from ccad.data.synthetic import render_patient

    pixels = np.round(render_patient(np.random.default_rng(seed), "covid", 512) * 4095).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x", {}, file_meta=meta, preamble=b"\0" * 128)
    for key, value in dict(
        SOPClassUID=meta.MediaStorageSOPClassUID,
        SOPInstanceUID=meta.MediaStorageSOPInstanceUID,
        StudyInstanceUID=generate_uid(),
        SeriesInstanceUID=generate_uid(),
        Modality="DX",
        PatientID=f"BENCH{seed}",
        StudyDate="20261201",
        ViewPosition="PA",
        BodyPartExamined="CHEST",
        PresentationIntentType="FOR PRESENTATION",
        Rows=512,
        Columns=512,
        BitsAllocated=16,
        BitsStored=12,
        HighBit=11,
        PixelRepresentation=0,
        SamplesPerPixel=1,
        PhotometricInterpretation="MONOCHROME2",
        PixelData=pixels.tobytes(),
    ).items():
        setattr(ds, key, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def peak_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def run_pull(args, url: str, work: Path, kill_after: int | None) -> dict:
    command = [
        sys.executable,
        "-m",
        "ccad",
        "dicom",
        "pull",
        "--from",
        url,
        "--since",
        "2026-12-01",
        "--send-to",
        f"dicomweb+{url}",
        "--spool",
        str(work / "spool"),
        "--fhir",
        str(work / "fhir"),
        "--timeout",
        "1200",
    ] + (["--model", args.model] if args.model else [])
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=open(work / "pull.log", "ab"), text=True)
    peak, killed = 0.0, False
    done = work / "spool" / "pulled.txt"
    while process.poll() is None:
        peak = max(peak, peak_mb(process.pid) if not np.isnan(peak_mb(process.pid)) else 0)
        if kill_after is not None and done.exists() and len(done.read_text().split()) >= kill_after:
            process.send_signal(signal.SIGKILL)
            killed = True
        time.sleep(0.05)
    return {
        "killed": killed,
        "seconds": round(time.perf_counter() - start, 1),
        "peak_rss_mb": round(peak, 1),
        "recorded": len(done.read_text().split()) if done.exists() else 0,
        "rc": process.returncode,
        "printed": (process.stdout.read() or "").strip(),
    }


def count(port: int) -> dict:
    def find(modality):
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/tools/find",
            method="POST",
            data=json.dumps({"Level": "Instance", "Query": {"Modality": modality}}).encode(),
        )
        ids = json.loads(urllib.request.urlopen(request, timeout=60).read())
        return [
            json.loads(
                urllib.request.urlopen(f"http://127.0.0.1:{port}/instances/{i}/simplified-tags", timeout=60).read()
            )
            for i in ids
        ]

    out = {}
    for modality in ("SR", "OT"):
        instances = find(modality)
        per_study: dict[str, int] = {}
        for i in instances:
            per_study[i["StudyInstanceUID"]] = per_study.get(i["StudyInstanceUID"], 0) + 1
        out[modality] = {
            "instances": len(instances),
            "studies": len(per_study),
            "studies_with_more_than_one": sum(v > 1 for v in per_study.values()),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=100)
    parser.add_argument("--kill-after", type=int, default=40)
    parser.add_argument("--model")
    parser.add_argument("--out")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        orthanc, port = start_orthanc(work)
        try:
            url = f"http://127.0.0.1:{port}/dicom-web"
            for seed in range(args.studies):
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/instances", method="POST", data=xray_bytes(seed)
                )
                urllib.request.urlopen(request, timeout=60).read()
            first = run_pull(args, url, work, args.kill_after)
            second = run_pull(args, url, work, None)
            report = {
                "studies": args.studies,
                "first_run": first,
                "second_run": second,
                "orthanc": count(port),
                "fhir_reports": len(list((work / "fhir").glob("*.json"))),
                "cores": os.cpu_count(),
            }
        finally:
            orthanc.terminate()
            orthanc.wait(30)
    emit(report, args.out)


if __name__ == "__main__":
    main()
