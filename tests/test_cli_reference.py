"""Every command and flag of the real `mlpipe` parser (pipeline.cli.build_parser) is exercised.

A flag counts as exercised when a test passes it to the real entry point (its string is an argument
in a test: run_cli, a `python -m pipeline` subprocess, a documented command run by test_docs.py), or
when this module checks what it does: pipeline knobs reach the config (cli.run_overrides and
load_config, what every pipeline command calls) and serve flags reach the server options
(serving.cli.build_options, what `mlpipe serve` calls).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import cli
from tests.conftest import run_cli

REPO = Path(__file__).resolve().parent.parent


def commands(parser=None, path=()):
    """(command path, parser) of every command and subcommand of the real CLI."""
    parser = parser or cli.build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from commands(sub, (*path, name))


def flags(parser) -> list[tuple[str, ...]]:
    return [tuple(a.option_strings) for a in parser._actions if a.option_strings and "--help" not in a.option_strings]


def exercised_words() -> set[str]:
    """Every string a test passes around, split into words, plus the documented commands test_docs runs."""
    words: set[str] = set()
    for path in (REPO / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                words.update(node.value.split())
    from tests import test_docs

    for c in test_docs.doc_commands():
        if not c.synopsis and any(c.text.startswith(p) for p in test_docs.RUN_HERE):
            words.update(c.text.split())
    return words


# Flags whose effect this module checks through the code the command calls (see below).
# A real TFX module file (config checks that it exists): TFX's own taxi module, from the installed package.
TFX_TAXI_MODULE = str(
    Path(importlib.util.find_spec("tfx").origin).parent
    / "examples"
    / "chicago_taxi_pipeline"
    / "taxi_utils_native_keras.py"
)
PIPELINE_KNOBS = {  # flag: (value, config key)
    "--data-root": ("/tmp/some-data", "data.root"),
    "--schema": (None, "data.schema"),
    "--train-steps": ("7", "training.train_steps"),
    "--eval-steps": ("3", "training.eval_steps"),
    "--value-threshold": ("0.5", "evaluation.value_lower_bound"),
    "--change-tolerance": ("0.2", "evaluation.change_tolerance"),
    "--beam-runner": ("direct", "beam.runner"),
    "--direct-running-mode": ("multi_processing", "beam.direct_running_mode"),
    "--direct-num-workers": ("0", "beam.direct_num_workers"),
    "--beam-arg": ("--max_num_records=5", "beam.extra_args"),
    "--no-cache": (None, "enable_cache"),
    "--config": (None, None),
    "--workspace": ("/tmp/ws-x", "workspace"),
    "--module-file": (TFX_TAXI_MODULE, "model.module_file"),
    "--label-key": ("tips_xf", "model.label_key"),
}
SERVE_FLAGS = {  # flag: (value, ServerOptions attribute path, expected)
    "--model_name": ("cabs", lambda o: o.models[0].name, "cabs"),
    "--model_base_path": ("/srv/models/taxi", lambda o: o.models[0].base_path, "/srv/models/taxi"),
    "--model_config_file_poll_wait_seconds": ("30", lambda o: o.model_config_file_poll_wait_seconds, 30.0),
    "--file_system_poll_wait_seconds": ("5", lambda o: o.file_system_poll_wait_seconds, 5.0),
    "--version_policy": ("latest:2", lambda o: o.models[0].policy.describe(), "latest:2"),
    "--version_labels": ("stable=3", lambda o: o.models[0].label_map, {"stable": 3}),
    "--saved_model_tags": ("serve,gpu", lambda o: o.saved_model_tags, ("serve", "gpu")),
    "--max_num_load_retries": ("2", lambda o: o.max_num_load_retries, 2),
    "--enable_model_warmup": ("false", lambda o: o.enable_model_warmup, False),
    "--num_request_iterations_for_warmup": ("3", lambda o: o.num_request_iterations_for_warmup, 3),
    "--port": ("9500", lambda o: o.port, 9500),
    "--grpc_host": ("0.0.0.0", lambda o: o.grpc_host, "0.0.0.0"),
    "--rest_api_port": ("9501", lambda o: o.rest_api_port, 9501),
    "--rest_api_host": ("0.0.0.0", lambda o: o.rest_api_host, "0.0.0.0"),
    "--rest_api_num_threads": ("3", lambda o: o.rest_api_num_threads, 3),
    "--rest_api_timeout_in_ms": ("1500", lambda o: o.rest_api_timeout_in_ms, 1500),
    "--grpc_max_threads": ("3", lambda o: o.grpc_max_threads, 3),
    "--max_request_bytes": ("1000", lambda o: o.max_request_bytes, 1000),
    "--auth_token": ("s3cret", lambda o: o.auth_token, "s3cret"),
    "--request_log_sampling_rate": ("0.5", lambda o: o.log_options.sampling_rate, 0.5),
    "--request_log_dir": ("/srv/logs", lambda o: o.log_options.root, "/srv/logs"),
    "--request_log_max_file_bytes": ("1000", lambda o: o.log_options.max_file_bytes, 1000),
    "--request_log_max_file_seconds": ("60", lambda o: o.log_options.max_file_seconds, 60.0),
}


def test_every_command_and_flag_is_exercised():
    words = exercised_words()
    missing = []
    for path, parser in commands():
        if path[-1] not in words:
            missing.append(f"mlpipe {' '.join(path)} (the command)")
        for options in flags(parser):
            checked_here = (path[0] in ("run", "retrain", "compile") and options[0] in PIPELINE_KNOBS) or (
                path[0] == "serve" and options[0] in SERVE_FLAGS
            )
            if not checked_here and not any(o in words for o in options):
                missing.append(f"mlpipe {' '.join(path)} {options[-1]}")
    assert not missing, "commands and flags no test exercises:\n" + "\n".join(missing)


@pytest.mark.parametrize("command", ["run", "retrain", "compile"])
def test_pipeline_knob_flags_reach_the_config(command, tmp_path):
    schema = REPO / "data" / "schema" / "schema.pbtxt"
    config_file = tmp_path / "mlpipe.toml"
    config_file.write_text('pipeline_name = "from-file"\n')
    argv = [command] + (["--target", "vertex", "-o", "x.json"] if command == "compile" else [])
    for flag, (value, _) in PIPELINE_KNOBS.items():
        if flag == "--beam-arg":  # its value starts with "--": argparse needs the = form, as documented
            argv.append(f"{flag}={value}")
        elif flag not in ("--schema", "--config"):
            argv += [flag] + ([value] if value is not None else [])
    argv += ["--schema", str(schema), "--config", str(config_file)]
    args = cli.build_parser().parse_args(argv)
    config = cli.load_config(args, cli.run_overrides(args))
    got = config.to_dict()
    for flag, (value, key) in PIPELINE_KNOBS.items():
        if key is None or value is None:
            continue
        section, _, leaf = key.rpartition(".")
        actual = got[section][leaf] if section else got[leaf]
        expected = {
            "beam.extra_args": (value,),
            "training.train_steps": 7,
            "training.eval_steps": 3,
            "evaluation.value_lower_bound": 0.5,
            "evaluation.change_tolerance": 0.2,
            "beam.direct_num_workers": 0,
        }.get(key, value)
        assert actual == expected, (flag, actual)
    assert config.data.schema == str(schema) and config.enable_cache is False
    assert config.pipeline_name == "from-file"  # --config was read


def test_serve_flags_reach_the_server_options(tmp_path):
    from serving import cli as serving_cli

    default = serving_cli.build_options(cli.build_parser().parse_args(["serve", "--workspace", str(tmp_path)]))
    for flag, (value, read, expected) in SERVE_FLAGS.items():
        args = cli.build_parser().parse_args(["serve", "--workspace", str(tmp_path), flag, value])
        options = serving_cli.build_options(args)
        assert read(options) == expected != read(default), flag


def test_ingest_splits_by_the_configured_timestamp_column(taxi_slice, tmp_path):
    # A dataset whose time column has another name: data.timestamp_column (or --timestamp-column) names it.
    from models import features

    lines = (taxi_slice / "data.csv").read_text().splitlines(keepends=True)[:301]
    source = tmp_path / "renamed.csv"
    source.write_text(lines[0].replace(features.TIMESTAMP_COLUMN, "event_time") + "".join(lines[1:]))
    columns = {("event_time" if k == features.TIMESTAMP_COLUMN else k): v for k, v in features.COLUMN_TYPES.items()}
    config = tmp_path / "mlpipe.toml"
    body = "\n".join(f'{k} = "{v}"' for k, v in columns.items())
    config.write_text(f'[data]\ntimestamp_column = "event_time"\n[data.columns]\n{body}\n')
    code, out, err = run_cli(
        "ingest", str(source), "--data-root", str(tmp_path / "a"), "--config", str(config), "--json"
    )
    assert code == 0, err
    by_config = json.loads(out)["spans"]
    assert by_config and sum(s["rows"] for s in by_config) == 300
    # The flag names it as well; the taxi default does not fit this file: one line naming both settings.
    plain = tmp_path / "plain.toml"
    plain.write_text(f"[data.columns]\n{body}\n")
    code, out, err = run_cli(
        "ingest", str(source), "--data-root", str(tmp_path / "b"), "--config", str(plain), "--json",
        "--timestamp-column", "event_time",
    )  # fmt: skip
    assert code == 0, err
    assert [(s["span"], s["rows"]) for s in json.loads(out)["spans"]] == [(s["span"], s["rows"]) for s in by_config]
    code, out, err = run_cli("ingest", str(source), "--data-root", str(tmp_path / "c"), "--config", str(plain))
    assert code == 2 and "no column 'trip_start_timestamp'" in err and "data.timestamp_column" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "c").exists()


def test_ingest_first_span_and_force(taxi_slice, tmp_path):
    source = str(taxi_slice / "data.csv")
    code, out, err = run_cli(
        "ingest",
        source,
        "--data-root",
        str(tmp_path / "s"),
        "--by",
        "quarter",
        "--first-span",
        "5",
        "--limit",
        "2",
        "--json",
    )
    assert code == 0, err
    assert [s["span"] for s in json.loads(out)["spans"]] == [5, 6]
    code, _, err = run_cli(
        "ingest", source, "--data-root", str(tmp_path / "s"), "--by", "quarter", "--first-span", "5", "--limit", "1"
    )
    assert code == 2 and "already exist" in err and "--force" in err
    code, out, err = run_cli(
        "ingest",
        source,
        "--data-root",
        str(tmp_path / "s"),
        "--by",
        "quarter",
        "--first-span",
        "5",
        "--limit",
        "1",
        "--force",
        "--dry-run",
        "--json",
    )
    assert code == 0 and json.loads(out)["spans"][0]["action"] == "overwrite", err


def test_compile_deploy_flags_land_in_the_compiled_job(tmp_path):
    code, out, err = run_cli(
        "compile",
        "--target",
        "vertex",
        "--output",
        str(tmp_path / "job.json"),
        "--workspace",
        str(tmp_path / "ws"),
        "--image",
        "example.com/mlpipe:1",
        "--pipeline-root",
        "gs://b/root",
        "--deploy-data-root",
        "gs://b/taxi",
        "--serving-model-dir",
        "gs://b/models/taxi",
        "--schedule",
        "0 3 * * *",
        "--project",
        "p1",
        "--region",
        "europe-west4",
        "--verbose",
        "--json",
    )
    assert code == 0, err
    compiled = json.loads(out)
    assert compiled["serving_model_dir"] == "gs://b/models/taxi" and compiled["schedule"] == "0 3 * * *"
    schedule = json.loads(Path(next(p for p in compiled["schedule_files"] if p.endswith(".json"))).read_text())
    assert "p1" in json.dumps(schedule) and "europe-west4" in json.dumps(schedule)


def test_served_traffic_logged_then_monitored_with_all_and_version(first_run, taxi_slice, tmp_path):
    """`mlpipe serve` with request logging and a log level, real requests, then `mlpipe monitor --all
    --version V --log-dir D` on them."""
    import csv
    import shutil

    import requests

    from models import features
    from tests.test_docs import env as docs_env
    from tests.test_docs import free_port

    ws = tmp_path / "ws"
    shutil.copytree(first_run[0], ws)
    version = max(int(p.name) for p in (ws / "serving_model" / "taxi").iterdir() if p.name.isdigit())
    logs, rest, grpc_port = tmp_path / "request-logs", free_port(), free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline",
            "serve",
            "--workspace",
            str(ws),
            "--rest_api_port",
            str(rest),
            "--port",
            str(grpc_port),
            "--request_log_sampling_rate",
            "1",
            "--request_log_dir",
            str(logs),
            "--log_level",
            "WARNING",
        ],
        cwd=REPO,
        env=docs_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if "AVAILABLE" in requests.get(f"http://127.0.0.1:{rest}/v1/models/taxi", timeout=2).text:
                    break
            except requests.ConnectionError:
                time.sleep(0.3)
        cast = {"int": int, "float": float, "string": str}
        with open(taxi_slice / "data.csv") as f:
            rows = [r for _, r in zip(range(150), csv.DictReader(f))]
        instances = [
            {
                k: (
                    cast[features.COLUMN_TYPES[k]](r[k])
                    if r[k] != ""
                    else ("" if features.COLUMN_TYPES[k] == "string" else float("nan"))
                )
                for k in features.MODEL_FEATURES
            }
            for r in rows
        ]
        instances = [
            i
            for i in instances
            if all(i[k] == i[k] for k in ("trip_start_hour", "trip_start_day", "trip_start_month", "trip_seconds"))
        ]
        body = json.dumps({"signature_name": "serving_raw", "instances": instances})
        r = requests.post(f"http://127.0.0.1:{rest}/v1/models/taxi:predict", data=body, timeout=60)
        assert r.status_code == 200, r.text
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "INFO" not in err, err  # --log_level WARNING
    code, out, err = run_cli(
        "monitor",
        "--workspace",
        str(ws),
        "--log-dir",
        str(logs),
        "--since",
        "1h",
        "--version",
        str(version),
        "--all",
        "--no-notify",
    )
    assert code in (0, 3), out + err
    assert f"version {version}: 1 request(s), {len(instances)} example(s)" in out
    assert "other check(s) within their thresholds" not in out  # --all lists every check
    assert sum(1 for line in out.splitlines() if line.startswith("skew ")) >= len(features.MODEL_FEATURES) - 2
