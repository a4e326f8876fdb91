"""ccad: COVID-19 computer-aided screening of chest X-rays (Ragab et al. 2022, and beyond).

A screening aid for research, not a diagnosis. The public API imports
TensorFlow lazily: ``import ccad`` is cheap.

    >>> import ccad
    >>> result = ccad.train("data/", "runs/first", ccad.make_config())   # doctest: +SKIP
    >>> clf = ccad.load_classifier("runs/first")                          # doctest: +SKIP
    >>> clf.predict_files(["xray.png"])                                   # doctest: +SKIP
"""

__version__ = "0.1.0"

_API = {
    "train": "training", "make_config": "training", "TrainConfig": "training", "PRESETS": "training",
    "evaluate": "evaluation", "compute_metrics": "evaluation",
    "load_classifier": "inference", "Classifier": "inference",
    "build_classifier": "model",
    "discover": "data", "assign_splits": "data",
    "read_grayscale": "images", "load_model_input": "images",
    "generate_synthetic": ("synthetic", "generate"),
    "run_demo": ("demo", "run_demo"),
    "CcadError": "errors", "DataError": "errors", "ImageReadError": "errors", "ModelError": "errors",
    "ConfigError": "errors",
}

__all__ = sorted(_API)


def __getattr__(name):
    import importlib

    if name not in _API:
        raise AttributeError(f"module 'ccad' has no attribute {name!r}")
    module, attr = _API[name] if isinstance(_API[name], tuple) else (_API[name], name)
    return getattr(importlib.import_module(f"ccad.{module}"), attr)
