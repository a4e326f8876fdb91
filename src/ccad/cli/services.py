"""Long-running services: serve (the web tool and REST API) and dicom (listen, pull)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import ConfigError
from .base import Command, add_settings, date_arg, model_of, port_arg, settings_from


def _add_serve(p: argparse.ArgumentParser) -> None:
    from ..deploy.web.settings import ServeSettings

    p.add_argument("--model", help="model bundle folder (ccad export; default: the bundle shipped with ccad)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=port_arg, default=8000)
    p.add_argument("--api-key", default=os.environ.get("CCAD_API_KEY"), help="require this key (also CCAD_API_KEY)")
    p.add_argument("--int8", action="store_true", help="serve the bundle's INT8 model")
    add_settings(p, ServeSettings)


def _run_serve(args: argparse.Namespace) -> int | None:
    model = model_of(args)
    from ..deploy.web import ServeSettings, serve

    if args.api_key is not None and not args.api_key.strip():
        raise ConfigError("--api-key (or CCAD_API_KEY) is empty: give a key, or unset it to serve without one")
    settings = settings_from(
        args, ServeSettings, Path(model), api_key=args.api_key or None, variant="int8" if args.int8 else "float"
    )
    serve(settings, args.host, args.port)


def _add_listener(s: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """The flags of :class:`~ccad.deploy.pacs.settings.ListenerSettings` (but ``skip``), with the model, where
    results go and the spool."""
    from ..deploy.pacs.settings import ListenerSettings

    s.add_argument("--model", help="a model bundle (ccad export; default: the bundle shipped with ccad)")
    s.add_argument(
        "--send-to",
        required=True,
        metavar="AET@HOST:PORT|dicomweb+URL",
        help="where results go: "
        "C-STORE (e.g. ORTHANC@127.0.0.1:4242) or STOW-RS (e.g. dicomweb+https://pacs/dicom-web)",
    )
    s.add_argument("--spool", default="ccad-spool", help="folder where received images and unsent results wait")
    add_settings(s, ListenerSettings, skip)


def _add_dicom(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="dicom_command", required=True)
    s = actions.add_parser(
        "listen",
        help="a DICOM Storage SCP that scores CR/DX/SC chest X-rays and sends a "
        "structured report and a heatmap capture into the same study",
    )
    _add_listener(s)
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
    skip = ("ae_title", "host", "port", "metrics_port", "result_log", "drift_window", "findings_port")
    _add_listener(s, skip=(*skip, "validated_sensitivity", "validated_specificity"))
    s = actions.add_parser(
        "flush",
        help="answer the studies that wait in a listener's spool now, without waiting for their --study-window "
        "(e.g. from Orthanc's OnStableStudy, or when a modality says the study is complete)",
    )
    s.add_argument("--spool", default="ccad-spool", help="the listener's spool")
    s.add_argument("--study", action="append", metavar="UID", help="only this study (again for more; default: all)")


def _run_dicom(args: argparse.Namespace) -> int | None:
    if args.dicom_command == "flush":
        return _flush(args)
    model = model_of(args)
    from ..deploy.logs import configure_logging
    from ..deploy.pacs.listener import Destination, Listener, ListenerSettings

    configure_logging()
    settings = settings_from(args, ListenerSettings, Path(model), Destination.parse(args.send_to), Path(args.spool))
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


def _flush(args: argparse.Namespace) -> int:
    """Ask the listener on ``--spool`` to answer its waiting studies now: 1 when a ``--study`` named waits not."""
    from ..deploy.pacs.spool import Spool
    from ..deploy.pacs.study_book import StudyBook

    spool = Spool(Path(args.spool))
    if not spool.root.is_dir():
        raise ConfigError(f"--spool {args.spool}: no such spool (the listener's --spool)")
    asked = StudyBook(spool.root / "studies").request_flush(args.study)
    print(
        f"{asked} waiting {'study' if asked == 1 else 'studies'} to be answered now (by the running listener "
        "within a second, or by the next to start on this spool)"
    )
    return 1 if args.study and asked < len(args.study) else 0


COMMANDS = [
    Command("serve", "the web tool and REST API for a model bundle (ONNX Runtime)", _add_serve, _run_serve),
    Command("dicom", "in the PACS workflow: receive X-rays over DICOM, send results back", _add_dicom, _run_dicom),
]
