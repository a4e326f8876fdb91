"""Static INT8 quantization of an ONNX model with ONNX Runtime's tools (the classifier and the lung segmenter)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

#: When the INT8 model may be used for decisions: on held-out images, at least this share of its decisions
#: equal the float model's, and its AUC is within this of the float model's.
MIN_AGREEMENT, MAX_AUC_DIFFERENCE = 0.98, 0.005
#: Calibration images whose activations are held at once (see :func:`quantize_onnx`).
CALIBRATION_STRIDE = 10


def quantize_onnx(
    float_path: Path,
    int8_path: Path,
    calibration: np.ndarray,
    method: str = "Percentile",
    per_channel: bool = True,
    float_ends: bool = False,
) -> None:
    """Static INT8 quantization with ONNX Runtime's tools: QDQ, int8 weights, uint8 activations.

    ccad's export: percentile calibration (99.999th), per-channel weights. ``method`` (an ONNX Runtime
    ``CalibrationMethod`` name), ``per_channel`` and ``float_ends`` (the first convolution and the classifier
    left in float) are the settings ``benchmarks/int8.py`` compares; none kept 98% of the float model's
    decisions on the lung-only default (BENCHMARKS.md, "INT8 for decisions").
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = int8_path.with_suffix(".prep.onnx")
    quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
    try:
        # The calibrator keeps every activation of every image it has not yet folded into its histograms
        # (~150 MB an image for MobileNetV2 at 224 px: 14.7 GB for 100 images, measured). Strides of at most
        # CALIBRATION_STRIDE images fold them in as they go.
        stride = max(d for d in range(1, CALIBRATION_STRIDE + 1) if len(calibration) % d == 0)
        quantize_static(
            str(prepared),
            str(int8_path),
            _calibration_reader(float_path, calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, method),
            nodes_to_exclude=_float_ends(prepared) if float_ends else [],
            extra_options={"CalibStridedMinMax": stride},
        )
    finally:
        prepared.unlink(missing_ok=True)


def _calibration_reader(float_path: Path, calibration: np.ndarray):
    """ONNX Runtime's calibration data reader over ``calibration``, one image a call; ``set_range`` lets the
    calibrator take the images a few at a time."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader

    input_name = ort.InferenceSession(str(float_path), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.set_range(0, len(calibration))

        def __len__(self):
            return len(calibration)

        def set_range(self, start_index: int, end_index: int):
            self.batches = iter(calibration[i : i + 1] for i in range(start_index, min(end_index, len(calibration))))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch}

    return Reader()


def _float_ends(model: Path) -> list[str]:
    """The first convolution and the classifier's nodes, to leave in float."""
    import onnx

    nodes = onnx.load(str(model)).graph.node
    return [next(n.name for n in nodes if n.op_type == "Conv")] + [
        n.name for n in nodes if n.op_type in ("MatMul", "Gemm", "Softmax")
    ]


def onnx_probabilities(path: Path, images: np.ndarray, threads: int = 1) -> np.ndarray:
    """The first output (class probabilities) of an ONNX model for (N, H, W, 3) images, 16 at a time."""
    from ccad.io.onnx import cpu_session

    session = cpu_session(path, threads)
    name, output = session.get_inputs()[0].name, session.get_outputs()[0].name
    return np.concatenate([session.run([output], {name: images[i : i + 16]})[0] for i in range(0, len(images), 16)])


def int8_check(
    float_path: Path,
    int8_path: Path,
    images: np.ndarray,
    labels: np.ndarray | None,
    decision,
    classes: Sequence[str],
    positive_class: str,
    data: str,
) -> dict[str, Any]:
    """Compare the INT8 model with the float model on ``images`` (N, H, W, 3) under the model's decision
    rule: the share of equal decisions, the AUC of each (when ``labels`` hold both the positive class and
    another) and the largest probability difference. ``use`` is "decisions" when at least
    :data:`MIN_AGREEMENT` of the decisions agree and the AUCs differ by at most :data:`MAX_AUC_DIFFERENCE`,
    else "throughput only" with the reason."""
    from sklearn.metrics import roc_auc_score

    p_float = decision.calibrate(onnx_probabilities(float_path, images))
    p_int8 = decision.calibrate(onnx_probabilities(int8_path, images))
    agreement = float(np.mean(decision.predict(p_float) == decision.predict(p_int8)))
    out: dict[str, Any] = {
        "data": data,
        "n": int(len(images)),
        "decision_agreement": round(agreement, 4),
        "max_probability_difference": round(float(np.max(np.abs(p_float - p_int8))), 4),
        "rule": f"decisions: at least {MIN_AGREEMENT:.0%} of decisions equal and AUC within "
        f"{MAX_AUC_DIFFERENCE} of the float model's",
    }
    problems = []
    if agreement < MIN_AGREEMENT:
        problems.append(f"{agreement:.1%} of decisions equal the float model's (needs {MIN_AGREEMENT:.0%})")
    positive = list(classes).index(positive_class)
    truth = None if labels is None else np.asarray(labels) == positive
    if truth is not None and 0 < truth.sum() < len(truth):
        auc_float = float(roc_auc_score(truth, p_float[:, positive]))
        auc_int8 = float(roc_auc_score(truth, p_int8[:, positive]))
        out.update(
            auc_float=round(auc_float, 4), auc_int8=round(auc_int8, 4), auc_difference=round(auc_int8 - auc_float, 4)
        )
        if abs(auc_int8 - auc_float) > MAX_AUC_DIFFERENCE:
            problems.append(f"AUC {auc_int8:.3f} against {auc_float:.3f} (needs within {MAX_AUC_DIFFERENCE})")
    else:
        problems.append("no held-out images of both classes to compare AUCs on")
    out["use"] = "throughput only" if problems else "decisions"
    if problems:
        out["reason"] = "; ".join(problems) + f", on {data}"
    return out
