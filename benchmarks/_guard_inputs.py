"""The inputs of the guard's evaluation (benchmarks/guard.py, issue 37), seen as the shipped model sees them.

Chest films (negatives): every film in ``../shared`` with its source and class. Foreign inputs (positives):

- ``photo``: the everyday photos of ``../shared/data/imagenet-sanity``, matplotlib's and scikit-image's samples;
- ``other medical picture``: scikit-image's retina, microscopy and CT-phantom pictures;
- ``texture``: scikit-image's brick, grass and gravel;
- ``other modality``: pydicom's shipped test files and the ``pydicom-data`` package's (CT, MR, US, NM, secondary
  captures, a CR of an extremity), decoded by ccad's own DICOM reader (``score_anyway``: what the guard would
  see if a site routed them to ccad), one image per distinct picture. No MG or RF is in either set;
- ``text screenshot``: screens of text, some with a film's thumbnail (:func:`ccad.data.foreign.screenshot`);
- ``rotated 90``, ``rotated 180``, ``inverted``, ``corner crop``: made from chest films
  (:func:`ccad.data.foreign.transform`), and tagged with the film they came from, so a film's transforms are only
  ever used with that film's source.

Each input becomes its pooled features (both views, 2,560 numbers), the shipped model's raw probabilities and the
lung segmenter's QC flags, cached in ``WORK/<set>.npz``.
"""

from __future__ import annotations

import csv
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from ccad.data.foreign import TRANSFORMS, screenshot, transform

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def chest_films() -> list[dict]:
    """Every film: ``path``, ``source`` (cohen, nih, rdb) and ``cls`` (covid, other, normal, pneumonia)."""
    out = []
    for name, source_of in (
        ("covid-cxr", lambda r: "cohen" if r["source"].startswith("cohen") else "nih"),
        ("cohen-other", lambda r: "cohen"),
        ("covid-cxr-rdb", lambda r: "rdb"),
    ):
        with open(SHARED / name / "manifest.csv", newline="") as f:
            for r in csv.DictReader(f):
                cls = "other" if name == "cohen-other" else r["label"]
                out.append({"path": str(SHARED / name / r["path"]), "source": source_of(r), "cls": cls})
    return out


def pictures() -> list[tuple[str, str, np.ndarray]]:
    """(kind, name, grayscale) for the photos, other medical pictures and textures."""
    import matplotlib
    import skimage.data

    sk = Path(skimage.data.__file__).parent
    mpl = Path(matplotlib.get_data_path()) / "sample_data"
    kinds = {
        "photo": [SHARED / "imagenet-sanity" / "cat.png", SHARED / "imagenet-sanity" / "grace_hopper.png"]
        + [mpl / "Minduka_Present_Blue_Pack.png"]
        + [
            sk / f
            for f in (
                "astronaut.png camera.png chelsea.png coffee.png rocket.jpg motorcycle_left.png hubble_deep_field.jpg "
                "moon.png coins.png clock_motion.png horse.png"
            ).split()
        ],
        "other medical picture": [sk / f for f in "retina.jpg ihc.png cell.png microaneurysms.png phantom.png".split()],
        "texture": [sk / f for f in "brick.png grass.png gravel.png".split()],
    }
    return [(kind, p.name, _gray(Image.open(p))) for kind, paths in kinds.items() for p in paths]


def dicom_images(screener) -> list[tuple[str, str, np.ndarray]]:
    """("other modality", "<modality> <file>", grayscale) for each distinct decodable picture in pydicom's test
    files and pydicom-data's (when installed), chest CRs left out (they are chest films)."""
    import pydicom
    from pydicom.data import get_testdata_files

    from ccad.screening.screener import Intake, Reader

    files = set(get_testdata_files("*.dcm"))
    try:
        import data_store

        files |= {str(p) for p in (Path(data_store.__file__).parent / "data").glob("*.dcm")}
    except ImportError:
        pass
    reader = Reader(screener.input_size, screener.preprocess, Intake(score_anyway=True))
    seen, out = set(), []
    for path in sorted(files):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            if "PixelData" not in pydicom.dcmread(path) or str(ds.get("BodyPartExamined", "")).upper() == "CHEST":
                continue
            gray = reader.decode(path)
        except Exception:  # noqa: BLE001  (the test files include broken ones on purpose)
            continue
        small = np.asarray(Image.fromarray((255 * gray).astype(np.uint8)).resize((16, 16)))
        key = hashlib.sha1((small // 32).tobytes()).hexdigest()
        if key not in seen and min(gray.shape) >= 32:
            seen.add(key)
            out.append(("other modality", f"{ds.get('Modality', '?')} {Path(path).name}", gray))
    return out


def features(screener, grays: list[np.ndarray]) -> dict[str, np.ndarray]:
    """The shipped model's view of each image: pooled features, raw probabilities, lung QC's no_lungs flag."""
    pooled, raw, no_lungs = [], [], []
    with ThreadPoolExecutor(max(2, os.cpu_count() or 2)) as pool:
        for i in range(0, len(grays), 32):
            prepared = list(pool.map(screener.prepare, grays[i : i + 32]))
            for prep, p in zip(prepared, screener.score([str(k) for k in range(len(prepared))], prepared)):
                pooled.append(np.asarray(p.pooled, np.float32))
                raw.append(np.asarray(p.raw_probabilities, np.float32))
                no_lungs.append("no_lungs" in (prep.qc_flags or ()))
    return {"pooled": np.stack(pooled), "raw": np.stack(raw), "no_lungs": np.array(no_lungs)}


def _gray(img: Image.Image) -> np.ndarray:
    img = img.convert("RGBA")
    white = Image.new("RGBA", img.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, img).convert("L"), np.float32) / 255


def build(screener, work: Path, per_source: int = 150, screenshots: int = 120, seed: int = 0) -> dict[str, dict]:
    """Every set's features, cached in ``work``: ``chest`` (with path, source, cls), ``foreign`` (with kind,
    name, origin: the source a transform's film came from, or '' for the rest; film: that film's index)."""
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "inputs.npz"
    if cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            flat = {k: z[k] for k in z.files}
        return {s: {k[len(s) + 1 :]: v for k, v in flat.items() if k.startswith(s + ".")} for s in ("chest", "foreign")}
    rng = np.random.default_rng(seed)
    films = chest_films()
    chest_grays = [screener.decode(f["path"]) for f in films]
    chest = features(screener, chest_grays) | {k: np.array([f[k] for f in films]) for k in ("path", "source", "cls")}
    foreign: list[tuple[str, str, str, int, np.ndarray]] = []
    for source in ("cohen", "nih", "rdb"):
        idx = np.flatnonzero(chest["source"] == source)
        for i in rng.choice(idx, size=min(per_source, len(idx)), replace=False):
            foreign += [
                (kind, films[i]["path"], source, int(i), transform(chest_grays[i], kind, rng)) for kind in TRANSFORMS
            ]
    for k in range(screenshots):
        thumb = chest_grays[int(rng.integers(len(chest_grays)))] if k % 4 == 3 else None
        foreign.append(("text screenshot", f"screenshot {k}", "", -1, screenshot(rng, thumb)))
    foreign += [(kind, name, "", -1, g) for kind, name, g in pictures() + dicom_images(screener)]
    table = features(screener, [g for *_, g in foreign])
    for j, key in enumerate(("kind", "name", "origin", "film")):
        table[key] = np.array([row[j] for row in foreign])
    np.savez(cache, **{f"chest.{k}": v for k, v in chest.items()}, **{f"foreign.{k}": v for k, v in table.items()})
    return {"chest": chest, "foreign": table}
