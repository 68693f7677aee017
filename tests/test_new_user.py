"""What a new user types, through the real entry points (issue 10's findings, one test each or more).

Subprocesses run `python -m pipeline` (what the `mlpipe` console script runs: pipeline.cli.entry)
with PYTHONPATH at this checkout; in-process calls go through pipeline.cli.main (tests/conftest.py
run_cli).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.conftest import FAST_FLAGS, run_cli

REPO = Path(__file__).resolve().parent.parent


def env(repo: Path = REPO) -> dict:
    e = {**os.environ, "PYTHONPATH": str(repo), "TF_USE_LEGACY_KERAS": "1"}
    e.pop("MLPIPE_WORKSPACE", None)
    return e


def mlpipe(*argv: str, cwd: Path = REPO, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *argv], cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout
    )


def versions(workspace: Path) -> list[int]:
    base = workspace / "serving_model" / "taxi"
    return sorted(int(p.name) for p in base.iterdir() if p.name.isdigit())


# --- entry points ---------------------------------------------------------------------------------


def test_python_m_pipeline_cli_behaves_like_mlpipe(tmp_path):
    direct = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "--help"],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    package = mlpipe("--help", timeout=120)
    assert direct.returncode == 0 and direct.stdout.startswith("usage: mlpipe"), direct.stdout + direct.stderr
    assert direct.stdout == package.stdout and direct.stderr == package.stderr == ""
    runs = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "runs", "--workspace", str(tmp_path / "ws")],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert runs.returncode == 0 and "nothing yet" in runs.stdout, runs.stdout + runs.stderr
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "run",
            "--workspace",
            str(tmp_path / "ws"),
            "--data-root",
            str(tmp_path / "none"),
        ],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (bad.returncode, bad.stdout) == (2, "")
    assert (
        bad.stderr
        == f"mlpipe: input data error: data directory {tmp_path / 'none'} does not exist (set --data-root or data.root)\n"
    )


def test_serve_takes_workspace_and_config_like_every_command(tmp_path):
    from pipeline import cli
    from serving import cli as serving_cli

    ws = tmp_path / "ws"
    config = tmp_path / "mlpipe.toml"
    config.write_text(f'workspace = "{ws}"\nmodel_name = "cabs"\n')
    args = cli.build_parser().parse_args(["serve", "--config", str(config)])
    (model,) = serving_cli.build_options(args).models
    assert (model.name, model.base_path) == ("cabs", str(ws / "serving_model" / "cabs"))
    args = cli.build_parser().parse_args(["serve", "--workspace", str(tmp_path / "other")])
    (model,) = serving_cli.build_options(args).models
    assert model.base_path == str(tmp_path / "other" / "serving_model" / "taxi")
    # Through main: a bad serve flag is serve's own one-line error, not argparse's "unrecognized arguments".
    code, out, err = run_cli("serve", "--workspace", str(ws), "--config", str(config), "--version_policy", "newest")
    assert code == 2 and err.startswith("mlpipe serve: error: ") and "--version_policy" in err, err


# --- make run on a fresh clone ----------------------------------------------------------------------


def fresh_copy(dest: Path) -> Path:
    """The files git tracks in this checkout, copied as they are now (what a fresh clone has)."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def test_make_run_on_a_fresh_clone_copies_the_taxi_sample_on_first_use(tmp_path):
    """`make run` is `mlpipe run` with no data flags: the default data root, data/taxi, does not
    exist in a fresh clone. (.ci/run runs `make run` itself to the end; here it is stopped once the
    data is in place and the pipeline has started.)"""
    clone = fresh_copy(tmp_path / "clone")
    assert not (clone / "data" / "taxi").exists()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", "--workspace", str(tmp_path / "ws"), *FAST_FLAGS],
        cwd=clone,
        env=env(clone),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("mlpipe: full logs in") or len(lines) > 5:
                break
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=60)
    copied = clone / "data" / "taxi" / "data.csv"
    assert lines[0] == f"mlpipe: first use: copied the taxi sample shipped with tfx to {copied}\n", lines + [err]
    assert lines[1] == f"mlpipe: running pipeline 'mlpipe-taxi' on {clone / 'data' / 'taxi'}\n"
    with open(copied) as f:
        assert sum(1 for _ in f) == 15003  # header + 15,002 rows, as the README says


# --- bad data: one validator for run, retrain and ingest ---------------------------------------------


