"""`mlpipe bless --force RUN --reason TEXT`: the audited override of a refused candidate (docs/release.md)."""

from __future__ import annotations

import argparse
import json

from pipeline import cli


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "bless",
        help="push a refused candidate anyway, recorded with who, when and why (--force)",
        description="Override the verdict of run RUN's candidate (NOT_BLESSED or UNVALIDATED by the Evaluator, "
        "or FAILED by the replay gate): push it through the Pusher's atomic publish and record an "
        "mlpipe.ForcedBlessing execution in ML Metadata (user, time, reason, what it overrode), shown by "
        "`mlpipe models` and `mlpipe lineage`. A candidate that failed infra validation is never pushed. "
        "Exit 0 pushed, 1 refused, 2 bad usage (no --force or --reason, unknown run).",
    )
    cli.add_config_options(p)
    p.add_argument("run_id", metavar="RUN", help="the run whose candidate to push (`mlpipe runs` lists them)")
    p.add_argument("--force", action="store_true", help="required: this overrides the gates' verdict")
    p.add_argument("--reason", metavar="TEXT", default="", help="why (required; kept in MLMD as the audit trail)")
    p.add_argument("--json", action="store_true", help="print the record as JSON")
    p.set_defaults(func=_bless)


def _bless(args: argparse.Namespace) -> int:
    from pipeline.metadata.snapshot import RegistryError
    from pipeline.publish import force

    if not args.force:
        raise cli.CommandError("bless only overrides a verdict: pass --force (and --reason TEXT)", cli.EXIT_USAGE)
    config = cli.load_config(args)
    try:
        record = force.force_bless(config, args.run_id, args.reason)
    except RegistryError as e:
        raise cli.CommandError(str(e), e.code) from None
    if args.json:
        print(json.dumps(record, indent=2))
        return cli.EXIT_OK
    print(
        f"mlpipe: forced blessing of run {record['run_id']}: pushed as version {record['version']} ({record['path']})"
    )
    print(f"mlpipe: overrode {record['overridden']}; {cli.recorded(record)}")
    if record["models_config"]:
        print(f"mlpipe: updated {record['models_config']} to load the new version")
    return cli.EXIT_OK
