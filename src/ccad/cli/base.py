"""What every command shares: the :class:`Command` record, the argument groups several commands take, and the
steps from parsed arguments to the library's inputs (a data selection, a training configuration, a model)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .._meta import DEFAULT_POSITIVE
from ..options import options


@dataclass(frozen=True)
class Command:
    """One ``ccad`` command: its name and help, what it adds to its parser, and what it runs (an exit code, or
    None for 0). ``run`` reads the parsed arguments and never changes them."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], "int | None"]


def add_data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--data",
        required=required,
        action="append",
        help="class folders, train/+test/ folders, or a manifest CSV; repeat to pool several sources",
    )
    p.add_argument(
        "--classes",
        type=lambda s: [c.strip() for c in s.split(",") if c.strip()],
        help="classes to use, in order (e.g. covid,normal); default: all found",
    )
    p.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="COLUMN=VALUE",
        help="keep manifest rows where COLUMN equals VALUE (repeatable; with several --data, "
        "applied to each manifest that has the column)",
    )
    p.add_argument(
        "--relabel",
        action="append",
        default=[],
        metavar="[SOURCE:]OLD=NEW",
        help="change a label before --classes picks rows, in one source or all (repeatable), "
        "e.g. cohen-covid-chestxray:pneumonia=normal",
    )
    p.add_argument("--positive", default=DEFAULT_POSITIVE, help="class that sensitivity/specificity/ROC refer to")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable files and list them, instead of stopping")


PRESET_HELP = (
    "default: the shipped model's recipe (two views, specificity-90); one-view-lungs / one-view-thorax: one view, "
    "Youden's threshold (faster; any head, fine-tuning); paper-a / paper-b / paper-b-10ep / paper-methods: the "
    "paper's cases"
)


def add_training_args(p: argparse.ArgumentParser) -> None:
    from ..models.classifier import BACKBONES
    from ..models.decision import CALIBRATIONS
    from ..models.heads import FEATURE_SELECTIONS, HEADS
    from ..preprocessing.augmentation import PRESETS as AUGMENTATIONS
    from ..training.config import OPTIMIZERS, PRESETS

    p.add_argument("--preset", choices=list(PRESETS), default="default", help=PRESET_HELP)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--optimizer", choices=OPTIMIZERS)
    p.add_argument("--lr", type=float)
    p.add_argument("--dropout", type=float)
    p.add_argument("--input-size", type=int, help="default: the backbone's (224; 299 for inception_*, xception)")
    p.add_argument("--backbone", choices=list(BACKBONES), help="ImageNet backbone (default mobilenet_v2, the paper's)")
    p.add_argument("--head", choices=list(HEADS), help="classifier on the pooled features (default dense)")
    p.add_argument(
        "--feature-selection",
        choices=list(FEATURE_SELECTIONS),
        help="woa: Whale Optimization Algorithm feature selection, fitted on the training split",
    )
    p.add_argument("--augmentation", choices=list(AUGMENTATIONS))
    p.add_argument(
        "--preprocess",
        help="input normalization: none, or steps joined with + from thorax|lungs, "
        "clahe, equalize, lowpass (e.g. thorax+equalize); two views of each "
        "X-ray joined with | (e.g. 'thorax+equalize+lowpass|lungs+equalize+lowpass')",
    )
    p.add_argument(
        "--threshold",
        help="decision rule fitted on validation: specificity-90 (default), youden, "
        "specificity-95, sensitivity-85|90|95, argmax, or a number",
    )
    p.add_argument("--calibration", choices=CALIBRATIONS, help="temperature: fit temperature scaling on validation")
    p.add_argument(
        "--feature-views",
        type=int,
        help="augmented views per image whose backbone features are cached (0: stream every epoch)",
    )
    p.add_argument("--weights", help="imagenet, none, or a MobileNetV2 no-top .h5 weights file")
    p.add_argument("--seed", type=int)
    p.add_argument("--class-weight", choices=["balanced"])
    p.add_argument("--fine-tune-epochs", type=int)
    p.add_argument(
        "--fine-tune-from",
        help="first backbone layer to unfreeze, or all (default block_13_expand; the paper-a/paper-b presets: all)",
    )
    p.add_argument("--fine-tune-lr", type=float)
    p.add_argument("--save-h5", action="store_true", help="also write the paper's model.h5")
    p.add_argument(
        "--distributed",
        action="store_true",
        help="train under tf.distribute.MultiWorkerMirroredStrategy; workers from TF_CONFIG",
    )


