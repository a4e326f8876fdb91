"""Does the drift check turn when what arrives changes, and stay quiet when it does not? And what does
/metrics cost a request?

    python benchmarks/monitoring.py [--model BUNDLE] [--run RUN] [--out benchmarks/results/monitoring.json]

**Drift.** The bundle (default: the shipped one) scores each image once: the images of its run's *test*
split (in distribution: the sources, mix and split procedure of the validation split its reference was
made from, but not those images), and four other populations. Streams are then replayed through
:class:`ccad.evaluation.drift.DriftCheck` exactly as ``serve`` and ``dicom listen`` feed it (a score and a
distance an image, window 200, 8 bins; also 10 and 6):

- ``in distribution``: 1,000 images drawn with replacement from the test split, 40 different seeds; the
  measure is how many of the 40 streams ever leave ``ok`` (the aim: none);
- then a change: 1,000 in-distribution images followed by one population, 20 seeds; the measure is the number
  of images after the change until the state is ``drift`` (the aim: within 200), or "never":
  ``NIH pneumonia`` (a finding the model was not trained on, from the same hospital), ``only NIH normals``
  and ``only covid-cxr-rdb`` (one source of the mix alone: a prevalence change), ``photos`` (the two
  imagenet-sanity photos, 40 crops, flips and turns of them: not X-rays at all).

**/metrics overhead.** One ``create_app`` with metrics and one without, in the same process, 5 rounds of
40 one-image requests each, alternating; the ratio of their median images per second.
"""

from __future__ import annotations

import argparse
import csv
import io
import statistics
import time
from pathlib import Path

import numpy as np
from _report import emit

from ccad.screening import Screener

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DEFAULT_MODEL = ROOT / "src" / "ccad" / "models" / "default"
BINS = (8, 10, 6)


def scored(predictor, paths) -> list[tuple[float, float]]:
    positive = predictor.classes.index(predictor.positive_class)
    return [
        (float(p.raw_probabilities[positive]), p.ood_distance)
        for p in list(Screener(predictor).screen([str(x) for x in paths]))
        if not p.error
    ]


