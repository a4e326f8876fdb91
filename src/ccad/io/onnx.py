"""One way to open an ONNX model on ONNX Runtime's CPU provider (no TensorFlow here)."""

from __future__ import annotations

import os

from ccad.errors import ModelError


def cpu_session(path: str | os.PathLike, threads: int = 1):
    """An ``InferenceSession`` with ``threads`` intra-op threads and one inter-op thread; a file that is not a
    loadable model is a :class:`ModelError`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ModelError(f"{path}: not a loadable ONNX model ({type(e).__name__})") from e
