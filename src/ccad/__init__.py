"""ccad: COVID-19 computer-aided screening of chest X-rays (Ragab et al. 2022, and beyond).

A screening aid for research, not a diagnosis. The public API imports
TensorFlow lazily: ``import ccad`` is cheap.

    >>> import ccad
    >>> result = ccad.train("data/", "runs/first", ccad.make_config())   # doctest: +SKIP
    >>> screener = ccad.Screener.load("runs/first")                       # doctest: +SKIP
    >>> list(screener.screen(["xray.png"]))                               # doctest: +SKIP

The package is layered (docs/development.md): io, data, models, preprocessing, scoring, screening,
evaluation, training, then studies and deploy, then the CLI; a layer imports only the layers below it.
"""

from ccad._meta import DEFAULT_POSITIVE, __version__  # noqa: F401  (the front door names them)

_API = {
    "train": "training.run",
    "make_config": "training.config",
    "TrainConfig": "training.config",
    "PRESETS": "training.config",
    "evaluate": "evaluation.evaluate",
    "evaluate_model": "evaluation.evaluate",
    "compute_metrics": "evaluation.metrics",
    "load_predictor": "scoring.predictor",
    "Predictor": "scoring.predictor",
    "Screener": "screening.screener",
    "Prediction": "screening.records",
    "build_classifier": "models.classifier",
    "ModelCard": "models.card",
    "DataSpec": "data.datasets",
    "discover": "data.datasets",
    "assign_splits": "data.splits",
    "read_grayscale": "io.images",
    "load_model_input": "preprocessing.pipeline",
    "generate_synthetic": ("data.synthetic", "generate"),
    "run_demo": ("studies.demo", "run_demo"),
    "CcadError": "errors",
    "DataError": "errors",
    "ImageReadError": "errors",
    "ModelError": "errors",
    "ConfigError": "errors",
}

__all__ = sorted(_API)


def __getattr__(name):
    import importlib

    if name not in _API:
        raise AttributeError(f"module 'ccad' has no attribute {name!r}")
    module, attr = _API[name] if isinstance(_API[name], tuple) else (_API[name], name)
    return getattr(importlib.import_module(f"ccad.{module}"), attr)
