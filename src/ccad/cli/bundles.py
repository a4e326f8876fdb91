"""Commands that make and change model bundles: export, calibrate, adapt, guard, sign, keys."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import CcadError
from .base import (
    Command,
    add_data_args,
    model_of,
    spec,
)


def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="run folder or model file")
    p.add_argument("--out", required=True, help="bundle folder to write")
    p.add_argument("--int8", action="store_true", help="also a static INT8 ONNX model")
    p.add_argument("--calibration-data", help="images for INT8 calibration (default: the run's training split)")
    p.add_argument("--tflite", action="store_true", help="also TFLite float and int8 models")
    p.add_argument("--sign", metavar="PRIVATE_KEY", help="sign the bundle's card with this Ed25519 key (PEM)")
    p.add_argument(
        "--provenance",
        metavar="JSON_FILE",
        help="what the card should say of the data's sources, "
        "licences and intended use (a JSON object, copied into the card as `provenance`)",
    )
    p.add_argument("--overwrite", action="store_true")


def _run_export(args: argparse.Namespace) -> int | None:
    from ..bundles.export import export_bundle

    provenance = None
    if args.provenance:
        import json

        try:
            provenance = json.loads(Path(args.provenance).read_text())
        except ValueError as e:
            raise CcadError(f"--provenance {args.provenance}: not JSON ({e})") from None
        if not isinstance(provenance, dict):
            raise CcadError(f"--provenance {args.provenance}: must be a JSON object")
    out = export_bundle(
        args.model,
        args.out,
        args.int8,
        args.calibration_data,
        args.tflite,
        overwrite=args.overwrite,
        sign_key=args.sign,
        provenance=provenance,
    )
    print(f"wrote model bundle {out}" + (" (signed)" if args.sign else ""))


def _add_calibrate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model bundle (default: the bundle shipped with ccad)")
    add_data_args(p)
    p.add_argument("--target", required=True, help="specificity=T (needs only the site's normals) or sensitivity=T")
    p.add_argument("--out", required=True, help="the new bundle's folder")
    p.add_argument(
        "--unlabelled",
        metavar="FOLDER",
        help="also refit the out-of-distribution reference on these images of the site (at least 50)",
    )
    p.add_argument("--sign", metavar="PRIVATE_KEY", help="sign the new bundle's card (Ed25519, PEM)")
    p.add_argument("--overwrite", action="store_true")


def _run_calibrate(args: argparse.Namespace) -> int | None:
    model = model_of(args)
    from ..bundles.calibrate import calibrate_bundle

    record = calibrate_bundle(model, spec(args), args.target, args.out, args.unlabelled, args.sign, args.overwrite)
    ((name, value),) = record["target"].items()
    achieved = record["achieved"][name]
    low, high = achieved["ci95"]
    print(
        f"threshold p >= {record['threshold']:.3f} (bootstrap 95% interval {record['threshold_bootstrap_ci95'][0]:.3f}"
        f"-{record['threshold_bootstrap_ci95'][1]:.3f}): {name} {achieved['value']:.3f} [{low:.3f}, {high:.3f}] on "
        f"{achieved['n']} images of {record['data']['source']}"
    )
    other = next((k for k in record["achieved"] if k != name), None)
    if record["achieved"].get(other):
        entry = record["achieved"][other]
        print(
            f"  {other} at it: {entry['value']:.3f} [{entry['ci95'][0]:.3f}, {entry['ci95'][1]:.3f}] "
            f"on {entry['n']} images"
        )
    print(
        f"wrote {args.out}" + (" (signed)" if args.sign else "") + "; measured on the images it was fitted on: "
        "check it on others (ccad evaluate)"
    )


def _add_adapt(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model bundle (default: the bundle shipped with ccad)")
    add_data_args(p)
    p.add_argument("--out", required=True, help="the new bundle's folder")
    p.add_argument(
        "--test-fraction",
        type=float,
        default=0.3,
        help="share of the site's patients held out to measure before and after (default 0.3)",
    )
    p.add_argument(
        "--l2",
        type=float,
        default=1e-2,
        help="pull of the new head weights towards the old ones "
        "(default 0.01: of 0.0001, 0.001 and 0.01 on a worked example, the one that forgot least and gained most)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sign", metavar="PRIVATE_KEY", help="sign the new bundle's card (Ed25519, PEM)")
    p.add_argument("--overwrite", action="store_true")


def _run_adapt(args: argparse.Namespace) -> int | None:
    model = model_of(args)
    from ..bundles.adapt import adapt_bundle
    from ..evaluation.metrics import format_interval

    record = adapt_bundle(
        model, spec(args), args.out, args.test_fraction, args.l2, args.seed, args.sign, args.overwrite
    )
    split = record["split"]
    print(
        f"adapted on {split['adapt']} images of {record['data']['source']}; held-out local test: {split['test']} "
        f"images ({record['settings']['rehearsal_images']} rehearsal images of the base model's training data)"
    )
    for when in ("before", "after"):
        m = record["local_test"][when]
        print(
            f"  {when}: "
            + ", ".join(f"{k} {format_interval(m[k])}" for k in ("auc", "sensitivity", "specificity") if m.get(k))
        )
    if "auc_after" in record["rehearsal"]:
        r = record["rehearsal"]
        print(
            f"  base model's training sources ({r['images_checked']} rehearsal images kept out of the fit): AUC "
            f"{r['auc_before']:.3f} -> {r['auc_after']:.3f}"
        )
    print(
        f"wrote {args.out}" + (" (signed)" if args.sign else "") + " (float model only; screening aid, not a diagnosis)"
    )


def _add_guard(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model bundle (default: the bundle shipped with ccad)")
    add_data_args(p)
    p.add_argument("--out", required=True, help="the new bundle's folder")
    p.add_argument("--evidence", metavar="JSON", help="a benchmarks/guard.py report to cite in the card")
    p.add_argument("--sign", metavar="PRIVATE_KEY", help="sign the new bundle's card (Ed25519, PEM)")
    p.add_argument("--overwrite", action="store_true")


def _run_guard(args: argparse.Namespace) -> int | None:
    model = model_of(args)
    from ..bundles.guard import refit_guard

    entry = refit_guard(model, spec(args), args.out, args.evidence, args.sign, args.overwrite)
    fitted = entry["fitted"]
    print(
        f"guard fitted on {fitted['films']} training films and the foreign inputs made from them; cut-off "
        f"{entry['cutoff']:.3g} keeps 99% of {fitted['cutoff_films']} validation films"
        + ("" if fitted["same_data_as_the_model"] else " (not the data the model was trained on)")
    )
    print(f"wrote {args.out}" + (" (signed)" if args.sign else ""))


def _add_sign(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model bundle folder")
    p.add_argument("--key", required=True, help="private key (PEM), e.g. from ccad keys")


def _run_sign(args: argparse.Namespace) -> int | None:
    from ..models.signing import sign_bundle

    print(f"wrote {sign_bundle(args.model, args.key)}")


def _add_keys(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="folder for ccad-signing.key.pem (private) and ccad-signing.pub.pem")


def _run_keys(args: argparse.Namespace) -> int | None:
    from ..models.signing import make_keys

    private, public = make_keys(args.out)
    print(f"private key {private} (keep it secret), public key {public} (give it to predict/serve --verify)")


COMMANDS = [
    Command("export", "export a run to a model bundle (ONNX, optional INT8 and TFLite)", _add_export, _run_export),
    Command(
        "calibrate",
        "refit a bundle's threshold (and out-of-distribution reference) on a site's own images: a new bundle",
        _add_calibrate,
        _run_calibrate,
    ),
    Command(
        "adapt",
        "fine-tune a bundle's head(s) on a site's labelled images (rehearsing its own "
        "training features), held-out local test before and after: a new bundle",
        _add_adapt,
        _run_adapt,
    ),
    Command(
        "guard",
        "refit a bundle's out-of-distribution guard (is this a frontal chest X-ray?) on labelled films, "
        "split as ccad train splits them: a new bundle",
        _add_guard,
        _run_guard,
    ),
    Command("sign", "sign a model bundle (Ed25519) so that predict/serve --verify accept it", _add_sign, _run_sign),
    Command("keys", "make an Ed25519 key pair for signing bundles", _add_keys, _run_keys),
]
