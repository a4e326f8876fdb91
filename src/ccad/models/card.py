"""Typed records of a trained classifier: the run's ``config.json`` and the bundle's ``ccad-model.json``.

Both describe a model the same way where a predictor needs it (:class:`ModelInfo`: classes, positive
class, input size, preprocessing, decision rule, head, out-of-distribution guard); each adds what its
folder is for. Keys a reader does not know are kept (``extra``) and written back unchanged.

    >>> card = ModelCard.load("bundle/")             # doctest: +SKIP
    >>> card.classes, card.preprocess, card.decision_rule().describe()   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ccad._meta import DEFAULT_POSITIVE, __version__
from ccad.errors import ModelError
from ccad.io.files import sha256, write_json
from ccad.models.decision import DecisionRule

#: The bundle card's file name: its presence makes a folder a bundle.
BUNDLE_CARD = "ccad-model.json"
#: The bundle format this ccad writes, and every one it can read.
BUNDLE_FORMAT = "ccad-bundle/1"
KNOWN_BUNDLE_FORMATS = (BUNDLE_FORMAT,)
#: A run's metadata file.
RUN_METADATA = "config.json"
#: What a model recorded before ``preprocess`` existed was trained with: a plain resize.
LEGACY_PREPROCESS = "none"
INTENDED_USE = "Research screening aid for COVID-19 on frontal chest X-rays. Not a diagnosis."


#: The model bundle shipped inside the package (``ccad predict`` without ``--model``); how it was made is in
#: docs/default-model.md and in its card.
DEFAULT_BUNDLE = Path(__file__).parent / "default"


def default_bundle() -> Path:
    """The bundle shipped with ccad; a :class:`ModelError` when this installation has none."""
    if not is_bundle(DEFAULT_BUNDLE):
        raise ModelError(
            f"no `model` given and no model is shipped in this installation ({DEFAULT_BUNDLE}): "
            "pass `model` BUNDLE (ccad export makes one)"
        )
    return DEFAULT_BUNDLE


def is_bundle(path: str | os.PathLike) -> bool:
    return (Path(path) / BUNDLE_CARD).is_file()


def library_versions(extra: Sequence[str] = ()) -> dict[str, str]:
    """Python, ccad and the installed versions of the libraries a model depends on (plus ``extra``)."""
    import importlib.metadata as md

    versions = {"python": platform.python_version(), "ccad": __version__}
    for name in ("keras", "tensorflow-cpu", "tensorflow", "numpy", "scikit-learn", "pillow", "pydicom", *extra):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return versions


@dataclass(kw_only=True)
class ModelInfo:
    """What a predictor needs to use a trained classifier."""

    classes: list[str]
    positive_class: str
    input_size: int
    preprocess: str = LEGACY_PREPROCESS
    decision: dict[str, Any] | None = None
    head: dict[str, Any] = field(default_factory=lambda: {"kind": "dense"})
    ood: dict[str, Any] | None = None
    backbone: str | None = None
    weights: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def decision_rule(self):
        """The stored :class:`ccad.models.decision.DecisionRule` (argmax for a model that has none)."""

        return DecisionRule.from_meta({"decision": self.decision}, self.classes, self.positive_class)

    @property
    def head_file(self) -> str | None:
        """The stored non-linear head's file (extra-trees), or None for a head inside the network."""
        return (self.head or {}).get("file")

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "model"):
        """The record in ``raw``; keys it does not know go to ``extra``. A missing required key is a
        :class:`ModelError` naming ``where``."""
        if not isinstance(raw, dict):
            raise ModelError(f"{where}: not a JSON object")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in raw.items() if k in names and v is not None}
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.name in names
            and f.name not in known
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise ModelError(f"{where}: no {', '.join(missing)}")
        return cls(**known, extra={k: v for k, v in raw.items() if k not in names})


