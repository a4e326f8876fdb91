"""Commands a site runs before and after go-live: validate, monitor."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from .base import (
    Command,
    add_data_args,
    date_arg,
    model_of,
    spec,
)


def _add_validate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model bundle or run (default: the bundle shipped with ccad)")
    add_data_args(p, required=False)
    p.add_argument(
        "--results",
        metavar="RESULT_LOG",
        help="instead of --data: a shadow period's result log (dicom listen --shadow --result-log), judged against "
        "--truth",
    )
    p.add_argument(
        "--truth",
        metavar="FILE",
        help="the readers' findings for --results, told by content: a CSV (a 'finding' column and an "
        "'accession_number' or 'study_instance_uid' one), HL7 v2 ORU^R01 messages (MLLP-framed or not) or FHIR "
        "DiagnosticReports (one, a Bundle, or NDJSON); of reports only final or corrected ones with a coded finding "
        "count, keyed on the accession number or the Study Instance UID, whichever more of them carry, a later "
        "report replacing an earlier one",
    )
    p.add_argument(
        "--truth-codes",
        metavar="CODE,CODE",
        help="the codes that mean COVID-19 in --truth's reports (default: 840539006, U07.1, U07.2, COVID-19 and the "
        "positive class's name)",
    )
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


def _run_validate(args: argparse.Namespace) -> int | None:
    from ..evaluation.subgroups import format_breakdown
    from ..evaluation.validate import PASS, read_criteria, validate, write_validation

    criteria = read_criteria(args.criteria)  # before anything is scored: bad criteria are bad input
    if bool(args.results) == bool(args.data) or bool(args.results) != bool(args.truth):
        raise ConfigError("give --data, or --results with --truth (a shadow period and the readers' findings)")
    out = Path(args.out)
    metrics, model = _shadow_metrics(args) if args.results else _site_metrics(args, criteria, out)
    record = write_validation(out, validate(metrics, criteria), criteria, metrics, model)
    for v in record["verdicts"]:
        bar = f">= {v['at_least']:.3f}" if "at_least" in v else f"<= {v['at_most']:.3f}"
        measured = "" if "value" not in v else f"{v['value']:.3f} [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]"
        print(f"{v['metric']} {bar}: {measured} -> {v['verdict']}" + (f" ({v['why']})" if v.get("why") else ""))
    for name, rows in metrics.get("by", {}).items():
        print("\n".join(format_breakdown(name, rows)))
    print(f"{record['verdict'].upper()}: {out / 'validation.html'} (screening aid, not a diagnosis)")
    return 0 if record["verdict"] == PASS else 1


def _site_metrics(args: argparse.Namespace, criteria: dict, out: Path) -> tuple[dict, dict]:
    """The metrics of a model scored on the site's labelled images, and the model's identity."""
    from ..evaluation.evaluate import evaluate_model
    from ..io.files import sha256
    from ..models.card import BUNDLE_CARD, is_bundle

    model = model_of(args)
    by = list(dict.fromkeys([*criteria["by"], *args.by]))
    metrics = evaluate_model(model, spec(args), out / "evaluation", split=args.split, by=by)
    return metrics, {
        "name": Path(model).name,
        "card_sha256": sha256(Path(model) / BUNDLE_CARD) if is_bundle(model) else None,
    }


def _shadow_metrics(args: argparse.Namespace) -> tuple[dict, dict]:
    """The metrics of a shadow period's results against the readers' findings (the model is the one that wrote
    the log: its card is in the log's ccad_model_info, not here)."""
    from ..evaluation.shadow import shadow_metrics

    metrics = shadow_metrics(args.results, args.truth, codes=_truth_codes(args))
    join = metrics["join"]
    print(
        f"{join['studies_joined']} studies with a result and a finding (joined on {join['on']}); "
        f"{join['studies_without_a_finding']} without a finding, "
        f"{join['findings_without_a_study']} findings without a study"
    )
    if "reports_skipped" in join:
        from ..evaluation.findings import left_out

        print(f"reports left out: {left_out(join['reports_skipped'])}")
    return metrics, {"name": args.model or "the model that wrote the result log", "card_sha256": None}


def _truth_codes(args: argparse.Namespace) -> list[str] | None:
    """``--truth-codes CODE,CODE`` as a list (None: the default codes)."""
    if args.truth_codes is None:
        return None
    codes = [c.strip() for c in args.truth_codes.split(",") if c.strip()]
    if not codes:
        raise ConfigError("--truth-codes must name at least one code (CODE,CODE)")
    return codes


def _add_monitor(p: argparse.ArgumentParser) -> None:
    p.add_argument("log", help="the result log (JSON Lines)")
    p.add_argument("--out", required=True)
    p.add_argument("--period", choices=["day", "week", "month"], default="day")
    p.add_argument("--since", type=date_arg, help="first day (YYYY-MM-DD, UTC)")
    p.add_argument("--until", type=date_arg, help="last day (YYYY-MM-DD, UTC)")
    p.add_argument("--model", help="also compare each period with this bundle's reference (PSI)")
    p.add_argument(
        "--verdicts",
        metavar="FILE",
        help="the readers' verdicts (ccad serve --verdict-log): each period's live sensitivity, specificity and PPV",
    )
    p.add_argument(
        "--truth",
        metavar="FILE",
        help="instead of --verdicts, for the listener's results: the readers' findings as ccad validate reads them "
        "(a CSV, or their final HL7 ORU^R01 or FHIR reports): each period's live measures by study",
    )
    p.add_argument("--truth-codes", metavar="CODE,CODE", help="as ccad validate's: the codes of COVID-19 in --truth")
    for measure in ("sensitivity", "specificity", "ppv"):
        p.add_argument(
            f"--validated-{measure}", type=float, help=f"the {measure} the site validated (with --verdicts or --truth)"
        )


def _run_monitor(args: argparse.Namespace) -> int | None:
    from ..evaluation.monitor import monitor

    reference = None
    if args.model:
        from ..models.ood import OOD_FILE, load_guard

        path = Path(args.model) / OOD_FILE
        if not path.is_file():
            raise ConfigError(f"--model {args.model}: no {OOD_FILE} (the drift reference) in it")
        reference = load_guard(path)
        if reference.reference_scores is None:
            raise ConfigError(
                f"--model {args.model}: its {OOD_FILE} has no drift reference (exported before "
                "ccad stored one; ccad calibrate --unlabelled adds a site's)"
            )
    levels = {m: getattr(args, f"validated_{m}") for m in ("sensitivity", "specificity", "ppv")}
    levels = {m: v for m, v in levels.items() if v is not None}
    record = monitor(
        args.log,
        args.out,
        args.period,
        args.since,
        args.until,
        reference,
        args.verdicts,
        levels,
        args.truth,
        _truth_codes(args),
    )
    overall = record["overall"]
    print(
        f"{overall['n']} images from {overall['first'][:10]} to {overall['last'][:10]}: "
        f"called positive {overall['positive']['value']:.1%}, flagged by the guard "
        f"{overall['out_of_distribution']['value']:.1%}, {len(record['drift_changes'])} drift state changes"
    )
    if "live" in record:
        live = record["live"]["by_period"]["all"]
        shown = ", ".join(
            f"{m} {live[m]['value']:.1%} [{live[m]['ci95'][0]:.1%}, {live[m]['ci95'][1]:.1%}]"
            for m in ("sensitivity", "specificity", "ppv")
            if m in live
        )
        under = [
            f"{p} ({', '.join(s['under_validated'])})"
            for p, s in record["live"]["by_period"].items()
            if s["under_validated"]
        ]
        n, results = live["with_a_verdict"], live["results"]
        by_study = record["live"]["unit"] == "study"
        judged = f"{n} studies ({results} results)" if by_study else f"{n} of {results} results"
        print(f"readers' {'verdicts' if args.verdicts else 'findings'} on {judged}: {shown or 'no measure yet'}")
        print("under the validated level: " + ("; ".join(under) if under else "none"))
    print(f"report: {Path(args.out) / 'monitor.html'} (counts of what the model said, not a diagnosis)")
    if "live" in record and any(s["under_validated"] for s in record["live"]["by_period"].values()):
        return 1


COMMANDS = [
    Command(
        "validate",
        "local acceptance test: criteria written before the run (TOML), each "
        "judged on its 95%% interval: pass, fail or not enough images to tell",
        _add_validate,
        _run_validate,
    ),
    Command(
        "monitor",
        "what a result log (serve/dicom listen --result-log) says by day, week or "
        "month: images, positive and out-of-distribution rates, drift; HTML and JSON",
        _add_monitor,
        _run_monitor,
    ),
]
