"""Can the INT8 model make the float model's decisions? Static quantization settings compared on a trained
run, each against the float model of the same run: share of equal decisions (under the run's decision
rule) and AUC on the run's test split, and the share of equal decisions (and COVID found) on a second
source (covid-cxr-rdb, all COVID).

    KERAS_HOME=../shared/keras-home python benchmarks/int8.py --run RUN [--out benchmarks/results/int8.json]

Quantization is ccad's own (``quantize_onnx``: calibration in strides of 10 images since the memory fix, so
a rerun differs slightly from the first table in BENCHMARKS.md). Every image goes through the model's own
preprocessing (``load_images`` with the run's ``preprocess``) for
calibration and scoring alike. Settings (all QDQ, uint8 activations, int8 weights, 100 calibration images
from the run's training split):

- ``percentile``: per-channel weights, 99.999th-percentile calibration (ccad's export);
- ``percentile-exclude``: the same, with the first convolution and the classifier (MatMul/Gemm, Softmax)
  left in float;
- ``entropy``: per-channel, entropy (KL) calibration;
- ``minmax``: per-channel, MinMax calibration;
- ``percentile-per-tensor``: one scale per weight tensor;
- ``percentile-300-images``: ccad's export with 300 calibration images instead of 100;
- ``dynamic``: weights int8 per channel, activations quantized at run time (``quantize_dynamic``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _report import emit

ROOT = Path(__file__).resolve().parents[1]
RDB = ROOT.parent / "shared" / "data" / "covid-cxr-rdb" / "manifest.csv"
SETTINGS = {
    "percentile": dict(method="Percentile", per_channel=True, exclude=False),
    "percentile-exclude": dict(method="Percentile", per_channel=True, exclude=True),
    "entropy": dict(method="Entropy", per_channel=True, exclude=False),
    "minmax": dict(method="MinMax", per_channel=True, exclude=False),
    "percentile-per-tensor": dict(method="Percentile", per_channel=False, exclude=False),
    "percentile-300-images": dict(method="Percentile", per_channel=True, exclude=False, images=300),
    "dynamic": dict(method="dynamic", per_channel=True, exclude=False),
}


def quantize(
    float_path: Path,
    out: Path,
    calibration: np.ndarray,
    method: str,
    per_channel: bool,
    exclude: bool,
    images: int = 100,
) -> None:
    """ccad's own quantizer (:func:`ccad.models.quantize.quantize_onnx`) with the setting's options, or ONNX
    Runtime's dynamic quantization."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from ccad.models.quantize import quantize_onnx

    if method != "dynamic":
        quantize_onnx(float_path, out, calibration[:images], method, per_channel, float_ends=exclude)
        return
    prepared = out.with_suffix(".prep.onnx")
    quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
    quantize_dynamic(str(prepared), str(out), weight_type=QuantType.QInt8, per_channel=per_channel)
    prepared.unlink(missing_ok=True)


def probabilities(path: Path, images: np.ndarray) -> np.ndarray:
    from ccad.models.quantize import onnx_probabilities

    return onnx_probabilities(path, images, threads=2)


def main() -> None:
    from sklearn.metrics import roc_auc_score

    from ccad.bundles.export import _calibration_images, export_model_of
    from ccad.scoring.predictor import KerasPredictor

    parser = argparse.ArgumentParser()
    parser.add_argument("--run", required=True)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--out")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ccad-int8-"))
    classifier = KerasPredictor.load(args.run)
    dual = export_model_of(classifier)
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        dual.export(str(work / "model.onnx"), format="onnx", verbose=False)
    calibration = _calibration_images(args.run, classifier, None, 300)
    sets = _sets(classifier, args.run)
    rule, pos = classifier.decision, classifier.classes.index(classifier.positive_class)
    float_p = {k: rule.calibrate(probabilities(work / "model.onnx", x)) for k, (x, _) in sets.items()}
    report = {
        "benchmark": "int8",
        "run": args.run,
        "preprocess": classifier.preprocess,
        "decision": rule.describe(),
        "calibration_images": len(calibration),
        "sets": {k: len(x) for k, (x, _) in sets.items()},
        "float": {},
        "settings": {},
    }
    for key, (x, y) in sets.items():
        d = rule.predict(float_p[key])
        report["float"][key] = {"positive_rate": round(float(np.mean(d == pos)), 4)}
        if y is not None:
            report["float"][key]["auc"] = round(float(roc_auc_score(y == pos, float_p[key][:, pos])), 4)
    for name in args.settings.split(","):
        report["settings"][name] = _setting(name, work, calibration, sets, float_p, report["float"], rule, pos)
        print(name, report["settings"][name], file=sys.stderr)
    emit(report, args.out)


def _sets(classifier, run: str) -> dict:
    """The run's test split (with labels) and, when ../shared has it, covid-cxr-rdb (decisions only)."""
    from ccad.data.datasets import DataSpec, label_indices
    from ccad.data.splits import read_split_file
    from ccad.preprocessing.pipeline import load_images, to_model_input

    def prepared(samples):
        images, kept, _ = load_images(samples, classifier.input_size, skip_bad=True, preprocess=classifier.preprocess)
        return to_model_input(images), kept

    test = [s for s in read_split_file(Path(run) / "split.csv") if s.split == "test"]
    x_test, kept = prepared([s for s in test if s.label in classifier.classes])
    sets = {"test split": (x_test, label_indices(kept, classifier.classes))}
    if RDB.is_file():
        rdb = DataSpec(RDB).discover(model_classes=classifier.classes).samples
        sets["covid-cxr-rdb"] = (prepared(rdb)[0], None)
    return sets


def _setting(name, work: Path, calibration, sets, float_p, float_report, rule, pos) -> dict:
    """One quantization setting: its decisions and AUC against the float model's, on each set."""
    from sklearn.metrics import roc_auc_score

    start = time.perf_counter()
    path = work / f"{name}.onnx"
    quantize(work / "model.onnx", path, calibration, **SETTINGS[name])
    row = {"quantize_s": round(time.perf_counter() - start, 1)}
    for key, (x, y) in sets.items():
        p = rule.calibrate(probabilities(path, x))
        d, d_float = rule.predict(p), rule.predict(float_p[key])
        entry = {
            "decision_agreement": round(float(np.mean(d == d_float)), 4),
            "positive_rate": round(float(np.mean(d == pos)), 4),
            "max_probability_difference": round(float(np.abs(p - float_p[key]).max()), 4),
        }
        if y is not None:
            entry["auc"] = round(float(roc_auc_score(y == pos, p[:, pos])), 4)
            entry["auc_difference"] = round(entry["auc"] - float_report[key]["auc"], 4)
        row[key] = entry
    ok = all(row[k]["decision_agreement"] >= 0.98 for k in sets) and abs(row["test split"]["auc_difference"]) <= 0.005
    row["meets_the_aim"] = bool(ok)
    return row


if __name__ == "__main__":
    main()
