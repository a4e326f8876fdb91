"""Real encoders' DICOM through ccad's decoding: JPEG 2000 films decoded at a reduced resolution level against
a full decode (time and the change in p(COVID), the full decode being the baseline, in the same run), and
codestream pixel bombs (JPEG lossless, JPEG-LS, JPEG 2000, RLE) refused with the peak memory of the process
that reads them, against the same bomb handed straight to pydicom's decoder (the baseline: no header check).

    python benchmarks/dicom_decode.py [--films 12] [--out benchmarks/results/dicom_decode.json]

Needs ``../shared`` (the films are its covid-cxr X-rays, enlarged to 2,000 x 2,128 px with noise so that
every wavelet level carries detail: real 2,000 px films have more fine structure than an enlarged one, so the
change in p(COVID) measured here is a lower bound), dcmtk and GDCM's tools (Debian).
"""

import argparse
import json
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _report import emit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "support"))
from dicom_files import make_xray_dicom  # noqa: E402
from real_dicom import encode  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "covid-cxr"
MIN_SIDE = 512  # what a 224 px model (and the 192 px lung segmenter) could be given: one level down here
SIZE = (2128, 2000)  # rows, columns: a 43 x 35 cm detector at about 0.175 mm


def films(folder: Path, n: int) -> list[Path]:
    """``n`` covid-cxr X-rays (half COVID, half normal) as 2,000 px JPEG 2000 lossless DX files (GDCM)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    sources = (
        sorted((SHARED / "covid").glob("*.png"))[: n // 2] + sorted((SHARED / "normal").glob("*.png"))[: n - n // 2]
    )
    out = []
    for i, png in enumerate(sources):
        gray = Image.open(png).convert("L").resize(SIZE[::-1], Image.Resampling.BICUBIC)
        pixels = np.clip(np.asarray(gray, np.float64) / 255 + rng.normal(0, 0.01, SIZE), 0, 1)
        plain = make_xray_dicom(folder / f"film{i}.dcm", pixels)
        out.append(encode(plain, folder / f"film{i}-j2k.dcm", "1.2.840.10008.1.2.4.90"))
        plain.unlink()
    return out


def timed(function, repeats: int = 3):
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


def reduced_decoding(paths: list[Path]) -> dict:
    from PIL import Image

    from ccad.io.images import read_grayscale
    from ccad.models.card import DEFAULT_BUNDLE
    from ccad.screening import Intake, Screener

    screener = Screener.load(DEFAULT_BUNDLE, intake=Intake(decode_min_side=MIN_SIDE))
    positive = screener.positive_class
    rows = []
    for path in paths:
        full_s, full = timed(lambda: read_grayscale(path))  # what ccad does by default
        reduced_s, reduced = timed(lambda: read_grayscale(path, min_side=screener.intake.decode_min_side))
        box = np.asarray(Image.fromarray(full, "F").reduce(2), np.float32)  # the full decode, 2x2 averaged
        p_full, p_reduced, p_box = (
            screener.score(["x"], [screener.reader.prepare(gray)])[0].probabilities[positive]
            for gray in (full, reduced, box)
        )
        rows.append((full_s, reduced_s, full.shape, reduced.shape, p_full, p_reduced, p_box))
    deltas = [abs(r[4] - r[5]) for r in rows]
    box_deltas = [abs(r[4] - r[6]) for r in rows]
    full_ms = statistics.median(r[0] for r in rows) * 1000
    reduced_ms = statistics.median(r[1] for r in rows) * 1000
    return {
        "films": len(rows),
        "film_size": f"{SIZE[1]} x {SIZE[0]} px, 12-bit, JPEG 2000 lossless (gdcmconv --j2k)",
        "decoded_size_full": list(rows[0][2]),
        "decoded_size_reduced": list(rows[0][3]),
        "min_side": screener.intake.decode_min_side,
        "read_ms_full_median (baseline)": round(full_ms, 1),
        "read_ms_reduced_median": round(reduced_ms, 1),
        "speedup": round(full_ms / reduced_ms, 2),
        "p_covid_abs_change_max": round(max(deltas), 4),
        "p_covid_abs_change_mean": round(float(np.mean(deltas)), 4),
        "p_covid_abs_change_max_full_decode_box_downsampled_2x": round(max(box_deltas), 4),
        "p_covid_abs_change_mean_full_decode_box_downsampled_2x": round(float(np.mean(box_deltas)), 4),
        "decisions_changed": sum(
            (r[4] >= screener.decision.threshold) != (r[5] >= screener.decision.threshold) for r in rows
        ),
    }


def decoders(folder: Path) -> dict:
    """Every installed pydicom plugin on one 2,000 px film in each syntax a real encoder here makes: time
    (median of 3) and the largest difference from the uncompressed pixels (0: exact)."""
    import pydicom
    from PIL import Image
    from pydicom.pixels.decoders.base import get_decoder
    from real_dicom import ENCODERS

    from ccad.io.dicom import decoding_plugin, syntax_name

    png = sorted((SHARED / "covid").glob("*.png"))[0]
    gray = np.asarray(Image.open(png).convert("L").resize(SIZE[::-1], Image.Resampling.BICUBIC), np.float64) / 255
    plain = make_xray_dicom(folder / "decoders.dcm", gray)
    reference = pydicom.dcmread(plain).pixel_array.astype(np.int32)
    report = {}
    for syntax in ENCODERS:
        path = encode(plain, folder / f"decoders-{syntax}.dcm", syntax)
        ds = pydicom.dcmread(path)
        decoder = get_decoder(syntax) if ds.file_meta.TransferSyntaxUID.is_compressed else None
        plugins = list(decoder.available_plugins) if decoder is not None else [""]
        row = {"bytes": path.stat().st_size, "ccad_uses": decoding_plugin(syntax) or "pydicom (native)"}
        for plugin in plugins:
            try:
                seconds, pixels = timed(
                    lambda: decoder.as_array(ds, decoding_plugin=plugin)[0] if decoder else ds.pixel_array
                )
                row[plugin or "pydicom (native)"] = {
                    "ms": round(seconds * 1000, 1),
                    "max_abs_difference": int(np.abs(pixels.astype(np.int32) - reference).max()),
                }
            except Exception as e:
                row[plugin] = {"error": type(e).__name__ + ": " + str(e)[:100]}
        report[syntax_name(syntax)] = row
    return report


BOMB_SIDE = 20000


def bombs(folder: Path) -> dict[str, Path]:
    """One small X-ray per codestream family whose codestream (not its header) says 20,000 x 20,000."""
    import pydicom

    gray = np.random.default_rng(1).random((512, 512))
    plain = make_xray_dicom(folder / "plain.dcm", gray)
    out = {}
    for name, syntax, marker, offsets, fmt in [
        ("JPEG lossless SV1", "1.2.840.10008.1.2.4.70", b"\xff\xc3", (5, 7), ">H"),
        ("JPEG-LS", "1.2.840.10008.1.2.4.80", b"\xff\xf7", (5, 7), ">H"),
        ("JPEG 2000", "1.2.840.10008.1.2.4.90", b"\xff\x51", (6, 10), ">I"),
    ]:
        ds = pydicom.dcmread(encode(plain, folder / f"{syntax}.dcm", syntax))
        data = bytearray(ds.PixelData)
        at = data.index(marker)
        for offset in offsets:
            struct.pack_into(fmt, data, at + offset, BOMB_SIDE)
        ds.PixelData = bytes(data)
        ds.save_as(folder / f"bomb-{syntax}.dcm")
        out[name] = folder / f"bomb-{syntax}.dcm"
    ds = pydicom.dcmread(encode(plain, folder / "rle.dcm", "1.2.840.10008.1.2.5"))
    data = bytearray(ds.PixelData)
    struct.pack_into("<I", data, data.index(b"\xfe\xff\x00\xe0", 8) + 8, 15)  # 15 segments for 2 bytes a pixel
    ds.PixelData = bytes(data)
    ds.save_as(folder / "bomb-rle.dcm")
    out["RLE"] = folder / "bomb-rle.dcm"
    return out


CHILD = """
import json, sys
from pathlib import Path
def rss(key):
    lines = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) / 1024 for line in lines if line.startswith(key))
