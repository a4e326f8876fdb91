"""Hostile senders against ``ccad dicom listen``: what each costs the listener in memory, and what it answers.

The listener runs as a subprocess (a dead destination: results wait in its spool); its peak resident memory
(VmHWM) is read before and after each case, and its current RSS once it is idle again:

- ``deflate_bomb``: a deflated data set of ~1.2 MB that inflates to 1.2 GiB (a 64 x 64 header);
- ``oversized``: an uncompressed data set of 274 MiB (over ``--max-dataset-mb`` 256);
- ``valid``: a 512 x 512 DX, which must still be answered 0x0000 afterwards;
- ``zero_padded``: a deflated 512 x 512 DX followed by 190 MB of zeros after its pixel data (~200 KB sent), then
  a valid DX at once: how long the valid one waits for its results (the zeros held the only worker 128 s);
- ``codestream_bomb``: a JPEG-LS DX whose header says 512 x 512 and whose codestream says 20,000 x 20,000
  (needs dcmtk);
- then the listener is killed with SIGKILL: how many of its child processes are still alive 5 s later.

``--src OTHER/src`` runs another version's listener (the baseline, in the same run).

The figures before the hardening (issue 22, measured on the listener of 2026-11-30): the bomb answered 0x0000
and took peak memory from 303 to 5,108 MB; the 274 MiB data set answered 0x0000, peak 119 -> 1,224 MB.

    python benchmarks/listener_hostile.py --model BUNDLE [--src OTHER/src]
        [--out benchmarks/results/listener_hostile.json]
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
    parser.add_argument("--src", help="the src/ folder of the ccad to measure (default: this checkout's)")
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
    import os

    src = Path(args.src) if args.src else Path(__file__).resolve().parents[1] / "src"
    listener = subprocess.Popen(
        [sys.executable, "-m", "ccad", *listen, "--spool", str(work / "spool")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, PYTHONPATH=str(src)),
    )
    for _ in range(240):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.25)
    time.sleep(2)
    report = {"benchmark": "listener_hostile", "src": str(src), "idle_rss_mb": round(rss_mb(listener.pid), 1)}
    report["cases"] = {}
    try:
        for name, path in files.items():
            if name == "zero_padded":
                report["cases"][name] = _then_valid(listener.pid, path, files["valid"], port, work / "spool")
            else:
                report["cases"][name] = _case(listener.pid, path, port)
        report["processes_left_after_kill9"] = _kill9(listener)
    finally:
        if listener.poll() is None:
            listener.terminate()
            listener.wait(30)
    emit(report, args.out)


def _then_valid(pid: int, padded: Path, valid: Path, port: int, spool: Path) -> dict:
    """The padded data set, then a valid one (a new instance UID) at once: the padded one's answer, and how long
    the valid one waits for its results in the outbox."""
    import pydicom
    from pydicom.uid import generate_uid

    fresh = pydicom.dcmread(valid)
    fresh.SOPInstanceUID = fresh.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    fresh.save_as(valid.with_name("next.dcm"), enforce_file_format=True)
    outbox = spool / "outbox"
    before_files = set(outbox.glob("*.dcm"))
    report = _case(pid, padded, port, settle_s=0)
    start = time.perf_counter()
    report["next_status"] = f"0x{c_store(valid.with_name('next.dcm'), port):04X}"
    while time.perf_counter() - start < 300 and len(set(outbox.glob("*.dcm")) - before_files) < 2:
        time.sleep(0.1)
    report["next_valid_results_after_s"] = round(time.perf_counter() - start, 1)
    return report


def _kill9(listener) -> int:
    """SIGKILL the listener; how many of its children are alive 5 s later."""
    import os
    import signal

    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == listener.pid:
                children.add(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    os.kill(listener.pid, signal.SIGKILL)
    listener.wait(30)
    time.sleep(5)
    alive = 0
    for child in children:
        try:
            alive += Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            continue
    for child in children:  # leave nothing behind whatever the version measured
        try:
            os.kill(child, signal.SIGKILL)
        except OSError:
            pass
    return alive


def _files(work: Path) -> dict[str, Path]:
    """A deflate bomb (1.2 GB of zeros inflated), an oversized image (143 megapixels), a valid one, a valid one
    padded with 190 MB of zeros after its pixels (deflated) and a JPEG-LS codestream bomb (with dcmtk)."""
    import numpy as np
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

    valid = np.random.default_rng(0).integers(0, 4096, (512, 512)).astype(np.uint16).tobytes()
    files = {
        "deflate_bomb": dataset(work / "bomb.dcm", 64, 64, bytes(1200 * 2**20), DeflatedExplicitVRLittleEndian),
        "oversized": dataset(work / "big.dcm", 11_000, 13_060, bytes(2 * 11_000 * 13_060), ExplicitVRLittleEndian),
        "valid": dataset(work / "ok.dcm", 512, 512, valid, ExplicitVRLittleEndian),
        "zero_padded": _padded(dataset(work / "pad.dcm", 512, 512, valid, DeflatedExplicitVRLittleEndian)),
    }
    bomb = _codestream_bomb(files["valid"], work)
    if bomb is not None:
        files["codestream_bomb"] = bomb
    return files


def _padded(path: Path) -> Path:
    """``path`` (deflated) with 190 MB of zeros after its pixel data, inside the deflate stream."""
    import zlib

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from ccad.io.dicomfile import file_meta

    data = path.read_bytes()
    _, start = file_meta(data, "x")
    body = zlib.decompress(data[start:], -zlib.MAX_WBITS) + bytes(190 * 2**20)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    path.write_bytes(data[:start] + deflate.compress(body) + deflate.flush())
    return path


def _codestream_bomb(valid: Path, work: Path) -> Path | None:
    import struct

    import pydicom

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
    from real_dicom import DCMTK, encode

    if DCMTK is None:
        return None
    ds = pydicom.dcmread(encode(valid, work / "jls.dcm", "1.2.840.10008.1.2.4.80"))
    data = bytearray(ds.PixelData)
    struct.pack_into(">HH", data, data.index(b"\xff\xf7") + 5, 20000, 20000)
    ds.PixelData = bytes(data)
    ds.save_as(work / "jls-bomb.dcm")
    return work / "jls-bomb.dcm"


def _case(pid: int, path: Path, port: int, settle_s: float = 3) -> dict:
    """One C-STORE: its status, how long the answer took, the listener's memory before and after."""
    before = vm_hwm_mb(pid)
    start = time.perf_counter()
    status = c_store(path, port)
    elapsed = time.perf_counter() - start
    time.sleep(settle_s)
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
