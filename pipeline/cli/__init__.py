"""The `mlpipe` command line.

Exit codes of every command: 0 success (for `run`: the run completed, pushed or not),
1 the pipeline or the command failed, 2 bad usage, config or input data.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline import config as config_lib

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

# Set by commands that write a log file, so interpreter-exit noise lands there too.
_exit_log: Path | None = None


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit code `code`."""

    def __init__(self, message: str, code: int = EXIT_FAILED):
        super().__init__(message)
        self.code = code


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """Options every command that reads the config takes (the file and the workspace)."""
    parser.add_argument("--config", metavar="FILE", help="TOML config file (see README: Configuration)")
    parser.add_argument(
        "--workspace",
        metavar="DIR",
        help=f"where MLMD, artifacts, logs and pushed models live (default ./workspace, or ${config_lib.WORKSPACE_ENV})",
    )


def add_json_options(parser: argparse.ArgumentParser, doc: str) -> None:
    """The config options and --json, whose schema `doc` (docs/*.md) documents."""
    add_config_options(parser)
    parser.add_argument("--json", action="store_true", help=f"print JSON (schema in {doc})")


def print_json(data: dict) -> None:
    print(json.dumps(data, indent=2, default=str))


def recorded(record: dict) -> str:
    """Where a registry change (rollback, approve, reject, bless --force) is audited: who and why."""
    return f"recorded as MLMD execution {record['execution_id']} by {record['user']}: {record['reason']}"


def refusals(handler):
    """Turns a refusal of the registry layers (RegistryError: one line, its exit code) into the CLI's error."""

    def run(args: argparse.Namespace) -> int:
        from pipeline.metadata.snapshot import RegistryError

        try:
            return handler(args)
        except RegistryError as e:
            raise CommandError(str(e), e.code) from None

    return run


