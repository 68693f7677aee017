"""`mlpipe approve | reject | report`: release decisions and each run's release report.

See docs/release.md (Approvals, Release report) for the output, the JSON and the exit codes.
"""

from __future__ import annotations

import argparse
import json

from pipeline import cli


def _decide(args: argparse.Namespace) -> int:
    from pipeline.publish import approvals

    config = cli.load_config(args)
    action = approvals.approve if args.command == "approve" else approvals.reject
    result = action(config, args.version, args.reason)
    if args.json:
        cli.print_json(result)
        return cli.EXIT_OK
    if result["decision"] == "approved":
        print(f"mlpipe: approved version {args.version} (was {result['was']}): served from {result['path']} as stable")
    else:
        print(f"mlpipe: rejected version {args.version} (was {result['was']}): not served; kept in {result['path']}")
    print(f"mlpipe: {cli.recorded(result)}")
    return cli.EXIT_OK


def _report(args: argparse.Namespace) -> int:
    from pipeline.monitoring import release_report

    config = cli.load_config(args)
    run_id, version = release_report.find(config, args.target)
    if run_id is None:
        raise cli.CommandError(f"MLMD records no run that pushed version {version}", cli.EXIT_USAGE)
    path = release_report.report_path(config, run_id)
    written = False
    if args.regenerate or not path.is_file():  # runs from before reports existed: written from MLMD now
        path, written = release_report.write(config, run_id), True
    card = path.parent / release_report.MODEL_CARD_NAME
    if args.json:
        print(
            json.dumps(
                {
                    "run_id": run_id,
                    "version": version,
                    "report": str(path),
                    "model_card": str(card) if card.is_file() else None,
                    "written_now": written,
                },
                indent=2,
            )
        )
    else:
        print(path)
    return cli.EXIT_OK


def _common(parser: argparse.ArgumentParser) -> None:
    cli.add_json_options(parser, "docs/release.md")


def add_parser(subparsers) -> None:
    for name, verb, effect in (
        (
            "approve",
            "release a pending (release.mode = manual) or canary version",
            "A pending version is renamed from the release hold directory into the serving directory; a canary "
            "version ends its traffic split; either way the `stable` label moves to it.",
        ),
        (
            "reject",
            "refuse a pending or canary version: it is not served",
            "A pending version stays held; a canary version loses its label and traffic split and is moved out "
            "of the serving directory into the release hold directory.",
        ),
    ):
        p = subparsers.add_parser(
            name,
            help=verb,
            description=f"{effect} Recorded as an mlpipe.ReleaseDecision execution in ML Metadata (who, when, "
            "why), shown by `mlpipe models` and `mlpipe lineage`. Exit 2 when the version is not pending or "
            "canary, or was never pushed (docs/release.md).",
        )
        p.add_argument("version", type=int, metavar="VERSION", help="a version `mlpipe models` lists as pending/canary")
        p.add_argument("--reason", required=True, metavar="TEXT", help="why (kept in ML Metadata)")
        _common(p)
        p.set_defaults(func=cli.refusals(_decide))

    p = subparsers.add_parser(
        "report",
        help="print the path of a run's release report (HTML)",
        description="Each run writes a self-contained HTML release report (data statistics and anomalies, metrics "
        "by slice against the baseline with the thresholds, the verdict of every gate, lineage, what was pushed "
        "and why) and, when it pushed, the version's model card, under <workspace>/reports/<run>/. Prints the "
        "report's path: of the newest run, of RUN (a run id from `mlpipe runs`) or of the run that pushed "
        "VERSION. Exit 2 for an unknown run or version.",
    )
    p.add_argument(
        "target", nargs="?", metavar="RUN|VERSION", help="a run id or a pushed version (default: newest run)"
    )
    p.add_argument("--regenerate", action="store_true", help="write the report again from ML Metadata")
    _common(p)
    p.set_defaults(func=cli.refusals(_report))
