"""Which training recipe removes source cues and keeps the lungs' signal? (issue 5)

For each input normalization (``--preprocess``) and augmentation preset, frozen
MobileNetV2 features (224 px, ImageNet) are computed once for every image of
``../shared/data/covid-cxr`` (original + augmented views of each image), for its
COVID and normal images with the lung fields blanked and with everything but
the lung fields blanked (:mod:`ccad.lungs`), and for ``covid-cxr-rdb``.
A linear softmax head (scikit-learn logistic regression, the same model class as
the Dense head) is then scored by 5-fold patient-grouped cross-validation:

- ``internal_auc``: pooled out-of-fold AUC, COVID vs normal;
- ``lung_blanked_auc``: the same folds' models on the held-out images with the
  lungs blanked (close to 0.5 = the model needs the lungs);
- ``lungs_only_auc``: with everything but the lungs blanked;
- ``shifted_*``: the held-out COVID and normal images as another hospital might
  store them (:func:`acquisition_shift`: gamma, half resolution, JPEG 40, black
  border, grain), at the out-of-fold Youden threshold: does a normal image stay
  normal when only the acquisition changes?
- ``macro_f1_3class``: out-of-fold macro F1, COVID / normal / pneumonia;
- ``rdb_sensitivity``: a model fitted on all COVID + normal images, on
  ``covid-cxr-rdb`` (1,000 COVID images of another source) at the threshold
  that maximized Youden's J out of fold.

This is a screening harness (one feature pass per recipe, a linear head in
place of the Keras one); the chosen recipe is then confirmed end to end with
``ccad cv`` and ``ccad audit``. Prints JSON (and writes it to ``--out``).

    KERAS_HOME=../shared/keras-home python benchmarks/recipes.py --out benchmarks/results/recipes.json
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SIZE = 224


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--preprocess", default="none,equalize,lowpass,thorax+equalize,thorax+equalize+lowpass,lungs+equalize"
    )
    parser.add_argument("--augmentation", default="cxr,robust")
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()

    import keras

    from ccad.data.datasets import Sample, discover, label_indices
    from ccad.models.classifier import build_classifier, feature_extractor

    keras.utils.set_random_seed(0)
    data = discover(SHARED / "covid-cxr" / "manifest.csv", ["covid", "normal", "pneumonia"])
    rdb = [
        Sample(SHARED / "covid-cxr-rdb" / r["path"], "covid", r["path"])
        for r in csv.DictReader(open(SHARED / "covid-cxr-rdb" / "manifest.csv"))
    ]
    y3 = label_indices(data.samples, data.classes)  # covid 0, normal 1, pneumonia 2
    extractor = feature_extractor(build_classifier(2, SIZE, 0.0))
    rows = []
    for preprocess in args.preprocess.split(","):
        rows += _rows_for(preprocess, data.samples, y3, rdb, extractor, args)
    emit(
        {
            "benchmark": "recipes",
            "rows": rows,
            "folds": args.folds,
            "input_size": SIZE,
            "data": "covid-cxr (manifest, all splits), covid-cxr-rdb",
        },
        args.out,
    )


def _features(extractor, images, augmentation=None, views=1):
    from ccad.preprocessing.augmentation import Augmenter
    from ccad.preprocessing.batches import image_batches

    aug = Augmenter(augmentation, SIZE, 0) if augmentation else None
    batches = image_batches(images, None, 16, 2, aug, repeat=views)
    return extractor.predict(batches, verbose=0).reshape(views, len(images), -1)


def _lungs_blanked(gray):
    from ccad.models.lungs import blank, estimate_lung_fields

    return blank(gray, estimate_lung_fields(gray).at(*gray.shape))


def _others_blanked(gray):
    from ccad.models.lungs import blank, estimate_lung_fields

    return blank(gray, ~estimate_lung_fields(gray).at(*gray.shape))


def _rows_for(preprocess: str, samples, y3, rdb, extractor, args) -> list[dict]:
    """One preprocessing: the images and their probes (lungs blanked, only the lungs, rdb, another hospital's
    look) loaded once, then a row per augmentation."""
    from ccad.preprocessing.pipeline import load_images

    groups = np.array([s.group for s in samples])
    binary = np.flatnonzero(y3 < 2)
    start = time.perf_counter()
    images = load_images(samples, SIZE, preprocess=preprocess)[0]
    bin_samples = [samples[i] for i in binary]
    no_lungs = load_images(bin_samples, SIZE, preprocess=preprocess, transform=_lungs_blanked)[0]
    only_lungs = load_images(bin_samples, SIZE, preprocess=preprocess, transform=_others_blanked)[0]
    rdb_images = load_images(rdb, SIZE, preprocess=preprocess)[0]
    shifted = load_images(bin_samples, SIZE, preprocess=preprocess, transform=acquisition_shift)[0]
    load_s = time.perf_counter() - start
    base = _features(extractor, images)[0]
    probes = [_features(extractor, x)[0] for x in (no_lungs, only_lungs, rdb_images, shifted)]
    rows = []
    for augmentation in args.augmentation.split(","):
        start = time.perf_counter()
        views = _features(extractor, images, augmentation, args.views)
        train_feats = np.concatenate([base[None], views])  # (1 + views, N, D)
        row = dict(
            preprocess=preprocess,
            augmentation=augmentation,
            views=args.views,
            load_s=round(load_s, 1),
            features_s=round(time.perf_counter() - start, 1),
        )
        row.update(score(train_feats, y3, groups, binary, *probes, args.folds))
        rows.append(row)
        print(row, flush=True)
    return rows


def acquisition_shift(gray: np.ndarray) -> np.ndarray:
    """The same patient as another hospital might store it: brighter gamma, half the resolution,
    JPEG quality 40, a black 6% border, film grain. Deterministic, applied to both classes alike."""
    import io

    from PIL import Image

    h, w = gray.shape
    x = np.clip(gray, 0, 1) ** 0.75
    small = Image.fromarray((x * 255).astype(np.uint8)).resize((max(8, w // 2), max(8, h // 2)), Image.BILINEAR)
    buffer = io.BytesIO()
    small.resize((w, h), Image.BILINEAR).save(buffer, format="JPEG", quality=40)
    x = np.asarray(Image.open(buffer), dtype=np.float32) / 255.0
    x = x + np.random.default_rng(h * w).normal(0, 0.015, x.shape).astype(np.float32)
    pad = int(0.06 * max(h, w))
    return np.pad(np.clip(x, 0, 1), pad).astype(np.float32)


def score(train_feats, y3, groups, binary, f_no_lungs, f_only_lungs, f_rdb, f_shifted, folds):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score, roc_auc_score, roc_curve
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def head():
        return make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=3000))

    def fit(index, labels):
        x = train_feats[:, index].reshape(-1, train_feats.shape[-1])
        return head().fit(x, np.tile(labels, train_feats.shape[0]))

    base = train_feats[0]
    yb = (y3[binary] == 0).astype(int)  # COVID = 1
    oof, oof_none, oof_only, oof_shift = (np.zeros(len(binary)) for _ in range(4))
    splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=0)
    for tr, te in splitter.split(binary, yb, groups[binary]):
        model = fit(binary[tr], yb[tr])
        oof[te] = model.predict_proba(base[binary[te]])[:, 1]
        oof_none[te] = model.predict_proba(f_no_lungs[te])[:, 1]
        oof_only[te] = model.predict_proba(f_only_lungs[te])[:, 1]
        oof_shift[te] = model.predict_proba(f_shifted[te])[:, 1]
    fpr, tpr, thresholds = roc_curve(yb, oof)
    threshold = float(thresholds[np.argmax(tpr - fpr)])
    full = fit(binary, yb)
    rdb_p = full.predict_proba(f_rdb)[:, 1]
    pred3 = np.zeros(len(y3), int)
    all_index = np.arange(len(y3))
    for tr, te in StratifiedGroupKFold(folds, shuffle=True, random_state=0).split(all_index, y3, groups):
        pred3[te] = fit(tr, y3[tr]).predict(base[te])
    return dict(
        internal_auc=round(roc_auc_score(yb, oof), 4),
        lung_blanked_auc=round(roc_auc_score(yb, oof_none), 4),
        lungs_only_auc=round(roc_auc_score(yb, oof_only), 4),
        shifted_auc=round(roc_auc_score(yb, oof_shift), 4),
        specificity=round(float(np.mean(oof[yb == 0] < threshold)), 4),
        shifted_specificity=round(float(np.mean(oof_shift[yb == 0] < threshold)), 4),
        shifted_sensitivity=round(float(np.mean(oof_shift[yb == 1] >= threshold)), 4),
        macro_f1_3class=round(f1_score(y3, pred3, average="macro"), 4),
        youden_threshold=round(threshold, 4),
        rdb_sensitivity=round(float(np.mean(rdb_p >= threshold)), 4),
        rdb_sensitivity_at_0_5=round(float(np.mean(rdb_p >= 0.5)), 4),
    )


if __name__ == "__main__":
    main()
