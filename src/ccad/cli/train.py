"""Commands that train and study models: train, cv, compare, reproduce-paper, severity, lungs, demo, synth,
augment-preview."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import CcadError
from .base import (
    Command,
    add_data_args,
    add_training_args,
    config,
    names,
    print_summary,
    spec,
    stderr,
)


def _add_train(p: argparse.ArgumentParser) -> None:
    add_data_args(p)
    p.add_argument("--out", required=True, help="run folder to write")
    add_training_args(p)


def _run_train(args: argparse.Namespace) -> int | None:
    from ..training.run import train

    result = train(spec(args), args.out, config(args), args.save_h5)
    print_summary(result.metrics, Path(args.out))


def _add_cv(p: argparse.ArgumentParser) -> None:
    add_data_args(p)
    p.add_argument("--out", required=True, help="folder for metrics.json, report.html and the fold runs")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument(
        "--group-by",
        choices=["patient", "source"],
        default="patient",
        help="source: leave-one-source-out folds (pool sources with several --data)",
    )
    p.add_argument("--keep-models", action="store_true", help="keep each fold's model.keras")
    add_training_args(p)


def _run_cv(args: argparse.Namespace) -> int | None:
    from ..studies.crossval import cross_validate

    summary = cross_validate(
        spec(args),
        args.out,
        config(args),
        args.folds,
        seed=args.seed or 0,
        keep_models=args.keep_models,
        group_by=args.group_by,
    )
    print_summary(summary["pooled"], Path(args.out))


def _add_compare(p: argparse.ArgumentParser) -> None:
    add_data_args(p)
    p.add_argument("--out", required=True, help="folder for comparison.json, comparison.md and the runs")
    p.add_argument("--backbones", default="mobilenet_v2", help="comma-separated, e.g. mobilenet_v2,vgg16,resnet50")
    p.add_argument("--heads", default="dense", help="comma-separated from dense, logreg, svm, extra-trees")
    add_training_args(p)
    p.set_defaults(preset="one-view-lungs")  # every head and backbone takes one view (the paper's Tables 3 and 9)


def _run_compare(args: argparse.Namespace) -> int | None:
    from ..studies.compare import compare

    selection = args.feature_selection or "none"  # applied per scikit-learn head, not in the training config
    summary = compare(
        spec(args),
        args.out,
        names(args.backbones),
        names(args.heads),
        config(args, feature_selection=None),
        feature_selection=selection,
        input_size=args.input_size,
    )
    print(Path(args.out, "comparison.md").read_text())
    print(f"runs and comparison.json in {args.out} (screening aid, not a diagnosis); {len(summary['rows'])} rows")


def _add_reproduce_paper(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="manifest CSV with paper_dataset_a / paper_dataset_b columns")
    p.add_argument("--out", required=True)
    p.add_argument("--cases", help="comma-separated subset of paper-a,paper-b,paper-b-10ep,paper-methods")
    p.add_argument("--epochs", type=int, help="override the presets' 10 frozen epochs (for a quick look)")
    p.add_argument("--fine-tune-epochs", type=int, help="override the 31 fine-tuning epochs (for a quick look)")
    p.add_argument("--seed", type=int, default=0)


def _run_reproduce_paper(args: argparse.Namespace) -> int | None:
    from ..studies.paper import reproduce_paper

    reproduce_paper(
        args.data,
        args.out,
        tuple(names(args.cases)) if args.cases else None,
        args.seed,
        args.epochs,
        args.fine_tune_epochs,
    )
    print(Path(args.out, "paper-reproduction.md").read_text())


def _add_severity(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="severity_command", required=True)
    t = actions.add_parser("train", help="fit and cross-validate a severity head on a bundle's features")
    t.add_argument("--model", required=True, help="model bundle (ccad export) whose backbone features are used")
    t.add_argument("--data", required=True, help="manifest CSV with geographic_extent and opacity columns")
    t.add_argument("--out", required=True, help="folder for severity.json, metrics.json, report.html")
    t.add_argument("--folds", type=int, default=5)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--attach", action="store_true", help="add the severity head to the bundle")
    a = actions.add_parser("attach", help="add a trained severity head to a bundle")
    a.add_argument("--model", required=True, help="model bundle")
    a.add_argument("--severity", required=True, help="severity.json (or the folder holding it)")


def _run_severity(args: argparse.Namespace) -> int | None:
    {"train": _severity_train, "attach": _severity_attach}[args.severity_command](args)


def _add_lungs(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="lungs_command", required=True)
    s = actions.add_parser("segment", help="a lung mask PNG per image (255 = lung), with QC flags")
    s.add_argument("inputs", nargs="+", metavar="FILES_OR_FOLDERS")
    s.add_argument("--out", required=True, help="folder for <stem>.png masks and lung_qc.csv")
    s.add_argument("--overlay", action="store_true", help="also write <stem>.overlay.png (outline on the image)")
    s.add_argument("--model", help="a segmenter folder (default: the one shipped with ccad)")
    t = actions.add_parser("train", help="train the segmenter on a mask manifest (image, mask, group columns)")
    t.add_argument("--data", required=True, help="manifest CSV, e.g. ../shared/data/lung-masks/manifest.csv")
    t.add_argument("--out", required=True, help="folder for lung-segmenter.onnx, its card, scores and overlays")
    t.add_argument("--size", type=int, default=192)
    t.add_argument("--epochs", type=int, default=35)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--weights", default="imagenet", help="imagenet (encoder) or none")


def _run_lungs(args: argparse.Namespace) -> int | None:
    {"segment": _lungs_segment, "train": _lungs_train}[args.lungs_command](args)


def _add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True)
    p.add_argument("--n-per-class", type=int, default=60)
    p.add_argument("--epochs", type=int, default=10)


def _run_demo(args: argparse.Namespace) -> int | None:
    from ..studies.demo import run_demo

    result = run_demo(args.out, n_per_class=args.n_per_class, epochs=args.epochs, log=stderr)
    print_summary(result.metrics, result.run_dir)


def _add_synth(p: argparse.ArgumentParser) -> None:
    p.add_argument("out")
    p.add_argument("--n-per-class", type=int, default=40)
    p.add_argument("--classes", default="covid,normal", help="from covid, normal, pneumonia")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layout", choices=["folders", "paper"], default="folders")


def _run_synth(args: argparse.Namespace) -> int | None:
    from ..data.synthetic import generate

    try:
        out = generate(args.out, args.n_per_class, args.classes.split(","), args.size, args.seed, args.layout)
    except ValueError as e:
        raise CcadError(str(e)) from e
    print(f"wrote synthetic data set to {out} (manifest: {out / 'manifest.csv'})")


def _add_augment_preview(p: argparse.ArgumentParser) -> None:
    add_data_args(p)
    p.add_argument("--augmentation", choices=["cxr", "robust", "paper", "none"], default="cxr")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--variants", type=int, default=5)
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--seed", type=int, default=0)


def _run_augment_preview(args: argparse.Namespace) -> int | None:
    from ..preprocessing.preview import augment_preview

    path = augment_preview(
        spec(args), args.out, args.augmentation, args.images, args.variants, args.input_size, args.seed
    )
    print(f"wrote {path}")


def _lungs_segment(args) -> None:
    from ..models.lungs import segment_files

    counts = segment_files(args.inputs, args.out, args.overlay, args.model, log=stderr)
    print(
        f"{counts['segmented']} segmented ({counts['flagged']} with QC flags), {counts['errors']} unreadable: "
        f"{args.out} (see lung_qc.csv)"
    )


def _lungs_train(args) -> None:
    from ..training.lung_segmenter import train_segmenter
    from ..training.lung_segmenter_scores import describe_scores

    card = train_segmenter(
        args.data,
        args.out,
        args.size,
        args.epochs,
        seed=args.seed,
        weights=None if args.weights == "none" else args.weights,
        log=stderr,
    )
    print(f"{describe_scores(card)}: {args.out}")
    print("to ship it: copy lung-segmenter.onnx and lung-segmenter.json into src/ccad/models/")


def _severity_train(args) -> None:
    from ..training.severity import describe_scores, train_severity

    result = train_severity(args.model, args.data, args.out, args.folds, args.seed, args.attach)
    print(describe_scores(result))
    print(f"report: {Path(args.out) / 'report.html'}" + (f"; attached to {args.model}" if args.attach else ""))


def _severity_attach(args) -> None:
    from ..training.severity import attach_severity

    attach_severity(args.model, args.severity)
    print(f"attached {args.severity} to {args.model}")


COMMANDS = [
    Command("train", "train a classifier and evaluate it on the test split", _add_train, _run_train),
    Command("cv", "patient-grouped k-fold cross-validation with ccad train's settings", _add_cv, _run_cv),
    Command(
        "compare",
        "backbones and heads trained and scored on one split (the paper's Tables 3, 9)",
        _add_compare,
        _run_compare,
    ),
    Command(
        "reproduce-paper",
        "the paper's cases (paper-a on Dataset A; paper-b, paper-b-10ep, "
        "paper-methods on B), its Tables 5-9 beside ours",
        _add_reproduce_paper,
        _run_reproduce_paper,
    ),
    Command("severity", "radiographic severity scores of COVID cases (regression head)", _add_severity, _run_severity),
    Command("lungs", "the lung segmenter: segment X-rays, or retrain it", _add_lungs, _run_lungs),
    Command("demo", "synthetic data -> train -> evaluate -> report, offline", _add_demo, _run_demo),
    Command("synth", "write a synthetic chest-X-ray-like data set", _add_synth, _run_synth),
    Command("augment-preview", "save a grid of augmented training samples", _add_augment_preview, _run_augment_preview),
]
