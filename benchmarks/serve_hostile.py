"""Peak memory of ``ccad serve`` under the worst inputs of the hardening issue, for this checkout and another.

    python benchmarks/serve_hostile.py                       # this checkout
    python benchmarks/serve_hostile.py --src /tmp/old/src    # the same cases against another version's code

Each case runs on a fresh server (2 workers, API key set) on 127.0.0.1; the server's peak resident memory
(VmHWM from /proc) is read after the case. A small bundle is trained once on synthetic data (random
backbone: the network's weights do not change its memory). Prints JSON; ``--save benchmarks/results/serve_hostile.json
--label after`` adds it to the results file (the later cases, slow clients and codestream bombs, are in
benchmarks/results/hostile_peers.json).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np
from _report import free_port, synthetic_bundle

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-key"


def make_bundle(folder: Path) -> Path:
    return synthetic_bundle(
        folder, 24, 128, ("--weights", "none", "--input-size", "96", "--epochs", "1", "--feature-views", "0")
    )


class Server:
    def __init__(self, src: Path, bundle: Path):
        self.port = free_port()
        env = dict(os.environ, PYTHONPATH=str(src), TF_CPP_MIN_LOG_LEVEL="3")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ccad", "serve", "--model", str(bundle), "--port", str(self.port), "--api-key", KEY],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    if s.recv(100).startswith(b"HTTP/1.1 200"):
                        return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("server did not start")

    def peak_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
        return float("nan")

    def close(self):
        self.proc.terminate()
        self.proc.wait(10)


def multipart(files: list[tuple[str, bytes, str]]) -> tuple[bytes, str]:
    boundary = "ccadbench"
    parts = []
    for name, data, ctype in files:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            f"Content-Type: {ctype}\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post(port: int, body: bytes, ctype: str, key: str | None = KEY, timeout: float = 120) -> int:
    headers = f"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
    headers += (f"X-API-Key: {key}\r\n" if key else "") + "Connection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(headers.encode())
        try:
            s.sendall(body)
        except OSError:
            pass
        return _status(s)


def _status(s) -> int:
    try:
        head = s.recv(64)
        return int(head.split()[1]) if head.startswith(b"HTTP/") else -1
    except OSError:
        return -1


def chunked_without_key(port: int, megabytes: int) -> int:
    """A chunked upload with no key and no Content-Length: one multipart file part of ``megabytes`` MB,
    streamed in 1 MB chunks."""
    headers = (
        "POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )

    def chunk(data: bytes) -> bytes:
        return b"%x\r\n" % len(data) + data + b"\r\n"

    part = b'--b\r\nContent-Disposition: form-data; name="files"; filename="x.png"\r\nContent-Type: image/png\r\n\r\n'
    zeros = chunk(b"\0" * 2**20)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(headers.encode())
        try:
            s.sendall(chunk(part))
            for _ in range(megabytes):
                s.sendall(zeros)
            s.sendall(chunk(b"\r\n--b--\r\n") + b"0\r\n\r\n")
        except OSError:
            pass  # the server answered and closed before the end
        return _status(s)


def deflate_bomb(inflated_mb: int) -> bytes:
    """A DICOM whose data set is deflated: 64 x 64 in its header, ``inflated_mb`` MB of zero pixels."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import DeflatedExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds = FileDataset("bomb.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows = ds.Columns = 64
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = bytes(inflated_mb * 2**20)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def big_png(side: int = 7000) -> bytes:
    """A ``side`` x ``side`` gray PNG (a repeating ramp) that compresses to a few tens of kB (49 MP at 7000)."""
    row = b"\0" + (bytes(range(256)) * (side // 256 + 1))[:side]
    raw = row * side

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def normal_png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (512, 512), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def slow_clients_and_a_legitimate_one(png: bytes, slow_count: int = 34, seconds: float = 20.0):
    """``slow_count`` clients drip their bodies at a byte a second (reconnecting when cut) while a legitimate
    client posts one PNG after another for ``seconds``: its statuses and latencies, and the slow ones' answers."""

    def action(port):
        stop, slow_answers = threading.Event(), []

        def drip():
            while not stop.is_set():
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                        s.sendall(
                            f"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\n"
                            "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n".encode()
                        )
                        while not stop.is_set():
                            s.sendall(b"x")
                            s.settimeout(1.0)
                            try:
                                head = s.recv(64)
                            except socket.timeout:
                                continue
                            slow_answers.append(int(head.split()[1]) if head.startswith(b"HTTP/") else -1)
                            break
                except OSError:
                    time.sleep(0.2)

        threads = [threading.Thread(target=drip, daemon=True) for _ in range(slow_count)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        body, ctype = multipart([("x.png", png, "image/png")])
        statuses, latencies, end = [], [], time.perf_counter() + seconds
        while time.perf_counter() < end:
            start = time.perf_counter()
            statuses.append(post(port, body, ctype, timeout=60))
            latencies.append(time.perf_counter() - start)
        stop.set()
        for t in threads:
            t.join(5)
        latencies.sort()
        return {
            "legitimate": {str(k): statuses.count(k) for k in sorted(set(statuses))},
            "legitimate_p50_s": round(latencies[len(latencies) // 2], 3),
            "legitimate_p99_s": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 3),
            "slow_answers": {str(k): slow_answers.count(k) for k in sorted(set(slow_answers))},
        }

    return action


def codestream_bomb() -> bytes | None:
    """A JPEG-LS DX whose header says 512 x 512 and whose codestream says 20,000 x 20,000 (needs dcmtk)."""
    import pydicom

    sys.path.insert(0, str(ROOT / "support"))
    from dicom_files import make_xray_dicom
    from real_dicom import DCMTK, encode

    if DCMTK is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        plain = make_xray_dicom(Path(tmp) / "x.dcm", np.random.default_rng(0).random((512, 512)))
        ds = pydicom.dcmread(encode(plain, Path(tmp) / "jls.dcm", "1.2.840.10008.1.2.4.80"))
        data = bytearray(ds.PixelData)
        struct.pack_into(">HH", data, data.index(b"\xff\xf7") + 5, 20000, 20000)
        ds.PixelData = bytes(data)
        buffer = io.BytesIO()
        ds.save_as(buffer)
        return buffer.getvalue()


def run_case(src: Path, bundle: Path, name: str, action) -> dict:
    server = Server(src, bundle)
    try:
        start = time.perf_counter()
        statuses = action(server.port)
        return {
            "case": name,
            "statuses": statuses,
            "seconds": round(time.perf_counter() - start, 2),
            "peak_rss_mb": server.peak_mb(),
        }
    finally:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--src", default=str(ROOT / "src"), help="the src/ folder of the ccad to measure")
    parser.add_argument("--bundle", help="a bundle (default: train a small one)")
    parser.add_argument("--save", help="add the results to this JSON file under --label")
    parser.add_argument("--label", help="e.g. before or after")
    parser.add_argument("--only", help="run only the cases whose name contains this text")
    args = parser.parse_args()
    src = Path(args.src)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(args.bundle) if args.bundle else make_bundle(Path(tmp))
        png = normal_png()
        bomb = deflate_bomb(400)
        huge = big_png()

        def two_requests_of_big(count):
            def action(port):
                body, ctype = multipart([(f"b{i}.png", huge, "image/png") for i in range(count)])
                out = []
                threads = [threading.Thread(target=lambda: out.append(post(port, body, ctype))) for _ in range(2)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                return sorted(out)

            return action

        cases = [
            ("one ordinary 512 px PNG", lambda port: [post(port, *multipart([("x.png", png, "image/png")]))]),
            ("360 MB chunked upload, no API key", lambda port: [chunked_without_key(port, 360)]),
            (
                f"deflated DICOM, {len(bomb) // 1024} KB inflating to 400 MB",
                lambda port: [post(port, *multipart([("bomb.dcm", bomb, "application/dicom")]))],
            ),
            (f"two requests of 16 x 49 MP PNGs ({len(huge) // 1024} KB each)", two_requests_of_big(16)),
            ("two requests of 2 x 49 MP PNGs (the most a request may hold now)", two_requests_of_big(2)),
            (
                "34 clients dripping a byte a second, and a legitimate one for 20 s",
                slow_clients_and_a_legitimate_one(png),
            ),
        ]
        jls = codestream_bomb()
        if jls is not None:
            cases.append(
                (
                    "four JPEG-LS DICOMs of 512 x 512 whose codestream says 20,000 x 20,000",
                    lambda port: [post(port, *multipart([("b.dcm", jls, "application/dicom")])) for _ in range(4)],
                )
            )
        results = [run_case(src, bundle, n, a) for n, a in cases if not args.only or args.only in n]
    print(json.dumps({"src": str(src), "machine": f"{os.cpu_count()} cores", "cases": results}, indent=2))
    if args.save:
        saved = json.loads(Path(args.save).read_text()) if Path(args.save).is_file() else {}
        saved[args.label or str(src)] = results
        Path(args.save).write_text(json.dumps(saved, indent=2) + "\n")


if __name__ == "__main__":
    main()