def photo_variants(folder: Path, out: Path, n: int = 40) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    photos = [Image.open(p).convert("L") for p in sorted(folder.glob("*.png"))]
    paths = []
    for i in range(n):
        image = photos[i % len(photos)]
        w, h = image.size
        s = rng.uniform(0.5, 1.0)
        x, y = rng.uniform(0, 1 - s) * w, rng.uniform(0, 1 - s) * h
        crop = image.crop((int(x), int(y), int(x + s * w), int(y + s * h))).rotate(90 * (i // 2 % 4))
        if i % 3 == 0:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        paths.append(out / f"photo-{i}.png")
        crop.save(paths[-1])
    return paths


def replay(check_factory, in_dist: np.ndarray, after: np.ndarray | None, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    check = check_factory()
    stream = in_dist[rng.integers(0, len(in_dist), 1000)]
    left_ok = any(check.add(s, d) == "drift" for s, d in stream)
    if after is None:
        return {"left_ok": left_ok}
    for i, (s, d) in enumerate(after[rng.integers(0, len(after), 1000)]):
        if check.add(s, d) == "drift" or check.state == "drift":
            return {"left_ok": left_ok, "images_to_drift": i + 1}
    return {"left_ok": left_ok, "images_to_drift": None}


def drift(model: Path, run: Path, work: Path) -> dict:
    from ccad.evaluation.drift import DriftCheck
    from ccad.scoring.predictor import OnnxPredictor

    predictor = OnnxPredictor.load(model)
    with open(run / "split.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    test = [r for r in rows if r["split"] == "test"]
    with open(SHARED / "covid-cxr" / "manifest.csv", newline="") as f:
        pneumonia = [SHARED / "covid-cxr" / r["path"] for r in csv.DictReader(f) if r["label"] == "pneumonia"]
    start = time.perf_counter()
    populations = {
        "in distribution": scored(predictor, [r["path"] for r in test]),
        "NIH pneumonia": scored(predictor, pneumonia[:300]),
        "only NIH normals": scored(predictor, [r["path"] for r in test if r["source"] == "nih-chestxray8"]),
        "only covid-cxr-rdb": scored(predictor, [r["path"] for r in test if r["source"] == "covid19-radiography-db"]),
        "photos": scored(predictor, photo_variants(SHARED / "imagenet-sanity", work)),
    }
    scoring_s = time.perf_counter() - start
    guard = predictor.ood
    arrays = {k: np.array(v, np.float64) for k, v in populations.items()}
    out = {
        "images": {k: len(v) for k, v in populations.items()},
        "reference_images": len(guard.reference_scores),
        "scoring_s": round(scoring_s, 1),
    }
    for bins in BINS:

        def factory():
            return DriftCheck(guard.reference_scores, guard.reference_distances, window=200, bins=bins)

        result = out[f"{bins} bins" + (" (ccad's default)" if bins == DriftCheck(None, None).bins else "")] = {}
        quiet = [replay(factory, arrays["in distribution"], None, seed) for seed in range(40)]
        result["in_distribution_streams_that_left_ok"] = sum(r["left_ok"] for r in quiet)
        for name in ("NIH pneumonia", "only NIH normals", "only covid-cxr-rdb", "photos"):
            runs = [replay(factory, arrays["in distribution"], arrays[name], 100 + seed) for seed in range(20)]
            found = [r["images_to_drift"] for r in runs if r["images_to_drift"] is not None]
            result[name] = {
                "streams": len(runs),
                "turned_to_drift": len(found),
                "images_to_drift_median": statistics.median(found) if found else None,
                "images_to_drift_max": max(found) if found else None,
                "left_ok_before_the_change": sum(r["left_ok"] for r in runs),
            }
    return out


def overhead(model: Path, image: Path) -> dict:
    from fastapi.testclient import TestClient

    from ccad.deploy.web import ServeSettings, create_app

    data = image.read_bytes()
    rates = {True: [], False: []}
    with (
        TestClient(create_app(ServeSettings(model, metrics=True))) as on,
        TestClient(create_app(ServeSettings(model, metrics=False))) as off,
    ):
        for client in (on, off):  # warm up
            client.post("/api/v1/predict", files=[("files", ("a.png", io.BytesIO(data), "image/png"))])
        for _ in range(5):
            for metrics, client in ((True, on), (False, off)):
                start = time.perf_counter()
                for _ in range(40):
                    answer = client.post("/api/v1/predict", files=[("files", ("a.png", io.BytesIO(data), "image/png"))])
                    assert answer.status_code == 200, answer.text
                rates[metrics].append(40 / (time.perf_counter() - start))
        scrape = on.get("/metrics")
    on_rate, off_rate = statistics.median(rates[True]), statistics.median(rates[False])
    return {
        "images_per_s_with_metrics": round(on_rate, 2),
        "images_per_s_without": round(off_rate, 2),
        "cost": round(1 - on_rate / off_rate, 4),
        "metrics_page_bytes": len(scrape.content),
    }


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument(
        "--run",
        help="the run folder the bundle was exported from (its split.csv); default: "
        "/work/runs/default-model for the shipped bundle",
    )
    parser.add_argument("--skip-drift", action="store_true")
    parser.add_argument("--out")
    args = parser.parse_args()
    report = {"model": Path(args.model).name}
    with tempfile.TemporaryDirectory() as work:
        if not args.skip_drift:
            report["drift"] = drift(Path(args.model), Path(args.run or "/work/runs/default-model"), Path(work))
        image = next((SHARED / "covid-cxr" / "normal").glob("*.png"))
        report["metrics_overhead"] = overhead(Path(args.model), image)
    emit(report, args.out)


if __name__ == "__main__":
    main()
