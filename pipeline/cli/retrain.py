"""`mlpipe ingest` (split a CSV into time spans) and `mlpipe retrain` (the scheduled entry point).

retrain exit codes: 0 the run completed (pushed or not blessed) or there was no new span;
1 the pipeline failed; 2 bad usage, config or data; 75 (EX_TEMPFAIL) another retrain holds the
workspace lock: try again later.
"""

from __future__ import annotations

import argparse
import json
import time

from pipeline import cli

EXIT_BUSY = 75  # sysexits.h EX_TEMPFAIL: cron/systemd callers may simply retry later


def add_parser(subparsers) -> None:
    ingest = subparsers.add_parser(
        "ingest",
        help="split a CSV into time spans (<data root>/span-<N>/data.csv)",
        description="Split CSV rows into spans by their trip_start_timestamp (unix seconds, UTC): one span per "
        "month or quarter present in the data, numbered chronologically from --first-span (default 1). "
        "An existing span is never overwritten unless --force. Exit 0 written, 2 bad input or a span exists.",
    )
    ingest.add_argument("csv", help="CSV file with the columns of models/features.py CSV_COLUMNS")
    ingest.add_argument("--data-root", required=True, metavar="DIR", help="where span-<N>/ directories are written")
    ingest.add_argument("--by", choices=("month", "quarter"), default="month", help="span length (default month)")
    ingest.add_argument("--first-span", type=int, default=1, metavar="N", help="number of the oldest span (default 1)")
    g = ingest.add_mutually_exclusive_group()
    g.add_argument("--limit", type=int, metavar="N", help="write only the first N spans")
    g.add_argument(
        "--next",
        type=int,
        metavar="N",
        dest="next_spans",
        help="write the N oldest spans that do not exist yet (replay history N spans at a time)",
    )
    ingest.add_argument("--force", action="store_true", help="overwrite spans that already exist")
    ingest.add_argument("--dry-run", action="store_true", help="print the plan, write nothing")
    ingest.add_argument("--json", action="store_true", help="print the spans as JSON (see docs/continuous-training.md)")
    ingest.add_argument(
        "--config",
        metavar="FILE",
        help="TOML config file (read for data.max_bad_row_fraction; see README: Configuration)",
    )
    ingest.set_defaults(func=_ingest)

    retrain = subparsers.add_parser(
        "retrain",
        help="scheduled retraining: run the pipeline if a new span has landed",
        description="If the data root has a span newer than the ones the last completed run trained on, run the "
        "pipeline (ExampleGen ingests the newest span; Transform and Trainer use the latest data.window_spans "
        "spans; the Evaluator compares against the latest blessed model; Pusher pushes only a blessed model). "
        "Otherwise print one line and exit 0. Holds <workspace>/.retrain.lock while it works (and, with "
        '[metadata] backend = "mysql", a lock in that database, so one retrain runs across hosts). '
        f"Exit codes: 0 done (pushed, not blessed, or no new data), 1 failed, 2 bad usage/config/data, "
        f"{EXIT_BUSY} another retrain is running.",
    )
    cli.add_run_options(retrain)
    retrain.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help=f"wait up to this long for a running retrain to finish (default 0: exit {EXIT_BUSY} at once)",
    )
    retrain.add_argument(
        "--window-spans", type=int, metavar="N", help="train on the latest N spans (data.window_spans)"
    )
    retrain.add_argument(
        "--warm-start",
        action="store_true",
        default=None,
        help="start training from the latest blessed model's weights (training.warm_start)",
    )
    retrain.set_defaults(func=_retrain)


