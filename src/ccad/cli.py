"""The ``ccad`` command line: argument parsing over the Python API, nothing more.

Every :class:`ccad.errors.CcadError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import DEFAULT_POSITIVE
from .errors import CcadError, ConfigError

EXIT_USAGE = 2
#: Which extra brings a module a command may need (the base install predicts and serves on ONNX Runtime).
EXTRAS = {
    "tensorflow": "train",
    "keras": "train",
    "tf2onnx": "train",
    "onnx": "train",
    "skl2onnx": "train",
    "ai_edge_litert": "train",
    "ray": "scale",
    "pyarrow": "scale",
}


def _add_data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
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


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a classifier and evaluate it on the test split")
    _add_data_args(p)
    p.add_argument("--out", required=True, help="run folder to write")
    _add_training_args(p)


def _cv_parser(sub) -> None:
    p = sub.add_parser("cv", help="patient-grouped k-fold cross-validation with ccad train's settings")
    _add_data_args(p)
    p.add_argument("--out", required=True, help="folder for metrics.json, report.html and the fold runs")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument(
        "--group-by",
        choices=["patient", "source"],
        default="patient",
        help="source: leave-one-source-out folds (pool sources with several --data)",
    )
    p.add_argument("--keep-models", action="store_true", help="keep each fold's model.keras")
    _add_training_args(p)


def _reproduce_parser(sub) -> None:
    p = sub.add_parser(
        "reproduce-paper",
        help="the paper's cases (paper-a on Dataset A; paper-b, paper-b-10ep, "
        "paper-methods on B), its Tables 5-9 beside ours",
    )
    p.add_argument("--data", required=True, help="manifest CSV with paper_dataset_a / paper_dataset_b columns")
    p.add_argument("--out", required=True)
    p.add_argument("--cases", help="comma-separated subset of paper-a,paper-b,paper-b-10ep,paper-methods")
    p.add_argument("--epochs", type=int, help="override the presets' 10 frozen epochs (for a quick look)")
    p.add_argument("--fine-tune-epochs", type=int, help="override the 31 fine-tuning epochs (for a quick look)")
    p.add_argument("--seed", type=int, default=0)


def _compare_parser(sub) -> None:
    p = sub.add_parser("compare", help="backbones and heads trained and scored on one split (the paper's Tables 3, 9)")
    _add_data_args(p)
    p.add_argument("--out", required=True, help="folder for comparison.json, comparison.md and the runs")
    p.add_argument("--backbones", default="mobilenet_v2", help="comma-separated, e.g. mobilenet_v2,vgg16,resnet50")
    p.add_argument("--heads", default="dense", help="comma-separated from dense, logreg, svm, extra-trees")
    _add_training_args(p)


def _severity_parser(sub) -> None:
    p = sub.add_parser("severity", help="radiographic severity scores of COVID cases (regression head)")
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


def _audit_parser(sub) -> None:
    p = sub.add_parser("audit", help="shortcut audit: lung test, heatmap mass in the lungs, source probe")
    _add_data_args(p)
    p.add_argument("--model", required=True, help="model bundle, run folder or model file")
    p.add_argument("--out", required=True, help="folder for audit.json, report.html and figures")
    p.add_argument("--split", choices=["test", "val", "all"], help="default: the run's test split, else all")
    p.add_argument("--max-images", type=int, help="audit a random sample of this many images")
    p.add_argument("--seed", type=int, default=0)


def _lungs_parser(sub) -> None:
    p = sub.add_parser("lungs", help="the lung segmenter: segment X-rays, or retrain it")
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


def _dicom_parser(sub) -> None:
    p = sub.add_parser("dicom", help="in the PACS workflow: receive X-rays over DICOM, send results back")
    actions = p.add_subparsers(dest="dicom_command", required=True)
    s = actions.add_parser(
        "listen",
        help="a DICOM Storage SCP that scores CR/DX/SC chest X-rays and sends a "
        "structured report and a heatmap capture into the same study",
    )
    _add_delivery_args(s)
    s.add_argument("--ae-title", default="CCAD")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=11112)
    s.add_argument(
        "--max-dataset-mb",
        type=float,
        default=256,
        help="refuse (0xA700) a data set larger than this "
        "as received; a deflated one is also refused when it would inflate past the pixel limit",
    )
    s.add_argument("--metrics-port", type=_port, help="serve Prometheus metrics on this port of --host")
    _add_monitoring_args(s)
    s = actions.add_parser(
        "pull",
        help="find CR/DX chest X-rays in a DICOMweb archive (QIDO-RS), fetch (WADO-RS) "
        "and score them like the listener; resumable",
    )
    s.add_argument("--from", dest="source", required=True, metavar="URL", help="the archive's DICOMweb base URL")
    which = s.add_mutually_exclusive_group(required=True)
    which.add_argument("--study", metavar="UID", help="one study")
    which.add_argument("--since", type=_date, help="the studies dated this day (YYYY-MM-DD) or later")
    s.add_argument("--timeout", type=float, default=3600, help="seconds to wait for every result to be sent")
    s.add_argument(
        "--from-auth",
        metavar="FILE",
        help="the archive's credentials, as --dicomweb-auth (or "
        "CCAD_DICOMWEB_SOURCE_TOKEN / _USER and _PASSWORD); the destination's are never sent to it",
    )
    _add_delivery_args(s)
    s.set_defaults(
        ae_title="CCAD",
        host="127.0.0.1",
        port=0,
        max_dataset_mb=256,
        metrics_port=None,
        result_log=None,
        drift_window=200,
    )


def _add_delivery_args(s) -> None:
    s.add_argument("--model", help="a model bundle (ccad export; default: the bundle shipped with ccad)")
    s.add_argument(
        "--send-to",
        required=True,
        metavar="AET@HOST:PORT|dicomweb+URL",
        help="where results go: "
        "C-STORE (e.g. ORTHANC@127.0.0.1:4242) or STOW-RS (e.g. dicomweb+https://pacs/dicom-web)",
    )
    s.add_argument(
        "--dicomweb-auth",
        metavar="FILE",
        help="DICOMweb credentials: 'bearer TOKEN' or "
        "'USER:PASSWORD' on the first line (or CCAD_DICOMWEB_TOKEN / CCAD_DICOMWEB_USER and _PASSWORD)",
    )
    s.add_argument("--ca-file", metavar="PEM", help="certificate authority for https (TLS is always verified)")
    s.add_argument(
        "--fhir",
        metavar="URL|DIR",
        help="a FHIR R4 DiagnosticReport an image: PUT to this FHIR base "
        "URL (token from CCAD_FHIR_TOKEN), or written into this folder",
    )
    s.add_argument(
        "--fhir-patient-system",
        metavar="URI",
        help="name the patient in the FHIR report by its "
        "Patient ID under this identifier system (default: no patient reference)",
    )
    s.add_argument("--spool", default="ccad-spool", help="folder where received images and unsent results wait")
    s.add_argument("--int8", action="store_true", help="score with the bundle's INT8 model")
    s.add_argument("--workers", type=int, default=1, help="scoring threads")
    s.add_argument(
        "--queue-size",
        type=int,
        default=32,
        help="images waiting to be scored before C-STORE is answered 0xA700 (out of resources), or before pull waits",
    )
    s.add_argument("--retry-max-s", type=float, default=60.0, help="longest wait between delivery attempts")


def cmd_dicom(args) -> int | None:
    _model(args)
    from .deploy.logs import configure_logging
    from .deploy.pacs.listener import Destination, Listener, ListenerSettings

    configure_logging()
    settings = ListenerSettings(
        Path(args.model),
        Destination.parse(args.send_to),
        Path(args.spool),
        args.ae_title,
        args.host,
        args.port,
        args.int8,
        args.workers,
        args.queue_size,
        args.retry_max_s,
        max_dataset_bytes=int(args.max_dataset_mb * 2**20),
        metrics_port=args.metrics_port,
        result_log=Path(args.result_log) if args.result_log else None,
        drift_window=args.drift_window,
        dicomweb_auth=Path(args.dicomweb_auth) if args.dicomweb_auth else None,
        ca_file=Path(args.ca_file) if args.ca_file else None,
        fhir=args.fhir,
        fhir_patient_system=args.fhir_patient_system,
    )
    if args.dicom_command == "pull":
        from .deploy.pacs.dicomweb import WebDestination
        from .deploy.pacs.pull import pull

        source = WebDestination.parse(args.source).url
        counts = pull(
            settings,
            source,
            args.study,
            args.since.strftime("%Y%m%d") if args.since else None,
            args.timeout,
            source_auth=Path(args.from_auth) if args.from_auth else None,
        )
        print(
            f"{counts['found']} instances found, {counts['already_done']} done before, {counts['in_the_spool']} "
            f"resumed from the spool, {counts['fetched']} fetched ({counts['fetch_failures']} could not be, "
            f"{counts['refused']} refused as the listener would); {counts['scored']} scored, "
            f"{counts['not_scored']} not scored (their reports say why), {counts['sent']} results sent"
            + ("" if counts["complete"] else f"; some results still wait in {args.spool} (run again to resume)")
        )
        return 0 if counts["complete"] and not counts["fetch_failures"] else 1
    Listener(settings).serve_forever()


def cmd_lungs(args) -> None:
    {"segment": _lungs_segment, "train": _lungs_train}[args.lungs_command](args)


def _lungs_segment(args) -> None:
    from .models.lungs import segment_files

    counts = segment_files(args.inputs, args.out, args.overlay, args.model, log=_stderr)
    print(
        f"{counts['segmented']} segmented ({counts['flagged']} with QC flags), {counts['errors']} unreadable: "
        f"{args.out} (see lung_qc.csv)"
    )


def _lungs_train(args) -> None:
    from .training.lung_segmenter import describe_scores, train_segmenter

    card = train_segmenter(
        args.data,
        args.out,
        args.size,
        args.epochs,
        seed=args.seed,
        weights=None if args.weights == "none" else args.weights,
        log=_stderr,
    )
    print(f"{describe_scores(card)}: {args.out}")
    print("to ship it: copy lung-segmenter.onnx and lung-segmenter.json into src/ccad/models/")


def _add_training_args(p: argparse.ArgumentParser) -> None:
    from .models.classifier import BACKBONES
    from .models.decision import CALIBRATIONS
    from .models.heads import FEATURE_SELECTIONS, HEADS
    from .preprocessing.augmentation import PRESETS as AUGMENTATIONS
    from .training.config import OPTIMIZERS, PRESETS

    p.add_argument(
        "--preset",
        choices=list(PRESETS),
        default="default",
        help="paper-a / paper-b / paper-b-10ep / paper-methods: the paper's cases; default: our recipe",
    )
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
        help="decision rule fitted on validation: youden (default), specificity-90, "
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


def _date(text: str):
    from datetime import date

    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _port(text: str) -> int:
    port = int(text) if text.isdigit() else -1
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"not a TCP port (1-65535): {text!r}")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ccad", description="COVID-19 chest X-ray screening aid (not a diagnosis)")
    parser.add_argument("--version", action="version", version=f"ccad {__import__('ccad').__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    _cv_parser(sub)
    _audit_parser(sub)
    _severity_parser(sub)
    _lungs_parser(sub)
    _dicom_parser(sub)
    _compare_parser(sub)
    _reproduce_parser(sub)

    p = sub.add_parser("evaluate", help="score a trained model on labelled data")
    p.add_argument("--model", required=True, help="run folder or model file")
    _add_data_args(p)
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

    p = sub.add_parser("predict", help="classify image files or folders")
    p.add_argument(
        "--model",
        help="model bundle (ONNX Runtime), run folder or model file (default: the bundle "
        "shipped with ccad; research use)",
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGES_OR_FOLDERS")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table")
    p.add_argument("--out", help="write a CSV here, a row per image as it is scored (bundles)")
    p.add_argument("--resume", action="store_true", help="with --out: skip files already in the CSV")
    p.add_argument("--heatmap", metavar="OUTDIR", help="write each image with its heatmap overlaid (bundles)")
    p.add_argument("--int8", action="store_true", help="use the bundle's INT8 model")
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

    p = sub.add_parser("export", help="export a run to a model bundle (ONNX, optional INT8 and TFLite)")
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

    p = sub.add_parser(
        "calibrate",
        help="refit a bundle's threshold (and out-of-distribution reference) on a site's own images: a new bundle",
    )
    p.add_argument("--model", help="model bundle (default: the bundle shipped with ccad)")
    _add_data_args(p)
    p.add_argument("--target", required=True, help="specificity=T (needs only the site's normals) or sensitivity=T")
    p.add_argument("--out", required=True, help="the new bundle's folder")
    p.add_argument(
        "--unlabelled",
        metavar="FOLDER",
        help="also refit the out-of-distribution reference on these images of the site (at least 50)",
    )
    p.add_argument("--sign", metavar="PRIVATE_KEY", help="sign the new bundle's card (Ed25519, PEM)")
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser(
        "adapt",
        help="fine-tune a bundle's head(s) on a site's labelled images (rehearsing its own "
        "training features), held-out local test before and after: a new bundle",
    )
    p.add_argument("--model", help="model bundle (default: the bundle shipped with ccad)")
    _add_data_args(p)
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

    p = sub.add_parser(
        "validate",
        help="local acceptance test: criteria written before the run (TOML), each "
        "judged on its 95%% interval: pass, fail or not enough images to tell",
    )
    p.add_argument("--model", help="model bundle or run (default: the bundle shipped with ccad)")
    _add_data_args(p)
    p.add_argument("--criteria", required=True, metavar="TOML", help="the site's acceptance criteria")
    p.add_argument("--out", required=True)
    p.add_argument("--split", choices=["test", "val", "all"], default="all", help="default: all (a site's own set)")
    p.add_argument(
        "--by",
        action="append",
        default=[],
        metavar="FIELD",
        help="also break the results down by FIELD (added to the criteria file's subgroups)",
    )

    p = sub.add_parser(
        "monitor",
        help="what a result log (serve/dicom listen --result-log) says by day, week or "
        "month: images, positive and out-of-distribution rates, drift; HTML and JSON",
    )
    p.add_argument("log", help="the result log (JSON Lines)")
    p.add_argument("--out", required=True)
    p.add_argument("--period", choices=["day", "week", "month"], default="day")
    p.add_argument("--since", type=_date, help="first day (YYYY-MM-DD, UTC)")
    p.add_argument("--until", type=_date, help="last day (YYYY-MM-DD, UTC)")
    p.add_argument("--model", help="also compare each period with this bundle's reference (PSI)")

    p = sub.add_parser("sign", help="sign a model bundle (Ed25519) so that predict/serve --verify accept it")
    p.add_argument("--model", required=True, help="model bundle folder")
    p.add_argument("--key", required=True, help="private key (PEM), e.g. from ccad keys")

    p = sub.add_parser("keys", help="make an Ed25519 key pair for signing bundles")
    p.add_argument("--out", required=True, help="folder for ccad-signing.key.pem (private) and ccad-signing.pub.pem")

    p = sub.add_parser("serve", help="the web tool and REST API for a model bundle (ONNX Runtime)")
    p.add_argument("--model", help="model bundle folder (ccad export; default: the bundle shipped with ccad)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=8000)
    p.add_argument("--api-key", default=os.environ.get("CCAD_API_KEY"), help="require this key (also CCAD_API_KEY)")
    p.add_argument("--int8", action="store_true", help="serve the bundle's INT8 model")
    p.add_argument("--max-upload-mb", type=float, default=20, help="largest file")
    p.add_argument("--max-request-mb", type=float, default=40, help="largest request (all its files)")
    p.add_argument("--workers", type=int, default=2, help="decoding threads (and ONNX Runtime threads)")
    p.add_argument("--queue", type=int, default=32, help="requests allowed to wait before 503")
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        default=5.0,
        help="how long an image waits for others to be scored with it (micro-batching; 0: no waiting)",
    )
    p.add_argument("--max-batch", type=int, default=16, help="most images in one model call")
    p.add_argument(
        "--keep-uploads",
        metavar="DIR",
        help="store each upload's decoded pixels here (16-bit PNG, no header, mode 0600); default: never",
    )
    p.add_argument("--verify", metavar="PUBLIC_KEY", help="refuse a bundle not signed by this key's owner (PEM)")
    p.add_argument("--docs", action="store_true", help="serve /docs (Swagger UI loads its scripts from a CDN)")
    p.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        help="close a connection that has not sent a request's headers within this many seconds",
    )
    _add_monitoring_args(p)
    p.add_argument("--no-metrics", action="store_true", help="do not serve /metrics")

    p = sub.add_parser("demo", help="synthetic data -> train -> evaluate -> report, offline")
    p.add_argument("--out", required=True)
    p.add_argument("--n-per-class", type=int, default=60)
    p.add_argument("--epochs", type=int, default=10)

    p = sub.add_parser("synth", help="write a synthetic chest-X-ray-like data set")
    p.add_argument("out")
    p.add_argument("--n-per-class", type=int, default=40)
    p.add_argument("--classes", default="covid,normal", help="from covid, normal, pneumonia")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layout", choices=["folders", "paper"], default="folders")

    p = sub.add_parser("augment-preview", help="save a grid of augmented training samples")
    _add_data_args(p)
    p.add_argument("--augmentation", choices=["cxr", "robust", "paper", "none"], default="cxr")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--variants", type=int, default=5)
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--seed", type=int, default=0)
    return parser


def _add_monitoring_args(p) -> None:
    p.add_argument(
        "--result-log",
        metavar="FILE",
        help="append one JSON line an image scored (no patient field: "
        "hashed UID, time, decision, score, flags, drift state); ccad monitor reads it",
    )
    p.add_argument("--drift-window", type=int, default=200, help="images in the drift check's rolling window")


def _spec(args):
    """The data selection of a command with the data options."""
    from .data.datasets import DataSpec

    return DataSpec(args.data, args.classes, args.where, args.positive, args.relabel, args.skip_bad)


def _config(args):
    from .training.config import make_config

    return make_config(
        args.preset,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        dropout=args.dropout,
        input_size=args.input_size,
        augmentation=args.augmentation,
        feature_views=args.feature_views,
        weights=args.weights,
        seed=args.seed,
        class_weight=args.class_weight,
        fine_tune_epochs=args.fine_tune_epochs,
        fine_tune_from=args.fine_tune_from,
        fine_tune_lr=args.fine_tune_lr,
        preprocess=args.preprocess,
        threshold=args.threshold,
        calibration=args.calibration,
        backbone=getattr(args, "backbone", None),
        head=getattr(args, "head", None),
        feature_selection=getattr(args, "feature_selection", None),
        distributed=getattr(args, "distributed", None) or None,
    )


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def cmd_train(args) -> None:
    from .training.run import train

    result = train(_spec(args), args.out, _config(args), args.save_h5)
    _print_summary(result.metrics, Path(args.out))


def cmd_cv(args) -> None:
    from .studies.crossval import cross_validate

    summary = cross_validate(
        _spec(args),
        args.out,
        _config(args),
        args.folds,
        seed=args.seed or 0,
        keep_models=args.keep_models,
        group_by=args.group_by,
    )
    _print_summary(summary["pooled"], Path(args.out))


def cmd_compare(args) -> None:
    from .studies.compare import compare

    selection, args.feature_selection = args.feature_selection or "none", None  # applied per scikit-learn head
    summary = compare(
        _spec(args),
        args.out,
        _names(args.backbones),
        _names(args.heads),
        _config(args),
        feature_selection=selection,
        input_size=args.input_size,
    )
    print(Path(args.out, "comparison.md").read_text())
    print(f"runs and comparison.json in {args.out} (screening aid, not a diagnosis); {len(summary['rows'])} rows")


def cmd_reproduce_paper(args) -> None:
    from .studies.paper import reproduce_paper

    reproduce_paper(
        args.data,
        args.out,
        tuple(_names(args.cases)) if args.cases else None,
        args.seed,
        args.epochs,
        args.fine_tune_epochs,
    )
    print(Path(args.out, "paper-reproduction.md").read_text())


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def cmd_severity(args) -> None:
    {"train": _severity_train, "attach": _severity_attach}[args.severity_command](args)


def _severity_train(args) -> None:
    from .training.severity import describe_scores, train_severity

    result = train_severity(args.model, args.data, args.out, args.folds, args.seed, args.attach)
    print(describe_scores(result))
    print(f"report: {Path(args.out) / 'report.html'}" + (f"; attached to {args.model}" if args.attach else ""))


def _severity_attach(args) -> None:
    from .training.severity import attach_severity

    attach_severity(args.model, args.severity)
    print(f"attached {args.severity} to {args.model}")


def cmd_audit(args) -> None:
    from .evaluation.audit import audit

    result = audit(args.model, _spec(args), args.out, args.split, args.max_images, args.seed)
    for line in result["verdict"]:
        print(line)
    print(f"report: {Path(args.out) / 'report.html'}")


def cmd_evaluate(args) -> None:
    from .evaluation.evaluate import evaluate_model
    from .evaluation.subgroups import format_breakdown

    metrics = evaluate_model(args.model, _spec(args), args.out, split=args.split, seed=args.seed, by=args.by)
    for name, rows in metrics.get("by", {}).items():
        print("\n".join(format_breakdown(name, rows)))
    _print_summary(metrics, Path(args.out))


def _model(args) -> None:
    """``--model``, or the bundle shipped with ccad when it is not given (said on stderr)."""
    if args.model:
        return
    from .models.card import default_bundle

    args.model = str(default_bundle())
    _stderr(
        f"using the model shipped with ccad ({args.model}; research use, not a diagnosis: its card says "
        "what it was and was not tested on)"
    )


def cmd_predict(args) -> None:
    _model(args)
    variant = "int8" if args.int8 else "float"
    if args.engine == "ray":
        from .deploy.scale import describe_summary, ray_predict

        summary = ray_predict(
            args.model,
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
    _predict_local(args, args.model, variant)


def _predict_local(args, model: str, variant: str) -> None:
    from .io.inputs import expand_inputs
    from .models.ood import OUT_OF_DISTRIBUTION_TEXT
    from .screening import Screener
    from .screening.results import NOT_A_DIAGNOSIS, check_outputs, format_results, predict_to_csv, save_overlays

    check_outputs(args.out, args.resume, args.heatmap)
    screener = Screener.load(model, variant=variant, verify_key=args.verify)
    if args.out:
        counts = predict_to_csv(screener, args.inputs, args.out, args.resume, args.heatmap)
        print(
            f"{counts['scored']} scored, {counts['errors']} unreadable, {counts['skipped_done']} "
            f"already done: {args.out} ({NOT_A_DIAGNOSIS})"
        )
        return
    results = list(screener.screen(expand_inputs(args.inputs), with_heatmaps=bool(args.heatmap)))
    if args.heatmap:
        save_overlays(results, args.heatmap)
    flagged = sum(r.in_distribution is False for r in results)
    if flagged:
        _stderr(
            f"{flagged} image(s) flagged out of distribution (in_distribution = false): {OUT_OF_DISTRIBUTION_TEXT}."
        )
    if args.format == "table":
        _stderr("Screening aid, not a diagnosis.")
    print(format_results(results, screener, args.format))


def cmd_export(args) -> None:
    from .deploy.export import export_bundle

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


def cmd_calibrate(args) -> None:
    _model(args)
    from .deploy.calibrate import calibrate_bundle

    record = calibrate_bundle(
        args.model, _spec(args), args.target, args.out, args.unlabelled, args.sign, args.overwrite
    )
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


def cmd_adapt(args) -> None:
    _model(args)
    from .evaluation.metrics import format_interval
    from .training.adapt import adapt_bundle

    record = adapt_bundle(
        args.model, _spec(args), args.out, args.test_fraction, args.l2, args.seed, args.sign, args.overwrite
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


def cmd_validate(args) -> int:
    _model(args)
    from .evaluation.evaluate import evaluate_model
    from .evaluation.subgroups import format_breakdown
    from .evaluation.validate import PASS, read_criteria, validate, write_validation
    from .io.files import sha256
    from .models.card import BUNDLE_CARD, is_bundle

    criteria = read_criteria(args.criteria)  # before anything is scored: bad criteria are bad input
    out = Path(args.out)
    by = list(dict.fromkeys([*criteria["by"], *args.by]))
    metrics = evaluate_model(args.model, _spec(args), out / "evaluation", split=args.split, by=by)
    model = {
        "name": Path(args.model).name,
        "card_sha256": sha256(Path(args.model) / BUNDLE_CARD) if is_bundle(args.model) else None,
    }
    record = write_validation(out, validate(metrics, criteria), criteria, metrics, model)
    for v in record["verdicts"]:
        bar = f">= {v['at_least']:.3f}" if "at_least" in v else f"<= {v['at_most']:.3f}"
        measured = "" if "value" not in v else f"{v['value']:.3f} [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]"
        print(f"{v['metric']} {bar}: {measured} -> {v['verdict']}" + (f" ({v['why']})" if v.get("why") else ""))
    for name, rows in metrics.get("by", {}).items():
        print("\n".join(format_breakdown(name, rows)))
    print(f"{record['verdict'].upper()}: {out / 'validation.html'} (screening aid, not a diagnosis)")
    return 0 if record["verdict"] == PASS else 1


def cmd_monitor(args) -> None:
    from .evaluation.monitor import monitor

    reference = None
    if args.model:
        from .models.ood import OOD_FILE, OodGuard

        path = Path(args.model) / OOD_FILE
        if not path.is_file():
            raise ConfigError(f"--model {args.model}: no {OOD_FILE} (the drift reference) in it")
        reference = OodGuard.load(path)
        if reference.reference_scores is None:
            raise ConfigError(
                f"--model {args.model}: its {OOD_FILE} has no drift reference (exported before "
                "ccad stored one; ccad calibrate --unlabelled adds a site's)"
            )
    record = monitor(args.log, args.out, args.period, args.since, args.until, reference)
    overall = record["overall"]
    print(
        f"{overall['n']} images from {overall['first'][:10]} to {overall['last'][:10]}: "
        f"called positive {overall['positive']['value']:.1%}, out of distribution "
        f"{overall['out_of_distribution']['value']:.1%}, {len(record['drift_changes'])} drift state changes"
    )
    print(f"report: {Path(args.out) / 'monitor.html'} (counts of what the model said, not a diagnosis)")


def cmd_sign(args) -> None:
    from .models.signing import sign_bundle

    print(f"wrote {sign_bundle(args.model, args.key)}")


def cmd_keys(args) -> None:
    from .models.signing import make_keys

    private, public = make_keys(args.out)
    print(f"private key {private} (keep it secret), public key {public} (give it to predict/serve --verify)")


def cmd_serve(args) -> None:
    _model(args)
    from .deploy.web import ServeSettings, serve

    if args.api_key is not None and not args.api_key.strip():
        raise ConfigError("--api-key (or CCAD_API_KEY) is empty: give a key, or unset it to serve without one")
    settings = ServeSettings(
        Path(args.model),
        api_key=args.api_key or None,
        variant="int8" if args.int8 else "float",
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_request_bytes=int(args.max_request_mb * 2**20),
        workers=args.workers,
        queue=args.queue,
        keep_uploads=Path(args.keep_uploads) if args.keep_uploads else None,
        docs=args.docs,
        verify_key=args.verify,
        header_timeout_s=args.header_timeout,
        batch_wait_ms=args.batch_wait_ms,
        max_batch=args.max_batch,
        metrics=not args.no_metrics,
        drift_window=args.drift_window,
        result_log=Path(args.result_log) if args.result_log else None,
    )
    serve(settings, args.host, args.port)


def cmd_demo(args) -> None:
    from .studies.demo import run_demo

    result = run_demo(args.out, n_per_class=args.n_per_class, epochs=args.epochs, log=_stderr)
    _print_summary(result.metrics, result.run_dir)


def cmd_synth(args) -> None:
    from .data.synthetic import generate

    try:
        out = generate(args.out, args.n_per_class, args.classes.split(","), args.size, args.seed, args.layout)
    except ValueError as e:
        raise CcadError(str(e)) from e
    print(f"wrote synthetic data set to {out} (manifest: {out / 'manifest.csv'})")


def cmd_augment_preview(args) -> None:
    from .preprocessing.preview import augment_preview

    path = augment_preview(
        _spec(args), args.out, args.augmentation, args.images, args.variants, args.input_size, args.seed
    )
    print(f"wrote {path}")


def _print_summary(metrics, folder: Path) -> None:
    from .evaluation.metrics import summary_line

    if metrics:
        print(summary_line(metrics))
        print(f"report: {folder / 'report.html'}  (screening aid, not a diagnosis)")


COMMANDS = {
    "lungs": cmd_lungs,
    "dicom": cmd_dicom,
    "train": cmd_train,
    "cv": cmd_cv,
    "audit": cmd_audit,
    "severity": cmd_severity,
    "compare": cmd_compare,
    "reproduce-paper": cmd_reproduce_paper,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "export": cmd_export,
    "calibrate": cmd_calibrate,
    "adapt": cmd_adapt,
    "validate": cmd_validate,
    "monitor": cmd_monitor,
    "sign": cmd_sign,
    "keys": cmd_keys,
    "serve": cmd_serve,
    "demo": cmd_demo,
    "synth": cmd_synth,
    "augment-preview": cmd_augment_preview,
}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    if isinstance(getattr(args, "data", None), list) and len(args.data) == 1:
        args.data = args.data[0]  # one --data: a path, as before pooling existed
    try:
        code = COMMANDS[args.command](args)
    except CcadError as e:
        print(f"ccad: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ImportError as e:
        extra = EXTRAS.get((e.name or "").split(".")[0])
        if extra is None:
            raise
        print(
            f"ccad: error: ccad {args.command} needs the {extra} extra ({e.name} is not installed): "
            f"pip install 'ccad[{extra}]'",
            file=sys.stderr,
        )
        return EXIT_USAGE
    except OSError as e:  # a folder that cannot be written, a disk that is full: the system's words, one line
        where = f"{e.filename}: " if e.filename else ""
        print(f"ccad: error: {where}{e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("ccad: interrupted; nothing half-written was left behind", file=sys.stderr)
        return 130
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
