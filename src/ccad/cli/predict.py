"""Commands that screen images with a model: predict (local or Ray), evaluate, audit."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from .base import (
    Command,
    add_data_args,
    model_of,
    print_summary,
    spec,
    stderr,
)
from .tables import FORMATS


def _add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        help="model bundle (ONNX Runtime), run folder or model file (default: the bundle "
        "shipped with ccad; research use)",
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGES_OR_FOLDERS")
    p.add_argument("--format", choices=FORMATS, default="table")
    p.add_argument("--out", help="write a CSV here, a row per image as it is scored (bundles)")
    p.add_argument("--resume", action="store_true", help="with --out: skip files already in the CSV")
    p.add_argument("--heatmap", metavar="OUTDIR", help="write each image with its heatmap overlaid (bundles)")
    p.add_argument("--int8", action="store_true", help="use the bundle's INT8 model")
    p.add_argument(
        "--score-anyway",
        action="store_true",
        help="research: score DICOM images outside what ccad scores (not CR/DX, not a frontal chest view); by "
        "default such an image gets a row with the reason instead of a probability",
    )
    p.add_argument(
        "--decode-min-side",
        type=int,
        metavar="PX",
        help="decode JPEG 2000 DICOM images at a lower resolution level keeping PX pixels a side (faster; "
        "p(COVID) may move by a few hundredths: BENCHMARKS.md, 'DICOM decoding')",
    )
    p.add_argument("--verify", metavar="PUBLIC_KEY", help="refuse a bundle not signed by this key's owner (PEM)")
    p.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="ray: Ray Data tasks decode, a pool of actors scores; --out is a folder of shards",
    )
    p.add_argument("--address", help="with --engine ray: join this Ray cluster (default: start a local one)")
    p.add_argument("--workers", type=int, default=2, help="with --engine ray: scoring actors")
    p.add_argument("--output-format", choices=["csv", "parquet"], default="csv", help="with --engine ray")


def _run_predict(args: argparse.Namespace) -> int | None:
    model = model_of(args)
    variant = "int8" if args.int8 else "float"
    if args.engine == "ray":
        if args.score_anyway or args.decode_min_side:
            raise ConfigError("--score-anyway and --decode-min-side work with the local engine, not with --engine ray")
        from ..deploy.scale import describe_summary, ray_predict

        summary = ray_predict(
            model,
            args.inputs,
            args.out,
            args.address,
            args.workers,
            resume=args.resume,
            output_format=args.output_format,
            variant=variant,
            verify_key=args.verify,
        )
        print(describe_summary(summary, args.out))
        return
    _predict_local(args, model, variant)


def _add_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="run folder or model file")
    add_data_args(p)
    p.add_argument("--out", required=True)
    p.add_argument("--split", choices=["test", "val", "all"], help="default: test when the data has splits, else all")
    p.add_argument("--seed", type=int, default=0, help="seed of the split (when the data has none) and bootstrap")
    p.add_argument(
        "--by",
        action="append",
        default=[],
        metavar="FIELD",
        help="also break the results down by FIELD: source, label, a manifest column, or a DICOM "
        "attribute (ViewPosition, Modality, Manufacturer, ...); repeatable",
    )


def _run_evaluate(args: argparse.Namespace) -> int | None:
    from ..evaluation.evaluate import evaluate_model
    from ..evaluation.subgroups import format_breakdown
    from ..screening import one_blas_thread

    one_blas_thread()  # a scoring job, as predict
    metrics = evaluate_model(args.model, spec(args), args.out, split=args.split, seed=args.seed, by=args.by)
    for name, rows in metrics.get("by", {}).items():
        print("\n".join(format_breakdown(name, rows)))
    print_summary(metrics, Path(args.out))


def _add_audit(p: argparse.ArgumentParser) -> None:
    add_data_args(p)
    p.add_argument("--model", required=True, help="model bundle, run folder or model file")
    p.add_argument("--out", required=True, help="folder for audit.json, report.html and figures")
    p.add_argument("--split", choices=["test", "val", "all"], help="default: the run's test split, else all")
    p.add_argument("--max-images", type=int, help="audit a random sample of this many images")
    p.add_argument("--seed", type=int, default=0)


def _run_audit(args: argparse.Namespace) -> int | None:
    from ..evaluation.audit import audit

    result = audit(args.model, spec(args), args.out, args.split, args.max_images, args.seed)
    for line in result["verdict"]:
        print(line)
    print(f"report: {Path(args.out) / 'report.html'}")


def _predict_local(args, model: str, variant: str) -> None:
    from ..io.inputs import expand_inputs
    from ..models.ood import OUT_OF_DISTRIBUTION_TEXT
    from ..screening import Intake, Screener, one_blas_thread
    from ..screening.results import NOT_A_DIAGNOSIS, check_outputs, predict_to_csv, save_overlays
    from .tables import format_results

    check_outputs(args.out, args.resume, args.heatmap)
    one_blas_thread()
    screener = Screener.load(
        model,
        variant=variant,
        verify_key=args.verify,
        intake=Intake(score_anyway=args.score_anyway, decode_min_side=args.decode_min_side),
    )
    if args.out:
        counts = predict_to_csv(screener, args.inputs, args.out, args.resume, args.heatmap)
        print(
            f"{counts['scored']} scored, {counts['errors']} unreadable or not scored, {counts['skipped_done']} "
            f"already done: {args.out} ({NOT_A_DIAGNOSIS})"
        )
        return
    results = list(screener.screen(expand_inputs(args.inputs), with_heatmaps=bool(args.heatmap)))
    if args.heatmap:
        save_overlays(results, args.heatmap)
    flagged = sum(r.in_distribution is False for r in results)
    if flagged:
        stderr(f"{flagged} image(s) flagged by the guard (in_distribution = false): {OUT_OF_DISTRIBUTION_TEXT}.")
    if args.format == "table":
        stderr("Screening aid, not a diagnosis.")
    print(format_results(results, screener, args.format))


COMMANDS = [
    Command("predict", "classify image files or folders", _add_predict, _run_predict),
    Command("evaluate", "score a trained model on labelled data", _add_evaluate, _run_evaluate),
    Command("audit", "shortcut audit: lung test, heatmap mass in the lungs, source probe", _add_audit, _run_audit),
]