@dataclass(kw_only=True)
class RunMetadata(ModelInfo):
    """A run folder's ``config.json``: how to use the model, what it was trained on and how."""

    ccad_version: str = ""
    preprocessing: str = ""
    data: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    parameters: dict[str, int] | None = None
    best_epoch: int | None = None
    timings: dict[str, Any] | None = None
    versions: dict[str, str] | None = None

    @classmethod
    def load(
        cls, folder: str | os.PathLike, classes: Sequence[str] | None = None, outputs: int | None = None
    ) -> "RunMetadata":
        """``folder/config.json``; without one (a bare model file) ``classes`` name the outputs."""
        path = Path(folder) / RUN_METADATA
        raw = _read_json(path) if path.is_file() else {}
        if classes:
            raw["classes"] = list(classes)
        if not raw.get("classes"):
            raise ModelError(f"{folder}: class names unknown (no {RUN_METADATA}); pass `classes`")
        if outputs is not None and len(raw["classes"]) != outputs:
            raise ModelError(f"{folder}: the model has {outputs} outputs but {len(raw['classes'])} classes were given")
        names = raw["classes"]
        raw.setdefault("positive_class", DEFAULT_POSITIVE if DEFAULT_POSITIVE in names else names[-1])
        raw.setdefault("input_size", 0)
        return cls.from_dict(raw, str(path))

    def save(self, folder: str | os.PathLike) -> None:
        write_json(Path(folder) / RUN_METADATA, self.to_dict())


@dataclass(kw_only=True)
class ModelCard(ModelInfo):
    """A bundle's ``ccad-model.json``: everything needed to run and judge the exported model."""

    models: dict[str, str]
    format: str = BUNDLE_FORMAT
    intended_use: str = INTENDED_USE
    input: dict[str, Any] | None = None
    outputs: dict[str, int] | None = None
    preprocessing: dict[str, Any] | None = None
    training_data: dict[str, Any] | None = None
    training_config: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    calibration_images: int | None = None
    #: How the INT8 model's decisions compare with the float model's on held-out images
    #: (:func:`ccad.models.quantize.int8_check`); ``use`` is "decisions" or "throughput only".
    int8_check: dict[str, Any] | None = None
    #: What the exporter said of the data's sources, licences and intended use (``ccad export --provenance``).
    provenance: dict[str, Any] | None = None
    heatmap: dict[str, Any] = field(default_factory=lambda: {"weights": "cam_weights.npy"})
    severity: dict[str, Any] | None = None
    lung_segmenter: dict[str, Any] | None = None
    versions: dict[str, str] | None = None
    sha256: dict[str, str] = field(default_factory=dict)

    def int8_warning(self) -> str | None:
        """Why the INT8 model should not be used for decisions, or None when its check allows it."""
        check = self.int8_check
        if check is None:
            return (
                "this bundle's INT8 model was never compared with its float model (exported before that "
                "check existed): use it for throughput, not for decisions"
            )
        if check.get("use") == "decisions":
            return None
        return (
            f"this bundle's INT8 model is for throughput only: {check.get('reason', 'it failed its check')} "
            "(drop --int8 for decisions)"
        )

    @classmethod
    def load(cls, bundle: str | os.PathLike) -> "ModelCard":
        """The card of ``bundle``; a folder without one, a card that is not JSON, lacks a required field or
        has a format this ccad does not know is a :class:`ModelError`."""
        path = Path(bundle) / BUNDLE_CARD
        if not path.is_file():
            raise ModelError(f"{bundle}: not a ccad model bundle (no {BUNDLE_CARD}; make one with ccad export)")
        raw = _read_json(path)
        if not isinstance(raw, dict):
            raise ModelError(f"{path}: not a JSON object")
        version = raw.get("format")
        if version not in KNOWN_BUNDLE_FORMATS:
            raise ModelError(
                f"{path}: bundle format {version!r} is not one this ccad reads "
                f"({', '.join(KNOWN_BUNDLE_FORMATS)}); use the ccad version that wrote it"
            )
        return cls.from_dict(raw, str(path))

    def save(self, bundle: str | os.PathLike) -> None:
        write_json(Path(bundle) / BUNDLE_CARD, self.to_dict())

    def checked_file(self, bundle: str | os.PathLike, name: str) -> Path:
        """``bundle/name`` after checking it exists and matches the sha256 the card records."""
        path = Path(bundle) / name
        if not path.is_file():
            raise ModelError(f"{path}: missing from the bundle")
        expected = self.sha256.get(path.name)
        if expected is None:
            raise ModelError(f"{path}: not listed in the model card's sha256; the bundle was changed after export")
        if sha256(path) != expected:
            raise ModelError(f"{path}: sha256 differs from the model card; the file changed after export")
        return path


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ModelError(f"{path}: not readable JSON ({type(e).__name__})") from e
