"""`mlpipe compare`: primary vs canary and shadow answers from the serving traffic log (docs/serving.md)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pipeline import cli


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "compare",
        help="primary vs canary/shadow: prediction divergence, latency percentiles, error rates",
        description="Read the traffic log `mlpipe serve` writes when traffic.json (weighted split, shadow label) "
        "sits beside its models.config, and compare the answers: per role/label/version the requests, error rate, "
        "latency p50/p90/p99 and mean prediction; the canary's mean prediction against the primary label's; the "
        "shadow's answers paired request by request with the primary's (mean/max |diff|, decisions flipped at "
        "0.5), overall and by --slice. Exit 0, or 2 when there is no traffic log (or none in the window).",
    )
    cli.add_config_options(p)
    p.add_argument(
        "--log-dir",
        metavar="DIR",
        help="the traffic log root (default <workspace>/serving_model/"
        "traffic_logs, i.e. traffic.json's log_dir beside the workspace's models.config)",
    )
    p.add_argument("--since", metavar="DURATION", help="only answers from the last DURATION, e.g. 30m, 24h, 7d")
    p.add_argument("--slice", metavar="FEATURE", help="also break the shadow divergence down by this request feature")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--html", metavar="FILE", help="also write the report as an HTML page")
    p.set_defaults(func=_compare)


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if len(text) < 2 or text[-1] not in units or not text[:-1].replace(".", "", 1).isdigit():
        raise cli.CommandError(f"--since {text!r} is not a duration: use e.g. 30m, 24h, 7d", cli.EXIT_USAGE)
    return float(text[:-1]) * units[text[-1]]


def _compare(args: argparse.Namespace) -> int:
    from pipeline.monitoring import compare

    config = cli.load_config(args)
    root = Path(args.log_dir) if args.log_dir else config.traffic_log_root
    since = time.time() - _duration(args.since) if args.since else None
    try:
        report = compare.compare(root / config.model_name, since, args.slice)
    except compare.CompareError as e:
        raise cli.CommandError(str(e), e.code) from None
    if args.html:
        try:
            compare.write_html(report, Path(args.html))
        except OSError as e:
            raise cli.CommandError(f"cannot write {args.html}: {e.strerror}", cli.EXIT_USAGE) from None
        report["html"] = str(Path(args.html).resolve())
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print("\n".join(compare.table(report)))
    return cli.EXIT_OK
