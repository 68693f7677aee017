"""End to end on MLMD in a real MariaDB: the same scenario on SQLite and on MySQL answers the same,
one retrain at a time across workspaces sharing a database, and a database that dies mid-run.

The scenario's retrains are tests/test_retrain.py's first three (tests/conftest.py span_retrains: the
SQLite side, run once for both modules); here they run again on MySQL, then each side answers the same
read commands, a label, a rollback and a monitor pass.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import mariadb as mariadb_lib
from tests.conftest import RETRAIN_FLAGS, run_cli, write_taxi_slice
from tests.mariadb import PASSWORD, mariadb, mysql_env  # noqa: F401 (fixtures)
from tests.test_metadata_mysql import new_database, write_config

ROOT = Path(__file__).resolve().parent.parent
FLAGS = ["--train-steps", "50", "--eval-steps", "10", "--value-threshold", "0", "--change-tolerance", "1"]
HOUR = 3600


def write_spans(root: Path, rows: int = 3000) -> Path:
    """span-1 and span-2 (halves of the taxi slice) under root/all; returns root/all."""
    slice_csv = write_taxi_slice(root / "slice", rows) / "data.csv"
    header, *lines = slice_csv.read_text().splitlines(keepends=True)
    for span, part in ((1, lines[: len(lines) // 2]), (2, lines[len(lines) // 2 :])):
        (root / "all" / f"span-{span}").mkdir(parents=True)
        (root / "all" / f"span-{span}" / "data.csv").write_text(header + "".join(part))
    return root / "all"


@pytest.fixture(scope="module")
def spans(tmp_path_factory) -> Path:
    return write_spans(tmp_path_factory.mktemp("spans"))


def parse(out: str) -> dict:
    """The JSON document a command printed. In-process (run_cli), Keras' progress lines written to
    sys.stdout during training precede it; the console script sends them to the run's log file."""
    start = 0 if out.startswith("{") else out.index("\n{") + 1
    return json.loads(out[start:])


def _json(argv: list[str], codes: tuple[int, ...] = (0,)) -> dict:
    code, out, err = run_cli(*argv)
    assert code in codes, (argv, out, err)
    return parse(out)


def retrain_answer(result: tuple[int, str, str]) -> str:
    """What a retrain printed, less what differs between any two runs: the new-data line and the run
    summary (verdict, checks, gates, warm start, pushed model) from `Result:` on; not the progress lines
    (Keras' among them, in-process) nor the run's duration."""
    code, out, err = result
    assert code == 0, (out, err)
    lines = out.splitlines()
    head = [line for line in lines if line.startswith(("mlpipe: new data", "mlpipe: no new data"))]
    summary = next((i for i, line in enumerate(lines) if line.startswith("Result: ")), len(lines))
    return "\n".join(head + lines[summary:])


def retrains_on_mysql(base: Path, spans_root: Path, config: Path) -> dict:
    """span_retrains' three retrains (span 1, no new span, span 2) in a workspace with MLMD on MySQL."""
    workspace, data = base / "ws", base / "data"
    data.mkdir(parents=True)
    shutil.copytree(spans_root / "span-1", data / "span-1")
    retrain = ["retrain", "--workspace", str(workspace), "--config", str(config), "--data-root", str(data)]
    retrain += RETRAIN_FLAGS
    answers = {"retrain-1": run_cli(*retrain), "retrain-no-new-data": run_cli(*retrain)}
    shutil.copytree(spans_root / "span-2", data / "span-2")
    answers["retrain-2"] = run_cli(*retrain)
    return {key: retrain_answer(result) for key, result in answers.items()} | {"_workspace": str(workspace)}


def read_and_act(answers: dict, workspace: Path, config: Path | None, now: float, base: Path) -> dict:
    """After the retrains: every read command, a label, a rollback and a monitor pass over logged
    traffic, added to `answers` ({step: JSON answer}), which is returned."""
    from tests.test_monitor import training_rows, write_traffic

    ws = ["--workspace", str(workspace)] + (["--config", str(config)] if config else [])
    answers["runs"] = _json(["runs", *ws, "--json"])
    answers["models"] = _json(["models", *ws, "--json"])
    versions = sorted(v["version"] for v in answers["models"]["versions"])
    answers["lineage"] = _json(["lineage", str(versions[-1]), *ws, "--json"])
    answers["lineage-span-1"] = _json(["lineage", "--span", "1", *ws, "--json"])
    answers["label"] = _json(["label", "set", "stable", str(versions[0]), *ws, "--json"])
    answers["rollback"] = _json(["rollback", "--reason", "canary regressed", *ws, "--json"])
    answers["models-after-rollback"] = _json(["models", *ws, "--json"])
    rows = training_rows(workspace)
    log_dir = workspace / "request_logs" / "taxi"
    write_traffic(log_dir, rows[:600], versions[-1], now - 3 * HOUR, HOUR, seed=1)
    write_traffic(log_dir, rows[600:1200], versions[-1], now - 2 * HOUR, HOUR, seed=2)
    since, until = (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) for t in (now - 2 * HOUR, now - HOUR))
    answers["monitor"] = _json(
        ["monitor", *ws, "--since", since, "--until", until, "--no-notify", "--json"], codes=(0, 3)
    )  # 3: alerts (same on both backends, compared below)
    (base / "answers.json").write_text(json.dumps(answers, indent=2))  # for reading a failed comparison
    return answers


