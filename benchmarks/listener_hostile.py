"""Hostile senders against ``ccad dicom listen``: what each costs the listener in memory, and what it answers.

The listener runs as a subprocess (a dead destination: results wait in its spool); its peak resident memory
(VmHWM) is read before and after each case, and its current RSS once it is idle again:

- ``deflate_bomb``: a deflated data set of ~1.2 MB that inflates to 1.2 GiB (a 64 x 64 header);
- ``oversized``: an uncompressed data set of 274 MiB (over ``--max-dataset-mb`` 256);
- ``valid``: a 512 x 512 DX, which must still be answered 0x0000 afterwards.

The figures before the hardening (issue 22, measured on the listener of 2026-11-30): the bomb answered 0x0000
and took peak memory from 303 to 5,108 MB; the 274 MiB data set answered 0x0000, peak 119 -> 1,224 MB.

    python benchmarks/listener_hostile.py --model BUNDLE [--out results.json]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit, free_port, vm_hwm_mb  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def dataset(path: Path, rows: int, cols: int, pixels: bytes, syntax) -> Path:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), "DX"
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = rows, cols, 16, 12, 11, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = pixels
    ds.save_as(path, enforce_file_format=True)
    return path


def c_store(path: Path, port: int) -> int:
    import pydicom
    from pynetdicom import AE, _config

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    ae = AE(ae_title="HOSTILE")
    ae.add_requested_context(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 600
    assoc = ae.associate("127.0.0.1", port, ae_title="CCAD")
    if not assoc.is_established:
        return -1
    _config.STORE_SEND_CHUNKED_DATASET = True  # the sender streams the file: it never inflates the bomb
    try:
        status = assoc.send_c_store(str(path))
    finally:
        assoc.release()
    return int(status.Status) if status else -1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--out")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ccad-hostile-"))
    files = _files(work)
    port = free_port()
    listen = [
        "dicom",
        "listen",
        "--model",
        args.model,
        "--port",
        str(port),
        "--send-to",
        f"NOBODY@127.0.0.1:{free_port()}",
    ]
    listener = subprocess.Popen(
        [sys.executable, "-m", "ccad", *listen, "--spool", str(work / "spool")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(240):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.25)
    time.sleep(2)
    report = {"benchmark": "listener_hostile", "idle_rss_mb": round(rss_mb(listener.pid), 1), "cases": {}}
    try:
        for name, path in files.items():
            report["cases"][name] = _case(listener.pid, path, port)
    finally:
        listener.terminate()
        listener.wait(30)
    emit(report, args.out)


def _files(work: Path) -> dict[str, Path]:
    """A deflate bomb (1.2 GB of zeros inflated), an oversized image (143 megapixels) and a valid one."""
    import numpy as np
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

    valid = np.random.default_rng(0).integers(0, 4096, (512, 512)).astype(np.uint16).tobytes()
    return {
        "deflate_bomb": dataset(work / "bomb.dcm", 64, 64, bytes(1200 * 2**20), DeflatedExplicitVRLittleEndian),
        "oversized": dataset(work / "big.dcm", 11_000, 13_060, bytes(2 * 11_000 * 13_060), ExplicitVRLittleEndian),
        "valid": dataset(work / "ok.dcm", 512, 512, valid, ExplicitVRLittleEndian),
    }


def _case(pid: int, path: Path, port: int) -> dict:
    """One C-STORE: its status, how long the answer took, the listener's memory before and after."""
    before = vm_hwm_mb(pid)
    start = time.perf_counter()
    status = c_store(path, port)
    elapsed = time.perf_counter() - start
    time.sleep(3)
    return {
        "file_mb": round(path.stat().st_size / 2**20, 2),
        "status": f"0x{status:04X}",
        "answer_s": round(elapsed, 2),
        "peak_before_mb": round(before, 1),
        "peak_after_mb": round(vm_hwm_mb(pid), 1),
        "rss_after_mb": round(rss_mb(pid), 1),
    }


if __name__ == "__main__":
    main()