def _ingest(args: argparse.Namespace) -> int:
    from pathlib import Path

    from data import spans
    from models import features
    from pipeline import logs
    from pipeline.dag import dataset, inputs
    from pipeline.dag.inputs import InputDataError

    config = cli.load_config(args)
    types = dataset.column_types(config)
    try:
        if Path(args.csv).is_file():  # else split_csv says so
            checked = inputs.check_csv_files(
                [Path(args.csv)], types, config.data.max_bad_row_fraction, dataset.column_source(config)
            )
            if checked.bad_rows:
                print(
                    f"mlpipe: warning: {checked.bad_rows} of {checked.rows} rows have values that do not parse "
                    f"(first: {checked.first_bad.describe()}); they are written, and ExampleGen will skip them "
                    f"(data.max_bad_row_fraction = {config.data.max_bad_row_fraction:g})",
                    file=logs.terminal(),
                )
        plan = spans.split_csv(
            args.csv,
            args.data_root,
            by=args.by,
            timestamp_column=features.TIMESTAMP_COLUMN,
            expected_columns=list(types),
            first_span=args.first_span,
            limit=args.limit,
            next_spans=args.next_spans,
            force=args.force,
            dry_run=args.dry_run,
        )
    except InputDataError as e:
        raise cli.CommandError(f"ingest: input data error: {e}", cli.EXIT_USAGE) from None
    except spans.SpanError as e:
        raise cli.CommandError(f"ingest: {e}", cli.EXIT_USAGE) from None
    verb = "would write" if args.dry_run else "wrote"
    if args.json:
        print(
            json.dumps(
                {
                    "data_root": str(args.data_root),
                    "by": args.by,
                    "dry_run": args.dry_run,
                    "spans": [
                        {"span": p.span, "period": p.period, "rows": p.rows, "path": str(p.path), "action": p.action}
                        for p in plan
                    ],
                },
                indent=2,
            )
        )
    elif not plan:
        print(f"mlpipe: no new spans to write under {args.data_root}")
    else:
        for p in plan:
            print(f"  span {p.span:<4} {p.period:<8} {p.rows:>7} rows  {p.path}")
        print(f"mlpipe: {verb} {len(plan)} span(s) under {args.data_root}")
    return cli.EXIT_OK


def _retrain(args: argparse.Namespace) -> int:
    from data import spans
    from pipeline import logs
    from pipeline.ops import lock as lock_lib

    overrides = cli.run_overrides(args)
    overrides.update({"data.window_spans": args.window_spans, "training.warm_start": args.warm_start})
    config = cli.load_config(args, overrides)
    root = config.data.root
    if not spans.uses_spans(root):
        raise cli.CommandError(
            f"retrain needs the span layout ({root}/span-<N>/*.csv); create it with `mlpipe ingest`",
            cli.EXIT_USAGE,
        )
    checked = cli.check_data(config, args)  # bad data: exit 2 before the lock, MLMD or a log is touched

    def waiting(holder: dict) -> None:
        who = lock_lib.describe(holder) if holder else "another process"
        print(
            f"mlpipe: waiting up to {args.wait:g} s for the workspace lock, held by {who}",
            file=logs.terminal(),
            flush=True,
        )

    waited_since = time.monotonic()
    try:
        held = lock_lib.acquire(config.workspace_path, args.wait, on_wait=waiting)
    except lock_lib.LockBusy as e:
        print(f"mlpipe: {e}; try again later (exit {EXIT_BUSY})", file=logs.terminal())
        return EXIT_BUSY
    held_db = None
    try:
        # Shared metadata: one retrain across hosts; --wait covers both locks.
        held_db = lock_lib.acquire_db(config, max(0.0, args.wait - (time.monotonic() - waited_since)))
    except lock_lib.LockBusy as e:
        lock_lib.release(held)
        print(f"mlpipe: {e}; try again later (exit {EXIT_BUSY})", file=logs.terminal())
        return EXIT_BUSY
    except BaseException:
        lock_lib.release(held)
        raise
    try:
        if held.stale:
            print(
                f"mlpipe: recovered a stale lock left by {lock_lib.describe(held.stale)} (it did not finish)",
                file=logs.terminal(),
            )
        newest = spans.list_spans(root)[-1]
        last = _last_trained(config)
        if last is not None and last.spans and newest <= max(last.spans):
            if args.json:
                print(
                    json.dumps(
                        {
                            "outcome": "no_new_data",
                            "newest_span": newest,
                            "trained_spans": last.spans,
                            "run_id": last.run_id,
                        },
                        indent=2,
                    )
                )
            else:
                print(
                    f"mlpipe: no new data: newest span {newest} was already trained on "
                    f"(run {last.run_id}, spans {_span_range(last.spans)}); nothing to do"
                )
            return cli.EXIT_OK
        if not args.json:
            since = f"after span {max(last.spans)}" if last and last.spans else "no completed run yet"
            print(
                f"mlpipe: new data: newest span {newest} ({since}); window of " f"{config.data.window_spans} span(s)",
                flush=True,
            )
        return cli.run_and_report(config, args, checked)
    finally:
        lock_lib.release_db(held_db)
        lock_lib.release(held)


def _last_trained(config):
    from pipeline.metadata import queries as metadata

    store = metadata.open_store(config)
    return metadata.last_trained_run(store, config.pipeline_name) if store else None


def _span_range(values: list[int]) -> str:
    return f"{values[0]}-{values[-1]}" if len(values) > 1 else str(values[0])
