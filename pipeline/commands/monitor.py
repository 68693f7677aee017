"""`mlpipe monitor`: training-serving skew, drift and schema anomalies of logged serving traffic.

Exit codes: 0 no alert, 3 an alert (a skew/drift threshold crossed or a schema anomaly),
2 bad usage or input (no logs in the window, unknown version, bad time), 1 failure.
See docs/monitoring.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pipeline import cli

EXIT_ALERT = 3


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "monitor",
        help="skew and drift of logged serving traffic against training data; alerts, optional retrain",
        description="Read the request logs `mlpipe serve` wrote for a time window, compute TFDV statistics of the "
        "raw features the model received, and compare them with TFDV: skew against the training statistics of "
        "the version that served them (found through MLMD lineage), drift against the previous window of the "
        "same length, and schema anomalies in the SERVING environment. Thresholds come from [monitoring] in "
        "the config. On an alert, the configured alert command and webhook get the JSON report. "
        f"Exit codes: 0 no alert, {EXIT_ALERT} alert, 2 bad usage/input (e.g. no logs in the window), 1 failure.",
    )
    cli.add_config_options(p)
    p.add_argument("--since", metavar="TIME",
                   help="window start: ISO 8601 (UTC if no zone) or a duration before now like 24h, 30m, 7d "
                   "(default: monitoring.window before --until)")
    p.add_argument("--until", metavar="TIME", help="window end (exclusive), same forms; default now")
    p.add_argument("--version", type=int, metavar="N", help="only the traffic served by this model version")
    p.add_argument("--log-dir", metavar="DIR",
                   help="request log root as given to `mlpipe serve --request_log_dir` (default <workspace>/request_logs)")
    p.add_argument("--json", action="store_true", help="print the report as JSON (docs/monitoring.md)")
    p.add_argument("--html", metavar="FILE", help="also write an HTML page of each alerting feature's two distributions")
    p.add_argument("--all", action="store_true", help="list every check in the table, not only the alerts")
    p.add_argument("--no-notify", action="store_true", help="do not run the alert command or call the webhook")
    p.add_argument("--evaluate", metavar="CSV_OR_DIR",
                   help="instead of the traffic checks: score the served version (or --version) with TFMA on labelled "
                   "CSV data (a file or a span directory) and alert below evaluation.value_lower_bound")
    p.add_argument("--retrain", action="store_true",
                   help="on a skew, drift or --evaluate alert, run `mlpipe retrain` on the same workspace and config")
    p.set_defaults(func=_monitor)


def _monitor(args: argparse.Namespace) -> int:
    config = cli.load_config(args)
    from pipeline import monitoring  # imports TFDV: only when the command runs

    if args.evaluate:
        return _evaluate(args, config)
    now = time.time()
    try:
        until = monitoring.parse_time(args.until, now) if args.until else now
        if args.since:
            since = monitoring.parse_time(args.since, now)
        else:
            try:
                since = until - monitoring.parse_duration(config.monitoring.window)
            except monitoring.MonitorError as e:
                raise monitoring.MonitorError(f"config error: monitoring.window: {e}") from None
        log_root = Path(args.log_dir) if args.log_dir else config.workspace_path / "request_logs"
        report = monitoring.monitor(config, since, until, log_root / config.model_name, args.version)
    except monitoring.MonitorError as e:
        raise cli.CommandError(str(e), e.code) from None
    data = report.data
    return _act(args, config, data, lambda: monitoring.table(report, show_all=args.all),
                html=lambda path: monitoring.write_html(report, path))


def _evaluate(args: argparse.Namespace, config) -> int:
    import tempfile

    from pipeline import monitoring

    try:
        with tempfile.TemporaryDirectory(prefix="mlpipe-evaluate-") as workdir:
            data = monitoring.evaluate(config, Path(args.evaluate), args.version, Path(workdir))
    except monitoring.MonitorError as e:
        raise cli.CommandError(str(e), e.code) from None

    def lines() -> list[str]:
        t = data["threshold"]
        value = "n/a" if t["value"] is None else f"{t['value']:.4f}"
        out = [f"mlpipe monitor --evaluate: version {data['version']} on {data['examples']} labelled example(s)"]
        out += [f"  {name:<20} {value_:.4f}" for name, value_ in data["metrics"].items()]
        out.append(f"{t['metric']} {value} >= {t['lower_bound']:.4f}: " + ("ok" if t["passed"] else "ALERT"))
        out.append(f"ALERT: {', '.join(data['alerts'])}" if data["alert"] else "no alert")
        return out

    return _act(args, config, data, lines, html=None)


def _act(args: argparse.Namespace, config, data: dict, lines, html) -> int:
    """Writes the HTML page, notifies, retrains, prints; returns the exit code."""
    from pipeline import logs, monitoring

    if args.html and html is not None:
        try:
            html(Path(args.html))
        except OSError as e:
            raise cli.CommandError(f"cannot write {args.html}: {e.strerror}", cli.EXIT_USAGE) from None
        data["html"] = str(Path(args.html).resolve())
    data["notified"] = None
    if data["alert"] and not args.no_notify and (config.monitoring.alert_command or config.monitoring.webhook_url):
        data["notified"] = monitoring.notify(config, {k: v for k, v in data.items() if k != "notified"})
        for channel, outcome in data["notified"].items():
            if outcome is not None and not outcome["ok"]:
                print(f"mlpipe: alert {channel} failed: {outcome.get('error') or outcome.get('stderr') or outcome}",
                      file=logs.terminal())
    data["retrain"] = None
    if args.retrain and data["retrain_wanted"]:
        if not args.json:
            print("mlpipe: alert: starting `mlpipe retrain`", flush=True)
        data["retrain"] = monitoring.start_retrain(config, args.config)
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    else:
        for line in lines():
            print(line)
        if data.get("html"):
            print(f"HTML report: {data['html']}")
        if data["retrain"] is not None:
            print(f"mlpipe retrain exited {data['retrain']['exit_code']} after {data['retrain']['seconds']} s")
    return EXIT_ALERT if data["alert"] else cli.EXIT_OK