def load_config(args: argparse.Namespace, overrides: dict | None = None) -> config_lib.Config:
    merged = {"workspace": getattr(args, "workspace", None)}
    merged.update(overrides or {})
    try:
        return config_lib.load(getattr(args, "config", None), merged)
    except config_lib.ConfigError as e:
        raise CommandError(f"config error: {e}", EXIT_USAGE) from None


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Flags for the common knobs of a pipeline run; each overrides the config file."""
    add_config_options(parser)
    g = parser.add_argument_group("pipeline knobs (override the config file)")
    g.add_argument("--data-root", metavar="DIR", help="directory of input CSV files (data.root)")
    g.add_argument("--schema", metavar="FILE", help="pin a curated schema.pbtxt instead of inferring one (data.schema)")
    g.add_argument("--train-steps", type=int, metavar="N", help="training steps (training.train_steps)")
    g.add_argument("--eval-steps", type=int, metavar="N", help="evaluation steps during training (training.eval_steps)")
    g.add_argument(
        "--value-threshold",
        type=float,
        metavar="X",
        help="lower bound of the value-thresholded metric (evaluation.value_lower_bound)",
    )
    g.add_argument(
        "--change-tolerance",
        type=float,
        metavar="X",
        help="how far below the baseline the change-thresholded metric may fall (evaluation.change_tolerance)",
    )
    g.add_argument(
        "--eval-max-examples",
        type=int,
        metavar="N",
        help="evaluate on a deterministic sample of at most N eval rows, 0 = all (evaluation.max_examples)",
    )
    g.add_argument("--beam-runner", choices=config_lib.BEAM_RUNNERS, help="Beam runner preset (beam.runner)")
    g.add_argument(
        "--direct-running-mode",
        choices=config_lib.BEAM_RUNNING_MODES,
        help="Beam DirectRunner mode (beam.direct_running_mode)",
    )
    g.add_argument(
        "--direct-num-workers",
        type=int,
        metavar="N",
        help="Beam DirectRunner workers, 0 = one per core (beam.direct_num_workers)",
    )
    g.add_argument(
        "--beam-arg",
        action="append",
        metavar="--NAME=VALUE",
        default=None,
        help="extra Beam pipeline argument, written with '=': --beam-arg=--NAME=VALUE; repeatable " "(beam.extra_args)",
    )
    g.add_argument(
        "--module-file", metavar="FILE", help="TFX module file with preprocessing_fn and run_fn (model.module_file)"
    )
    g.add_argument("--label-key", metavar="KEY", help="the label among the transformed features (model.label_key)")
    g.add_argument("--no-cache", action="store_true", help="re-run every component (enable_cache = false)")
    parser.add_argument("--verbose", "-v", action="store_true", help="also show the full TFX/Beam/TF logs live")
    parser.add_argument("--json", action="store_true", help="print the run summary as JSON (see README)")


def run_overrides(args: argparse.Namespace) -> dict:
    return {
        "data.root": args.data_root,
        "data.schema": args.schema,
        "training.train_steps": args.train_steps,
        "training.eval_steps": args.eval_steps,
        "evaluation.value_lower_bound": args.value_threshold,
        "evaluation.change_tolerance": args.change_tolerance,
        "evaluation.max_examples": args.eval_max_examples,
        "beam.runner": args.beam_runner,
        "beam.direct_running_mode": args.direct_running_mode,
        "beam.direct_num_workers": args.direct_num_workers,
        "beam.extra_args": args.beam_arg,
        "enable_cache": False if args.no_cache else None,
        "model.module_file": getattr(args, "module_file", None),
        "model.label_key": getattr(args, "label_key", None),
    }


def check_data(config: config_lib.Config, args: argparse.Namespace):
    """Before anything runs or is written: copies the embedded taxi sample on first use of the default
    data root, then checks the input CSVs (pipeline/dag/inputs.py). Bad data: CommandError, exit 2."""
    from pipeline import logs
    from pipeline.dag import inputs
    from pipeline.ops import runner

    try:
        copied = runner.ensure_default_data(config)
        checked = runner.check_before_run(config)
    except inputs.InputDataError as e:
        raise CommandError(f"input data error: {e}", EXIT_USAGE) from None
    except config_lib.ConfigError as e:  # found before the run: a [model] or data setting
        raise CommandError(f"config error: {e}", EXIT_USAGE) from None
    if copied and not args.json:
        print(f"mlpipe: first use: copied the taxi sample shipped with tfx to {copied}", flush=True)
    if checked.bad_rows:
        print(
            f"mlpipe: warning: ExampleGen will skip {checked.bad_rows} of {checked.rows} rows whose values do not "
            f"parse (first: {checked.first_bad.describe()}); data.max_bad_row_fraction = "
            f"{config.data.max_bad_row_fraction:g}",
            file=logs.terminal(),
            flush=True,
        )
    return checked


def run_and_report(config: config_lib.Config, args: argparse.Namespace, checked=None) -> int:
    """Runs the pipeline with logs in the workspace and prints progress and the summary."""
    global _exit_log
    from pipeline import logs
    from pipeline.ops import runner

    checked = checked or check_data(config, args)
    log_path = logs.new_log(
        config.log_dir, "run", f"mlpipe {args.command}: pipeline '{config.pipeline_name}' " f"on {config.data.root}"
    )
    _exit_log = log_path
    if not args.json:
        print(f"mlpipe: running pipeline '{config.pipeline_name}' on {config.data.root}", flush=True)
        print(f"mlpipe: full logs in {log_path}", flush=True)
    with logs.capture_output(log_path, verbose=args.verbose) as console:

        def say(line: str) -> None:
            if not args.json:
                console.write(line + "\n")

        summary = runner.run(config, say, checked=checked)
    if args.json:
        print(json.dumps({"log": str(log_path), **summary.to_dict()}, indent=2, default=str))
    else:
        print(f"mlpipe: run {summary.run_id or '-'} took {summary.seconds:.1f} s")
        for line in summary.lines():
            print(line)
    return EXIT_OK if summary.completed else EXIT_FAILED


def _run_command(args: argparse.Namespace) -> int:
    return run_and_report(load_config(args, run_overrides(args)), args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlpipe",
        description="TFX pipeline for the taxi model: train, evaluate, bless, push, serve.",
        epilog="Exit codes: 0 success, 1 failure, 2 bad usage/config/input; some commands add their own "
        "(retrain: 75 busy; monitor: alerts). `mlpipe COMMAND --help` for details.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="run the whole pipeline once (ExampleGen to Pusher)",
        description="Run ExampleGen, StatisticsGen, SchemaGen, ExampleValidator, Transform, Trainer, "
        "Evaluator and Pusher under TFX's LocalDagRunner; unchanged steps are reused from the cache. "
        "Exit 0 when the run completed (pushed or not), 1 when a component failed, 2 for bad config or data.",
    )
    add_run_options(run)
    run.set_defaults(func=_run_command)
    for register in _command_registrars():
        register(sub)
    return parser


# Modules that each define `add_parser(subparsers)` registering one or more commands.
COMMAND_MODULES = [
    "pipeline.cli.registry",
    "pipeline.cli.rollout",
    "pipeline.cli.retrain",
    "pipeline.cli.compile",
    "pipeline.cli.monitor",
    "pipeline.cli.project",
    "pipeline.cli.metadata",
    "pipeline.cli.compare",
    "pipeline.cli.release",
    "pipeline.cli.bless",
    "serving.cli",
]


def _command_registrars():
    import importlib

    return [importlib.import_module(name).add_parser for name in COMMAND_MODULES]


def command_log(args: argparse.Namespace, command: str | None = None) -> Path | None:
    """Where a command's third-party noise goes (pipeline/logs.py command_log)."""
    from pipeline import logs

    return logs.command_log(getattr(args, "config", None), getattr(args, "workspace", None), command or args.command)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    from pipeline.logs import quiet_stderr, terminal

    with quiet_stderr(command_log(args)):
        try:
            return args.func(args)
        except CommandError as e:
            print(f"mlpipe: {e}", file=terminal())
            return e.code
        except config_lib.ConfigError as e:  # e.g. [metadata] settings that reach no database
            print(f"mlpipe: config error: {e}", file=terminal())
            return EXIT_USAGE
        except KeyboardInterrupt:
            print("mlpipe: interrupted", file=terminal())
            return 130


def entry() -> None:
    """Console-script entry point: runs main, then exits without the interpreter's teardown.

    The atexit handlers run (log flushing, temp-file cleanup, child processes); what is skipped is
    Python's finalization of TF, Beam and TFMA objects, which took 10 s after a pipeline run under load
    (docs/performance.md) and printed TF's teardown noise.
    """
    import atexit
    import os

    code = main()
    from pipeline.logs import silence_exit_noise

    silence_exit_noise(_exit_log)
    atexit._run_exitfuncs()
    silence_exit_noise(_exit_log)  # flushes what the handlers wrote
    os._exit(code)