def add_settings(p: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """A flag for each field of the settings class ``cls`` that has one (:func:`ccad.options.option`), but those
    in ``skip``; the flag's destination is the field's name, so that an error naming the field is said in the
    flag's words (:func:`ccad.cli.flag_words`)."""
    for option in options(cls):
        if option.name in skip:
            continue
        if option.kind is bool:
            action = "store_false" if option.default else "store_true"
            p.add_argument(option.flag, dest=option.name, action=action, help=option.help)
            continue
        p.add_argument(
            option.flag,
            dest=option.name,
            type=float if option.unit != 1 else (str if option.kind is Path else option.kind),
            default=option.to_flag(option.default),
            metavar=option.metavar or option.flag.lstrip("-").upper().replace("-", "_"),
            help=option.help
            + (
                ""
                if option.default is None
                else " (default: %(default)g)"
                if option.kind in (int, float)
                else " (default: %(default)s)"
            ),
        )


def settings_from(args: argparse.Namespace, cls: type, *given, **named):
    """An instance of ``cls`` from the parsed flags :func:`add_settings` added (a field without its flag here
    keeps its default), the other fields from ``given`` and ``named``."""
    values = {o.name: o.from_flag(getattr(args, o.name)) for o in options(cls) if hasattr(args, o.name)}
    return cls(*given, **{**values, **named})


def date_arg(text: str):
    from datetime import date

    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def port_arg(text: str) -> int:
    port = int(text) if text.isdigit() else -1
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"not a TCP port (1-65535): {text!r}")
    return port


def spec(args):
    """The data selection of a command with the data options (one ``--data``: a path, as before pooling
    existed)."""
    from ..data.datasets import DataSpec

    data = args.data[0] if isinstance(args.data, list) and len(args.data) == 1 else args.data
    return DataSpec(data, args.classes, args.where, args.positive, args.relabel, args.skip_bad)


def config(args, **overrides):
    """The training configuration of ``--preset`` and the training options; ``overrides`` replace options."""
    from ..training.config import make_config

    options = {
        name: getattr(args, name, None)
        for name in (
            "epochs",
            "batch_size",
            "optimizer",
            "lr",
            "dropout",
            "input_size",
            "augmentation",
            "feature_views",
            "weights",
            "seed",
            "class_weight",
            "fine_tune_epochs",
            "fine_tune_from",
            "fine_tune_lr",
            "preprocess",
            "threshold",
            "calibration",
            "backbone",
            "head",
            "feature_selection",
        )
    }
    options["distributed"] = getattr(args, "distributed", None) or None
    return make_config(args.preset, **{**options, **overrides})


def stderr(message: str) -> None:
    print(message, file=sys.stderr)


def print_summary(metrics, folder: Path) -> None:
    from ..evaluation.metrics import summary_line

    if metrics:
        print(summary_line(metrics))
        print(f"report: {folder / 'report.html'}  (screening aid, not a diagnosis)")


def names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def model_of(args) -> str:
    """``--model``, or the bundle shipped with ccad when it is not given (said on stderr)."""
    if args.model:
        return args.model
    from ..models.card import default_bundle

    model = str(default_bundle())
    stderr(
        f"using the model shipped with ccad ({model}; research use, not a diagnosis: its card says "
        "what it was and was not tested on)"
    )
    return model
