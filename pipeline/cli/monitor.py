"""`mlpipe monitor`: training-serving skew, drift, prediction drift and schema anomalies of logged traffic.

Exit codes: 0 no alert, 3 an alert (a significant skew/drift of a feature, a slice or the predictions, or a
schema anomaly),
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
        description="Read the request logs `mlpipe serve` wrote for a time window and compare the raw features "
        "the model received (and its scores) per feature and per slice with two-sample tests: skew against the "
        "whole training window of the version that served them (found through MLMD lineage), drift against the "
        "previous window of the same length, prediction drift against the scores on the training window's eval "
        "split, and schema anomalies in TFDV's SERVING environment. A shift alerts when it is beyond the "
        "window's sampling noise and above a minimum size ([monitoring] alpha, min_distance); seasonal features "
        "are reported, not alerted on. Every run is recorded (--history). On an alert, the configured alert "
        "command and webhook get the JSON report. "
        f"Exit codes: 0 no alert, {EXIT_ALERT} alert, 2 bad usage/input (e.g. no logs in the window), 1 failure.",
    )
    cli.add_config_options(p)
    p.add_argument(
        "--since",
        metavar="TIME",
        help="window start: ISO 8601 (UTC if no zone) or a duration before now like 24h, 30m, 7d "
        "(default: monitoring.window before --until)",
    )
    p.add_argument("--until", metavar="TIME", help="window end (exclusive), same forms; default now")
    p.add_argument("--version", type=int, metavar="N", help="only the traffic served by this model version")
    p.add_argument(
        "--log-dir",
        metavar="DIR",
        help="request log root as given to `mlpipe serve --request_log_dir` (default <workspace>/request_logs)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON (docs/monitoring.md)")
    p.add_argument(
        "--html",
        metavar="FILE",
        help="also write an HTML page: every feature's score against its noise band, the slices that "
        "alerted, prediction drift, and each alerting feature's two distributions",
    )
    p.add_argument("--all", action="store_true", help="list every check in the table, not only the alerts")
    p.add_argument("--no-notify", action="store_true", help="do not run the alert command or call the webhook")
    p.add_argument(
        "--evaluate",
        metavar="CSV_OR_DIR",
        help="instead of the traffic checks: score the served version (or --version) with TFMA on labelled "
        "CSV data (a file or a span directory) and alert below evaluation.value_lower_bound",
    )
    p.add_argument(
        "--labels",
        metavar="FILE_OR_DIR",
        help="instead of the traffic checks: join late labels (CSV: monitoring.label_key_column and "
        "monitoring.label_column) to the logged predictions by request key, score each window's served "
        "version with TFMA (the blessing's metrics and value threshold, per slice) and record the live "
        "quality series; then the automatic rollback rule (monitoring.rollback_after_windows)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="report what the automatic rollback would do (monitoring.rollback_after_windows) without doing it",
    )
    p.add_argument(
        "--retrain",
        action="store_true",
        help="run `mlpipe retrain` on the same workspace and config when a skew or drift alert persisted "
        "for monitoring.retrain_after_windows consecutive runs (at most monitoring.max_retrains_per_day "
        "a day), or on an --evaluate alert",
    )
    p.add_argument(
        "--history",
        nargs="?",
        const="",
        metavar="FEATURE",
        help="instead of checking: print the recorded runs (each window's alerts), or with FEATURE that "
        "feature's score in every recorded window",
    )
    p.set_defaults(func=_monitor)


def _monitor(args: argparse.Namespace) -> int:
    config = cli.load_config(args)
    from pipeline import monitoring  # imports TFDV: only when the command runs

    if args.history is not None:
        return _history(args, config)
    if args.evaluate:
        return _evaluate(args, config)
    if args.labels:
        return _labels(args, config)
    now = time.time()
    try:
        until = monitoring.parse_time(args.until, now) if args.until else now
        since = (
            monitoring.parse_time(args.since, now)
            if args.since
            else until - monitoring.config_duration(config, "window")
        )
        report = monitoring.monitor(config, since, until, _log_dir(args, config), args.version, now=now)
    except monitoring.MonitorError as e:
        raise cli.CommandError(str(e), e.code) from None
    data = report.data
    _auto_rollback(args, config, data, now, _log_dir(args, config))
    return _act(
        args,
        config,
        data,
        lambda: monitoring.table(report, show_all=args.all),
        html=lambda path: monitoring.write_html(report, path),
        on_retrain=lambda result: monitoring.history.mark_retrain(config, data, args.version, result, now),
    )


def _history(args: argparse.Namespace, config) -> int:
    """The recorded runs (or one feature's scores), then the live quality and error-rate series."""
    from pipeline.monitoring import auto_rollback, feedback, history

    entries, feature = history.load(config), args.history or None
    quality = feedback.load_series(config)
    error_rate = auto_rollback.error_rate_series(config, _log_dir(args, config))
    if args.json:
        out = [dict(e, scores=[s for s in e["scores"] if feature is None or s["feature"] == feature]) for e in entries]
        doc = {"workspace": str(config.workspace_path), "feature": feature, "runs": out, "quality": quality}
        print(json.dumps(dict(doc, error_rate=error_rate), indent=2))
        return cli.EXIT_OK
    lines = history.lines(entries, feature)
    tables = feedback.series_lines(quality)
    errors = auto_rollback.error_rate_lines(error_rate)
    tables += ([""] if tables and errors else []) + errors
    for line in lines + ([""] + tables if tables else []):
        print(line)
    return cli.EXIT_OK


def _log_dir(args: argparse.Namespace, config) -> Path:
    """The model's request log directory: --log-dir (or the workspace's request log root), then the model."""
    return (Path(args.log_dir) if args.log_dir else config.request_log_root) / config.model_name


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


def _labels(args: argparse.Namespace, config) -> int:
    import tempfile

    from pipeline import monitoring

    now = time.time()
    try:
        with tempfile.TemporaryDirectory(prefix="mlpipe-labels-") as workdir:
            data = monitoring.feedback.live_quality(
                config, Path(args.labels), _log_dir(args, config), now, Path(workdir)
            )
    except monitoring.MonitorError as e:
        raise cli.CommandError(str(e), e.code) from None
    _auto_rollback(args, config, data, now, _log_dir(args, config))

    def lines() -> list[str]:
        lab, logged = data["labels"], data["logs"]
        out = [
            f"mlpipe monitor --labels: {lab['rows']} label row(s) in {len(lab['files'])} file(s): "
            f"{lab['matched']} matched, {lab['unmatched']} unmatched, {lab['outside_retention']} outside retention "
            f"(monitoring.labels_lookback), {lab['duplicates']} duplicate(s) ({lab['conflicting_duplicates']} "
            f"conflicting), {lab['missing_key']} without a key, {lab['missing_label']} without a label",
            f"  logs: {logged['examples']} logged example(s) in {logged['records']} request(s), "
            f"{logged['unkeyed_examples']} without a key, {logged['repeated_keys']} repeated key(s), "
            f"{logged['bad_records']} unreadable",
        ]
        out += monitoring.feedback.series_lines(data["series"]) or ["no labelled prediction to score"]
        for entry in data["series"]:
            worst = sorted(
                (s for s in entry["slices"] if s["examples"] >= config.monitoring.min_slice_examples),
                key=lambda s: s["metrics"].get(entry["metric"], 1.0),
            )[:1]
            for s in worst:
                out.append(
                    f"  {entry['window']['since']} version {entry['version']}: weakest slice {s['slice']} "
                    f"{entry['metric']} {s['metrics'].get(entry['metric'], float('nan')):.4f} on {s['examples']}"
                )
        out += [f"note: {n}" for n in data["notes"]]
        out.append(_rollback_line(data["rollback"]))
        out.append(f"ALERT: {', '.join(data['alerts'])}" if data["alert"] else "no alert")
        return out

    return _act(args, config, data, lines, html=None)


_ACTIONS = {"rollback": "roll back", "drop_label": "remove a label"}


def _rollback_line(decision: dict) -> str:
    done = decision.get("done")
    if done and done["action"] == "rollback":
        return (
            f"mlpipe: rolled back automatically: version {done['to_version']} re-published as version "
            f"{done['new_version']}, replacing {done['failed_version']} ({decision['reason']})"
        )
    if done:
        return f"mlpipe: removed label {done['label']} automatically ({decision['reason']})"
    if decision.get("dry_run") and decision["action"]:
        return f"dry run: would {_ACTIONS[decision['action']]}: {decision['reason']}"
    return f"automatic rollback: none ({decision['reason']})"


def _auto_rollback(args: argparse.Namespace, config, data: dict, now: float, log_dir: Path) -> None:
    """The automatic rollback rule after a monitor run; a rollback is an alert of its own (the hooks say so)."""
    from pipeline import monitoring
    from pipeline.metadata.snapshot import RegistryError

    data["error_rate"] = monitoring.auto_rollback.error_rate_series(config, log_dir)
    decision = monitoring.auto_rollback.rollback_decision(config, now, log_dir)
    decision["dry_run"] = args.dry_run
    if decision["action"] and not args.dry_run:
        try:
            decision["done"] = monitoring.auto_rollback.apply(config, decision, now)
        except RegistryError as e:
            raise cli.CommandError(f"automatic rollback failed: {e}", e.code) from None
        data["alerts"] = sorted(set(data["alerts"]) | {f"rollback:{decision['failure']['version']}"})
        data["alert"] = True
    data["rollback"] = decision


def _act(args: argparse.Namespace, config, data: dict, lines, html, on_retrain=None) -> int:
    """Writes the HTML page, notifies, retrains, prints; returns the exit code."""
    from pipeline import logs
    from pipeline.cli import actions

    if args.html and html is not None:
        try:
            html(Path(args.html))
        except OSError as e:
            raise cli.CommandError(f"cannot write {args.html}: {e.strerror}", cli.EXIT_USAGE) from None
        data["html"] = str(Path(args.html).resolve())
    data["notified"] = None
    if data["alert"] and not args.no_notify and (config.monitoring.alert_command or config.monitoring.webhook_url):
        data["notified"] = actions.notify(config, {k: v for k, v in data.items() if k != "notified"})
        for channel, outcome in data["notified"].items():
            if outcome is not None and not outcome["ok"]:
                print(
                    f"mlpipe: alert {channel} failed: {outcome.get('error') or outcome.get('stderr') or outcome}",
                    file=logs.terminal(),
                )
    data["retrain"] = None
    if args.retrain and data["retrain_wanted"]:
        if not args.json:
            print("mlpipe: alert: starting `mlpipe retrain`", flush=True)
        data["retrain"] = actions.start_retrain(config, args.config)
        if on_retrain is not None:
            on_retrain(data["retrain"])
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    else:
        for line in lines():
            print(line)
        if data.get("html"):
            print(f"HTML report: {data['html']}")
        if data["retrain"] is not None:
            print(f"mlpipe retrain exited {data['retrain']['exit_code']} after {data['retrain']['seconds']} s")
        elif args.retrain and data.get("retrain_gate") and data["alert"]:
            print(f"no retrain: {data['retrain_gate']['reason']}")
    return EXIT_ALERT if data["alert"] else cli.EXIT_OK