def write_slice(
    taxi_slice: Path, dest: Path, changes: dict[int, dict[str, str]], drop_last_cell: int | None = None
) -> Path:
    """A copy of the slice's CSV with `changes` {file line: {column: value}} applied."""
    with open(taxi_slice / "data.csv", newline="") as f:
        rows = list(csv.reader(f))
    header = rows[0]
    for line, values in changes.items():
        for column, value in values.items():
            rows[line - 1][header.index(column)] = value
    if drop_last_cell:
        rows[drop_last_cell - 1] = rows[drop_last_cell - 1][:-1]
    dest.mkdir(parents=True, exist_ok=True)
    with open(dest / "data.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return dest / "data.csv"


NO_BAD_ROWS = "fix or remove the row (data.max_bad_row_fraction = 0 allows no bad rows)"


def test_run_refuses_a_value_of_the_wrong_type_before_anything_runs(taxi_slice, tmp_path):
    bad = write_slice(taxi_slice, tmp_path / "bad", {3: {"fare": "abc"}})
    ws = tmp_path / "ws"
    code, out, err = run_cli("run", "--workspace", str(ws), "--data-root", str(bad.parent), *FAST_FLAGS)
    assert code == 2
    assert (
        err
        == f"mlpipe: input data error: {bad} line 3, column fare: 'abc' is not a number (declared float); {NO_BAD_ROWS}\n"
    )
    assert out == ""  # no "full logs in" line pointing at an empty file
    assert not ws.exists()  # no MLMD, no log, nothing


def test_run_refuses_a_row_with_a_missing_value_and_an_integer_column_with_a_float(taxi_slice, tmp_path):
    bad = write_slice(taxi_slice, tmp_path / "short", {}, drop_last_cell=7)
    code, _, err = run_cli("run", "--workspace", str(tmp_path / "ws"), "--data-root", str(bad.parent))
    assert (
        code == 2
        and err == f"mlpipe: input data error: {bad} line 7: has 17 values, the header has 18; {NO_BAD_ROWS}\n"
    )
    bad = write_slice(taxi_slice, tmp_path / "float", {12: {"trip_start_hour": "9.5"}})
    code, _, err = run_cli("run", "--workspace", str(tmp_path / "ws"), "--data-root", str(bad.parent))
    assert code == 2 and f"{bad} line 12, column trip_start_hour: '9.5' is not an integer (declared int)" in err
    assert not (tmp_path / "ws").exists()


def test_ingest_refuses_bad_values_and_writes_no_span(taxi_slice, tmp_path):
    bad = write_slice(taxi_slice, tmp_path / "bad", {5: {"trip_miles": "n/a"}})
    code, out, err = run_cli("ingest", str(bad), "--data-root", str(tmp_path / "spans"), "--by", "quarter")
    assert code == 2 and out == ""
    assert err == (
        f"mlpipe: ingest: input data error: {bad} line 5, column trip_miles: 'n/a' is not a number "
        f"(declared float); {NO_BAD_ROWS}\n"
    )
    assert not (tmp_path / "spans").exists()


def test_retrain_refuses_a_bad_new_span_before_the_lock_mlmd_or_a_log(taxi_slice, tmp_path):
    spans = tmp_path / "spans"
    code, _, err = run_cli(
        "ingest", str(taxi_slice / "data.csv"), "--data-root", str(spans), "--by", "quarter", "--limit", "1"
    )
    assert code == 0, err
    span_csv = spans / "span-1" / "data.csv"
    write_slice(span_csv.parent, span_csv.parent, {4: {"trip_seconds": "fast"}})
    ws = tmp_path / "ws"
    code, out, err = run_cli("retrain", "--workspace", str(ws), "--data-root", str(spans), *FAST_FLAGS)
    assert code == 2 and out == ""
    assert err == (
        f"mlpipe: input data error: {span_csv} line 4, column trip_seconds: 'fast' is not an integer "
        f"(declared int); {NO_BAD_ROWS}\n"
    )
    assert not ws.exists()


def test_a_bounded_fraction_of_bad_rows_is_tolerated_by_config(taxi_slice, tmp_path):
    config = tmp_path / "mlpipe.toml"
    config.write_text("[data]\nmax_bad_row_fraction = 0.001\n")  # 3 of the slice's 3000 rows
    bad = write_slice(taxi_slice, tmp_path / "one", {10: {"fare": "abc"}, 20: {"tips": "?"}})
    code, out, err = run_cli("ingest", str(bad), "--data-root", str(tmp_path / "spans"), "--config", str(config))
    assert code == 0, err
    assert err == (
        f"mlpipe: warning: 2 of 3000 rows have values that do not parse (first: {bad} line 10, column "
        "fare: 'abc' is not a number (declared float)); they are written, and ExampleGen will skip "
        "them (data.max_bad_row_fraction = 0.001)\n"
    )
    assert "span(s) under" in out
    many = write_slice(taxi_slice, tmp_path / "many", {n: {"fare": "abc"} for n in range(10, 14)})
    code, _, err = run_cli("ingest", str(many), "--data-root", str(tmp_path / "spans2"), "--config", str(config))
    assert code == 2 and err.endswith(
        "fix or remove the rows (4 of 3000 rows are bad; data.max_bad_row_fraction = 0.001 allows 3)\n"
    ), err
    assert not (tmp_path / "spans2").exists()
    config.write_text("[data]\nmax_bad_row_fraction = 1.5\n")
    code, _, err = run_cli("run", "--config", str(config), "--workspace", str(tmp_path / "ws"))
    assert code == 2 and err == "mlpipe: config error: data.max_bad_row_fraction: must be in [0, 1), got 1.5\n"


# --- lock, logs, models -------------------------------------------------------------------------------


def test_retrain_waiting_for_the_lock_says_so_once_naming_the_holder(taxi_slice, tmp_path):
    from pipeline.ops import lock as lock_lib

    spans = tmp_path / "spans"
    assert run_cli("ingest", str(taxi_slice / "data.csv"), "--data-root", str(spans), "--limit", "1")[0] == 0
    ws = tmp_path / "ws"
    held = lock_lib.acquire(ws)  # another retrain (its own open file: flock conflicts in one process too)
    try:
        holder = lock_lib.read_holder(held.path)
        code, out, err = run_cli("retrain", "--workspace", str(ws), "--data-root", str(spans), "--wait", "1.5")
    finally:
        lock_lib.release(held)
    assert code == 75 and out == ""
    lines = err.splitlines()
    assert lines[0] == (
        f"mlpipe: waiting up to 1.5 s for the workspace lock, held by pid {holder['pid']} on "
        f"{holder['host']} since {holder['started']}"
    )
    assert len(lines) == 2 and lines[1].startswith("mlpipe: workspace is busy: ")  # said once


def test_log_names_are_unique_within_a_second_and_never_empty(tmp_path):
    from pipeline import logs

    paths = [logs.new_log(tmp_path, "run", "mlpipe run") for _ in range(20)]
    assert len(set(paths)) == 20
    assert all(p.read_text().startswith("mlpipe run (started ") for p in paths)
    assert all(re.search(r"run-\d{8}-\d{6}-\d{6}\.log$", p.name) for p in paths)


def test_models_on_a_workspace_with_only_killed_runs_says_so(taxi_slice, tmp_path):
    ws = tmp_path / "ws"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", "--workspace", str(ws), "--data-root", str(taxi_slice), *FAST_FLAGS],
        cwd=REPO,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            code, out, _ = run_cli("runs", "--workspace", str(ws), "--json")
            if code == 0 and json.loads(out)["runs"]:
                break
            time.sleep(0.5)
    finally:
        proc.kill()  # killed part-way, as by the OOM killer or a reboot
        proc.wait(timeout=60)
    code, out, err = run_cli("models", "--workspace", str(ws))
    assert code == 0, err
    assert out.startswith(f"mlpipe: nothing pushed yet: 1 run(s) in {ws}, none pushed a model (newest: incomplete"), out
    assert "`mlpipe runs` lists them" in out


# --- stderr of a normal start is mlpipe's own, and nothing else --------------------------------------


def test_models_and_lineage_print_no_third_party_noise(first_run, tmp_path):
    """(A normal `monitor` start is checked the same way by tests/test_docs.py, which runs the
    documented `mlpipe monitor --evaluate` command.)"""
    ws = tmp_path / "ws"
    shutil.copytree(first_run[0], ws)
    (version,) = versions(ws)
    models = mlpipe("models", "--workspace", str(ws))
    assert models.returncode == 0 and models.stderr == "", models.stderr
    assert models.stdout.startswith(f"version {version}  [latest]  pushed ")
    lineage = mlpipe("lineage", str(version), "--workspace", str(ws))
    assert lineage.returncode == 0 and lineage.stderr == "", lineage.stderr
    # The noise is kept in the workspace's log of the command, not thrown away.
    assert "FutureWarning" in (ws / "logs" / "models.log").read_text()


def test_serve_stderr_is_the_servers_own_lines_only(first_run, tmp_path):
    import socket

    ws = tmp_path / "ws"
    shutil.copytree(first_run[0], ws)
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    rest, grpc_port = ports
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
        ],
        cwd=REPO,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    ready = threading.Event()

    def read():
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if "REST API at" in line:
                ready.set()
        ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(180), lines
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)  # the reader thread drains stderr
        out = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    reader.join(timeout=10)
    assert proc.returncode == 0, lines
    base = ws / "serving_model" / "taxi"
    (v,) = versions(ws)
    stamp = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
    assert [stamp.sub("", line) for line in lines] == [
        f"serving model 'taxi' from {base} (latest:1)",
        f"INFO serving.manager: model taxi: loading version {v} from {base / str(v)}",
        f"INFO serving.manager: model taxi: version {v} is available",
        f"INFO serving: gRPC API at 127.0.0.1:{grpc_port}",
        f"INFO serving: REST API at http://127.0.0.1:{rest}/v1/models/",
        "INFO serving: shutting down: finishing in-flight requests",
        f"INFO serving.manager: model taxi: version {v} unloaded",
        "INFO serving: server stopped",
    ]
    assert out == ""


# --- the serving benchmark on a pushed model -----------------------------------------------------------


def test_serving_bench_runs_on_a_pushed_model(first_run):
    base = first_run[0] / "serving_model" / "taxi"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "serving_bench.py"),
            "--model_base_path",
            str(base),
            "--seconds",
            "0.2",
            "--concurrency",
            "1",
            "--rounds",
            "1",
        ],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    table = proc.stdout[proc.stdout.index("path ") :].splitlines()[2:]
    rows = [line.split() for line in table if line.split()[:1] in (["in-process"], ["prebound"], ["REST"], ["gRPC"])]
    assert [r[0] for r in rows] == ["in-process", "prebound", "REST", "gRPC", "REST", "gRPC"], proc.stdout
    assert all(r[-1] == "0" for r in rows), proc.stdout  # no errors on any path