# The scenario's retrains (its answers are their printed summaries: retrain_answer) and span_retrains' names.
RETRAINS = {"retrain-1": "run1", "retrain-no-new-data": "idle", "retrain-2": "run2"}
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?([+-]\d\d:\d\d|Z)?$")
TIME_KEYS = {"seconds", "started", "pushed", "finished", "time", "created", "since", "until", "now"}


def normalise(answers: dict) -> dict:
    """Paths, run ids, version numbers (push timestamps), times and durations replaced by placeholders;
    everything else (ids of MLMD records, spans, states, metrics, lineage) kept as it is."""
    # The SQLite side reads a copy of span_retrains' workspace whose MLMD names the original's paths.
    workspaces = sorted({answers["_workspace"], answers.get("_workspace_origin", answers["_workspace"])}, key=len)
    data = answers["_data"]
    versions = sorted({v for key in ("models-after-rollback",) for v in answers[key]["serving"]["versions_on_disk"]})
    version_names = {str(v): f"<v{i + 1}>" for i, v in enumerate(versions)}
    runs = [r["run_id"] for r in reversed(answers["runs"]["runs"])]
    run_names = {r: f"<run{i + 1}>" for i, r in enumerate(runs)}

    def fix(value, key=None):
        if isinstance(value, dict):
            return {version_names.get(k, k): fix(v, k) for k, v in value.items() if not k.startswith("_")}
        if isinstance(value, list):
            return [fix(v, key) for v in value]
        # Timings: monitor seconds, the release gates' measured latencies (p50_ms, candidate_p95_ms, ...).
        if (key in TIME_KEYS or str(key).endswith(("_seconds", "_ms"))) and value is not None:
            return "<time>"
        if isinstance(value, bool) or value is None:
            return value
        if isinstance(value, float):
            return round(value, 4)
        if isinstance(value, int):
            return version_names.get(str(value), value)
        if isinstance(value, str):
            if value in run_names:
                return run_names[value]
            if value in version_names:
                return version_names[value]
            if ISO.match(value):
                return "<time>"
            for workspace in reversed(workspaces):  # the longer first: one may be a prefix of the other
                value = value.replace(workspace, "<ws>")
            value = value.replace(data, "<data>")
            value = re.sub(r"/run-\d{8}-\d{6}(-\d+)?\.log$", "/run-<stamp>.log", value)  # run log names carry the time
            if key in RETRAINS:  # a retrain's summary: the gates' measured load time and latencies
                value = re.sub(r"\b\d+(\.\d+)? (ms|s)\b", r"<time> \2", value)
                value = re.sub(r"latency ratio [\d.]+", "latency ratio <ratio>", value)
            if key == "input_fingerprint":  # ExampleGen's checksums fold in the input files' mtimes
                value = re.sub(r"checksum:\d+", "checksum:<mtime>", value)
            for raw, name in version_names.items():  # in paths and in text ("rollback to version N: ...")
                value = re.sub(rf"\b{raw}\b", name, value)
            for raw, name in run_names.items():
                value = value.replace(raw, name)
            return value
        return value

    return fix(answers)


@pytest.fixture(scope="module")
def both(tmp_path_factory, span_retrains, mariadb):  # noqa: F811
    os.environ["MLPIPE_TEST_DB_PASSWORD"] = PASSWORD
    now = time.time()
    snapshot = span_retrains["snapshot"]
    on_sqlite = {key: retrain_answer(span_retrains[run]) for key, run in RETRAINS.items()}
    on_sqlite |= {"_workspace": str(snapshot["workspace"]), "_workspace_origin": str(span_retrains["workspace"])}
    on_sqlite["_data"] = str(span_retrains["root"])
    read_and_act(on_sqlite, snapshot["workspace"], None, now, tmp_path_factory.mktemp("on-sqlite"))
    database = new_database(mariadb)
    config = write_config(tmp_path_factory.mktemp("cfg") / "team.toml", mariadb, database)
    base = tmp_path_factory.mktemp("on-mysql")
    on_mysql = retrains_on_mysql(base, snapshot["root"], config) | {"_data": str(base / "data")}
    read_and_act(on_mysql, Path(on_mysql["_workspace"]), config, now, base)
    return on_sqlite, on_mysql, database