import pydicom
from ccad.io.images import read_grayscale
read_grayscale(sys.argv[2])  # warm: imports and decoders loaded
idle = rss("VmRSS:")
outcome = "decoded"
try:
    if sys.argv[1] == "ccad":
        read_grayscale(sys.argv[3])
    else:
        pydicom.dcmread(sys.argv[3]).pixel_array
except Exception as e:
    outcome = type(e).__name__ + ": " + str(e)[:120]
print(json.dumps({"idle_mb": round(idle, 1), "peak_mb": round(rss("VmHWM:"), 1), "outcome": outcome}))
"""


def bomb_memory(paths: dict[str, Path], warm: Path) -> dict:
    report = {}
    for name, path in paths.items():
        runs = {}
        for who in ("ccad", "pydicom"):
            done = subprocess.run(
                [sys.executable, "-c", CHILD, who, str(warm), str(path)], capture_output=True, text=True, timeout=300
            )
            runs[who] = (
                json.loads(done.stdout.strip().splitlines()[-1])
                if done.returncode == 0
                else {"outcome": f"the process died (exit {done.returncode})"}
            )
            if "peak_mb" in runs[who]:
                runs[who]["peak_over_idle_mb"] = round(runs[who]["peak_mb"] - runs[who]["idle_mb"], 1)
        report[name] = {"ccad": runs["ccad"], "pydicom's decoder alone (baseline)": runs["pydicom"]}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--films", type=int, default=12)
    parser.add_argument("--out")
    args = parser.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"needs ../shared ({SHARED} is missing)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = films(folder, args.films)
        report = {"decoders_on_a_2000_px_film": decoders(folder)}
        report["reduced_resolution_jpeg2000"] = reduced_decoding(paths)
        report["codestream_bombs"] = bomb_memory(bombs(folder), make_xray_dicom(folder / "warm.dcm", np.eye(64)))
    emit(report, args.out)


if __name__ == "__main__":
    main()
