"""Long-running services: serve (the web tool and REST API) and dicom (listen, pull)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import ConfigError
from .base import (
    Command,
    add_delivery_args,
    add_monitoring_args,
    date_arg,
    model_of,
    port_arg,
)


def _add_serve(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model bundle folder (ccad export; default: the bundle shipped with ccad)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=port_arg, default=8000)
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
    add_monitoring_args(p)
    p.add_argument("--no-metrics", action="store_true", help="do not serve /metrics")


def _run_serve(args: argparse.Namespace) -> int | None:
    model = model_of(args)
    from ..deploy.web import ServeSettings, serve

    if args.api_key is not None and not args.api_key.strip():
        raise ConfigError("--api-key (or CCAD_API_KEY) is empty: give a key, or unset it to serve without one")
    settings = ServeSettings(
        Path(model),
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


def _add_dicom(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="dicom_command", required=True)
    s = actions.add_parser(
        "listen",
        help="a DICOM Storage SCP that scores CR/DX/SC chest X-rays and sends a "
        "structured report and a heatmap capture into the same study",
    )
    add_delivery_args(s)
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
    s.add_argument("--metrics-port", type=port_arg, help="serve Prometheus metrics on this port of --host")
    add_monitoring_args(s)
    s = actions.add_parser(
        "pull",
        help="find CR/DX chest X-rays in a DICOMweb archive (QIDO-RS), fetch (WADO-RS) "
        "and score them like the listener; resumable",
    )
    s.add_argument("--from", dest="source", required=True, metavar="URL", help="the archive's DICOMweb base URL")
    which = s.add_mutually_exclusive_group(required=True)
    which.add_argument("--study", metavar="UID", help="one study")
    which.add_argument("--since", type=date_arg, help="the studies dated this day (YYYY-MM-DD) or later")
    s.add_argument(
        "--timeout", type=float, default=3600, help="seconds the whole pull may take: search, fetches and sending"
    )
    s.add_argument(
        "--max-instances", type=int, default=10_000, help="the most instances one run fetches (the rest: run again)"
    )
    s.add_argument(
        "--from-auth",
        metavar="FILE",
        help="the archive's credentials, as --dicomweb-auth (or "
        "CCAD_DICOMWEB_SOURCE_TOKEN / _USER and _PASSWORD); the destination's are never sent to it",
    )
    add_delivery_args(s)
    s.set_defaults(
        ae_title="CCAD",
        host="127.0.0.1",
        port=0,
        max_dataset_mb=256,
        metrics_port=None,
        result_log=None,
        drift_window=200,
    )


def _run_dicom(args: argparse.Namespace) -> int | None:
    model = model_of(args)
    from ..deploy.logs import configure_logging
    from ..deploy.pacs.listener import Destination, Listener, ListenerSettings

    configure_logging()
    settings = ListenerSettings(
        Path(model),
        Destination.parse(args.send_to),
        Path(args.spool),
        ae_title=args.ae_title,
        host=args.host,
        port=args.port,
        int8=args.int8,
        workers=args.workers,
        queue_size=args.queue_size,
        retry_max_s=args.retry_max_s,
        send_associations=args.send_associations,
        score_timeout_s=args.score_timeout,
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
        from ..deploy.pacs.dicomweb import WebDestination
        from ..deploy.pacs.pull import pull

        source = WebDestination.parse(args.source).url
        counts = pull(
            settings,
            source,
            args.study,
            args.since.strftime("%Y%m%d") if args.since else None,
            args.timeout,
            source_auth=Path(args.from_auth) if args.from_auth else None,
            max_instances=args.max_instances,
        )
        print(
            f"{counts['found']} instances found, {counts['already_done']} done before, {counts['in_the_spool']} "
            f"resumed from the spool, {counts['fetched']} fetched ({counts['fetch_failures']} could not be, "
            f"{counts['refused']} refused as the listener would); {counts['scored']} scored, "
            f"{counts['not_scored']} not scored (their reports say why), {counts['sent']} results sent"
            + (f"; the search ended early: {counts['search_ended']}" if "search_ended" in counts else "")
            + ("" if counts["complete"] else f"; some results still wait in {args.spool} (run again to resume)")
        )
        return 0 if counts["complete"] and not counts["fetch_failures"] and "search_ended" not in counts else 1
    Listener(settings).serve_forever()


COMMANDS = [
    Command("serve", "the web tool and REST API for a model bundle (ONNX Runtime)", _add_serve, _run_serve),
    Command("dicom", "in the PACS workflow: receive X-rays over DICOM, send results back", _add_dicom, _run_dicom),
]
