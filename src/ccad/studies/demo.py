"""``ccad demo``: the whole pipeline offline on synthetic data, in a few minutes on 2 CPU cores."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ccad.data.datasets import DataSpec
from ccad.data.synthetic import generate
from ccad.errors import ModelError
from ccad.models.classifier import download_imagenet_weights, imagenet_weights_available
from ccad.training.config import make_config
from ccad.training.run import TrainResult, train

#: One view of the lungs, Youden's threshold: faster than the default two-view recipe, for a first look.
DEMO_PRESET = "one-view-lungs"


def run_demo(
    out: str | os.PathLike, n_per_class: int = 60, epochs: int = 10, seed: int = 0, verbose: int | None = None, log=None
) -> TrainResult:
    """Generate a synthetic covid/normal set in ``out/data``, train the :data:`DEMO_PRESET` recipe into
    ``out/run`` and evaluate it there (``out/run/report.html``).

    Uses ImageNet weights when Keras has them cached (``KERAS_HOME``), otherwise a
    randomly initialised backbone (``--weights none``); ``config.json`` and the
    report say which; ``log`` (default: the ``ccad`` logger) hears when the weights are missing.
    """
    log = log or logging.getLogger("ccad").warning
    out = Path(out)
    data = generate(out / "data", n_per_class=n_per_class, classes=("covid", "normal"), seed=seed)
    weights = "imagenet"
    if not imagenet_weights_available(224):
        try:
            download_imagenet_weights(224)
        except ModelError as e:
            log(
                f"ccad demo: {e}\nccad demo: going on with --weights none: the pipeline runs end to end, "
                "but a randomly initialised frozen backbone learns nothing (expect chance-level scores)."
            )
            weights = "none"
    # the one-view preset: half the backbone passes of the default two-view recipe, for a first look
    config = make_config(DEMO_PRESET, epochs=epochs, weights=weights, seed=seed)
    return train(DataSpec(data / "manifest.csv", classes=("covid", "normal")), out / "run", config, verbose=verbose)