def test_the_same_scenario_answers_the_same_on_sqlite_and_mysql(both, mariadb):  # noqa: F811
    on_sqlite, on_mysql, database = both
    # The MySQL answers really came from the database (and nothing went to a local SQLite file).
    assert not (Path(on_mysql["_workspace"]) / "metadata.sqlite").exists()
    assert mariadb.admin(f"SELECT COUNT(*) FROM `{database}`.Execution")[0][0] > 20
    assert on_mysql["retrain-no-new-data"].startswith("mlpipe: no new data: newest span 1")
    assert "\nResult: BLESSED and pushed as version" in on_mysql["retrain-2"]
    assert "\nWarm start: " in on_mysql["retrain-2"]  # the scenario warm-starts (and rolls a window of 2)
    assert len(on_mysql["runs"]["runs"]) == 2
    assert on_mysql["lineage-span-1"]["versions"] if "versions" in on_mysql["lineage-span-1"] else True
    assert on_mysql["monitor"]["versions"][0]["requests"] > 10
    a, b = normalise(on_sqlite), normalise(on_mysql)
    assert sorted(a) == sorted(b)
    for step in a:
        assert a[step] == b[step], step


def test_the_password_is_never_written_anywhere(both):
    _, on_mysql, _ = both
    assert PASSWORD not in json.dumps(on_mysql)
    workspace = Path(on_mysql["_workspace"])
    leaked = [str(p) for p in workspace.rglob("*") if p.is_file() and PASSWORD.encode() in p.read_bytes()]
    assert leaked == []
    assert list((workspace / "logs").glob("*.log"))  # (in-process, pytest keeps TFX's log records: see below)


# --- One retrain at a time across workspaces (hosts) that share the database ------------------------


def _mlpipe(*argv: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLPIPE_TEST_DB_PASSWORD": PASSWORD}
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *argv],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


def _read_until(process: subprocess.Popen, text: str) -> list[str]:
    lines = []
    for line in process.stdout:
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"{text!r} never printed: {''.join(lines)} {process.stderr.read()}")


def test_two_retrains_from_two_workspaces_sharing_a_database_one_runs_the_other_exits_75(
    mariadb, mysql_env, spans, tmp_path
):  # noqa: F811
    from pipeline import config as config_lib
    from pipeline.ops import lock

    config = write_config(tmp_path / "team.toml", mariadb, new_database(mariadb))
    first = _mlpipe(
        "retrain", "--config", str(config), "--workspace", str(tmp_path / "host-a"), "--data-root", str(spans), *FLAGS
    )
    try:
        _read_until(first, "mlpipe: new data")  # it holds its workspace lock and the database lock
        code, out, err = run_cli(
            "retrain",
            "--config",
            str(config),
            "--workspace",
            str(tmp_path / "host-b"),
            "--data-root",
            str(spans),
            *FLAGS,
        )
        assert code == 75, (out, err)
        assert err.count("\n") == 1 and "another retrain holds the database lock" in err and "try again later" in err
        assert not (tmp_path / "host-b" / "pipeline_root").exists()
        # The holder dies without releasing anything: the database frees its lock with its connection.
        first.kill()
        first.wait()
        held = lock.acquire_db(config_lib.load(config, {"workspace": str(tmp_path / "host-b")}), wait_seconds=60)
        assert held is not None
        lock.release_db(held)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()


# --- The database goes away mid-run ------------------------------------------------------------------


def test_a_database_that_dies_mid_run_fails_the_run_cleanly_and_the_next_run_recovers(tmp_path, taxi_slice):
    server = mariadb_lib.start(tmp_path / "db")
    try:
        config = write_config(tmp_path / "team.toml", server, server.create_database("mlmd"))
        ws = ["--config", str(config), "--workspace", str(tmp_path / "ws")]
        run = _mlpipe("run", *ws, "--data-root", str(taxi_slice), *FLAGS)
        _read_until(run, "CsvExampleGen")
        server.kill()
        out, err = run.communicate(timeout=600)
        assert run.returncode == 1, (out, err)
        assert "Result: FAILED" in out and "Nothing was pushed." in out
        assert "Traceback" not in out + err
        # The console run's log has TFX's whole connection config, with the password masked.
        (log,) = (tmp_path / "ws" / "logs").glob("*.log")
        text = log.read_text()
        assert "Using connection config" in text and 'password: "********"' in text and PASSWORD not in text
        server.start()  # same data directory and port
        os.environ["MLPIPE_TEST_DB_PASSWORD"] = PASSWORD
        code, out, err = run_cli("run", *ws, "--data-root", str(taxi_slice), *FLAGS, "--json")
        assert code == 0, (out, err)
        assert parse(out)["outcome"] == "pushed"
        runs = _json(["runs", *ws, "--json"])["runs"]
        assert [r["outcome"] for r in runs][0] == "pushed" and len(runs) == 2
    finally:
        server.stop()
