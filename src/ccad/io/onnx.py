"""One way to open an ONNX model on ONNX Runtime's CPU provider (no TensorFlow here)."""

from __future__ import annotations

import os

from ccad.errors import ModelError


def cpu_session(path: str | os.PathLike, threads: int = 1):
    """An ``InferenceSession`` with ``threads`` intra-op threads and one inter-op thread; a file that is not a
    loadable model is a :class:`ModelError`.

    Its threads do not spin-wait for work between calls (``session.intra_op.allow_spinning`` off): ccad runs
    two sessions (the lung segmenter, the classifier) beside Python work on a small CPU, and a pool spinning
    after its call takes a core from the other. Measured on 2 cores (BENCHMARKS.md, "Near the hardware's
    limit"): ``predict FOLDER`` 28 -> 36 images/s, one image 46 -> 39 ms; the classifier alone at batch 1
    costs 9.0 against 9.6 ms without spinning."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ModelError(f"{path}: not a loadable ONNX model ({type(e).__name__})") from e
