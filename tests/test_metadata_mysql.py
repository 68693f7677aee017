"""[metadata] on MySQL/MariaDB: settings, bad connections, the cross-host retrain lock, `mlpipe metadata`.

A real MariaDB (tests/mariadb.py) on 127.0.0.1; the pipeline runs live in test_metadata_mysql_e2e.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from pipeline import config as config_lib
from tests.conftest import run_cli
from tests.mariadb import PASSWORD, mariadb, mysql_env  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parent.parent


def new_database(server) -> str:
    return server.create_database(f"mlmd_{uuid.uuid4().hex[:8]}")


def write_config(path: Path, server, database: str, **overrides) -> Path:
    text = server.metadata_table(database)
    for key, value in overrides.items():
        lines = [line for line in text.splitlines() if not line.startswith(f"{key} =")]
        text = "\n".join(lines + [f"{key} = {json.dumps(value)}"]) + "\n"
    path.write_text(text)
    return path


# --- Settings ----------------------------------------------------------------------------------


def test_sqlite_is_the_default_and_mysql_settings_are_checked(tmp_path):
    config = config_lib.load(None, {"workspace": str(tmp_path)})
    assert config.metadata.backend == "sqlite"
    from pipeline.metadata import queries as metadata

    assert metadata.connection_config(config).sqlite.filename_uri == str(tmp_path / "metadata.sqlite")
    bad = tmp_path / "bad.toml"
    for text, key in (
        ('[metadata]\nbackend = "postgres"\n', "metadata.backend"),
        ('[metadata]\nhost = "db"\n', "metadata.host"),  # mysql-only key with the sqlite backend
        ('[metadata]\nbackend = "mysql"\nhost = "db"\nuser = "u"\n', "metadata.database"),
        ('[metadata]\nbackend = "mysql"\nhost = "db"\ndatabase = "d"\nuser = "u"\nport = 0\n', "metadata.port"),
    ):
        bad.write_text(text)
        with pytest.raises(config_lib.ConfigError) as e:
            config_lib.load(bad)
        assert e.value.key == key


def test_a_password_in_the_config_file_is_refused_in_one_line(tmp_path):
    path = tmp_path / "team.toml"
    path.write_text(
        '[metadata]\nbackend = "mysql"\nhost = "db"\ndatabase = "d"\nuser = "u"\n' 'password = "hunter2-in-toml"\n'
    )
    code, out, err = run_cli("runs", "--config", str(path), "--workspace", str(tmp_path / "ws"))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "metadata.password" in err and "password_env" in err
    assert "hunter2-in-toml" not in err


# --- Bad connection settings: one line naming the setting, exit 2, nothing run --------------------


@pytest.mark.parametrize("setting", ["host", "password", "database", "password_env", "password_file"])
def test_bad_connection_settings_are_one_line_and_nothing_runs(
    setting, mariadb, mysql_env, tmp_path, taxi_slice, monkeypatch
):
    database = new_database(mariadb)
    if setting == "host":  # a port where nothing listens
        from tests.mariadb import free_port

        path = write_config(tmp_path / "c.toml", mariadb, database, port=free_port())
        expected = "metadata.host"
    elif setting == "password":
        monkeypatch.setenv("MLPIPE_TEST_DB_PASSWORD", "wrong-password")
        path = write_config(tmp_path / "c.toml", mariadb, database)
        expected = "metadata.password_env"
    elif setting == "database":
        path = write_config(tmp_path / "c.toml", mariadb, "no_such_db")
        expected = "metadata.database"
    elif setting == "password_env":
        monkeypatch.delenv("MLPIPE_TEST_DB_PASSWORD")
        path = write_config(tmp_path / "c.toml", mariadb, database)
        expected = "MLPIPE_TEST_DB_PASSWORD"
    else:
        path = write_config(tmp_path / "c.toml", mariadb, database, password_file=str(tmp_path / "missing"))
        expected = "metadata.password_file"
    workspace = tmp_path / "ws"
    for argv in (["run", "--data-root", str(taxi_slice)], ["runs", "--json"], ["models"], ["metadata", "check"]):
        code, out, err = run_cli(*argv, "--config", str(path), "--workspace", str(workspace))
        assert code == 2, (argv, out, err)
        assert err.count("\n") == 1 and expected in err, (argv, err)
        assert PASSWORD not in out + err and "wrong-password" not in out + err
    assert not (workspace / "pipeline_root").exists()  # nothing ran
    if setting != "database":
        assert (
            mariadb.admin(f"SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{database}'")[0][0]
            == 0
        )


def test_password_file_and_check_never_print_the_password(mariadb, tmp_path):
    database = new_database(mariadb)
    secret = tmp_path / "db-password"
    secret.write_text(PASSWORD + "\n")
    path = write_config(tmp_path / "c.toml", mariadb, database, password_file=str(secret))
    code, out, err = run_cli("metadata", "check", "--config", str(path), "--workspace", str(tmp_path), "--json")
    assert code == 0, err
    answer = json.loads(out)
    assert answer == {
        "backend": "mysql",
        "host": "127.0.0.1",
        "port": mariadb.port,
        "database": database,
        "user": "mlpipe",
        "pipeline_name": "mlpipe-taxi",
        "runs": 0,
    }
    assert PASSWORD not in out + err
    # MLMD created its tables in the (empty) database.
    assert mariadb.admin(f"SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{database}'")[0][0] > 10


# --- The cross-host lock ------------------------------------------------------------------------


HOLDER = textwrap.dedent("""
    import sys, time
    from pipeline import config as config_lib
    from pipeline.ops import lock
    held = lock.acquire_db(config_lib.load(sys.argv[1], {"workspace": sys.argv[2]}))
    print("held", flush=True)
    time.sleep(600)
""")


def test_db_lock_spans_workspaces_and_dies_with_its_holder(mariadb, mysql_env, tmp_path):
    from pipeline.ops import lock

    database = new_database(mariadb)
    path = write_config(tmp_path / "c.toml", mariadb, database)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), str(tmp_path / "ws-a")],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        other = config_lib.load(path, {"workspace": str(tmp_path / "ws-b")})  # another workspace, same DB
        with pytest.raises(lock.DbLockBusy) as busy:
            lock.acquire_db(other)
        assert "another retrain holds the database lock" in str(busy.value)
        # SIGKILL: no clean release; the database frees the lock when the connection dies.
        holder.kill()
        holder.wait()
        held = lock.acquire_db(other, wait_seconds=60, poll_seconds=0.2)
        assert held is not None
        lock.release_db(held)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    # SQLite keeps only the workspace lock.
    assert lock.acquire_db(config_lib.load(None, {"workspace": str(tmp_path / "ws-c")})) is None


# --- Moving a store ------------------------------------------------------------------------------


def test_copy_moves_a_sqlite_history_into_mysql_and_answers_stay_the_same(first_run, mariadb, mysql_env, tmp_path):
    workspace, code, _, err = first_run
    assert code == 0, err
    database = new_database(mariadb)
    path = write_config(tmp_path / "c.toml", mariadb, database)
    ws = ["--workspace", str(workspace)]
    code, out, err = run_cli("metadata", "copy", "--to", "mysql", "--config", str(path), *ws, "--json")
    assert code == 0, err
    copied = json.loads(out)["copied"]
    import sqlite3

    with sqlite3.connect(workspace / "metadata.sqlite") as src:
        for table, rows in copied.items():
            assert rows == src.execute(f"SELECT COUNT(*) FROM `{table}`").fetchone()[0], table
            assert rows == mariadb.admin(f"SELECT COUNT(*) FROM `{database}`.`{table}`")[0][0], table
    assert copied["Artifact"] > 10 and copied["Event"] > 10 and copied["Attribution"] > 0
    # Every registry answer is the same from MySQL as from the SQLite file.
    code, models, _ = run_cli("models", *ws, "--json")
    version = json.loads(models)["versions"][0]["version"]
    for argv in (["runs", "--json"], ["models", "--json"], ["lineage", str(version), "--json"]):
        on_sqlite = run_cli(*argv, *ws)
        on_mysql = run_cli(*argv, *ws, "--config", str(path))
        assert on_sqlite[0] == on_mysql[0] == 0, (argv, on_mysql)
        assert json.loads(on_sqlite[1]) == json.loads(on_mysql[1]), argv
    # The server's lineage answer: `mlpipe serve --config` naming the shared database reads it there
    # (the same answer as `mlpipe lineage --json` on MySQL), not the SQLite file beside the model.
    import requests

    from tests.serving.conftest import live_serve

    (workspace / "metadata.sqlite").rename(tmp_path / "moved-away.sqlite")
    try:
        with live_serve("--config", str(path), *ws) as server:
            answer = requests.get(
                f"http://127.0.0.1:{server.rest_port}/v1/models/taxi/versions/{version}/lineage", timeout=60
            )
    finally:
        (tmp_path / "moved-away.sqlite").rename(workspace / "metadata.sqlite")
    assert answer.status_code == 200, answer.text
    assert answer.json() == json.loads(run_cli("lineage", str(version), *ws, "--config", str(path), "--json")[1])
    # A second copy would mix two histories: refused, nothing written.
    code, out, err = run_cli("metadata", "copy", "--to", "mysql", "--config", str(path), *ws)
    assert code == 2 and err.count("\n") == 1 and "metadata.database" in err and "empty database" in err
    assert mariadb.admin(f"SELECT COUNT(*) FROM `{database}`.Artifact")[0][0] == copied["Artifact"]
    # --from names the SQLite file to copy instead of the workspace's: here an empty workspace's config
    # and a store kept elsewhere.
    elsewhere = tmp_path / "kept" / "old-metadata.sqlite"
    elsewhere.parent.mkdir()
    shutil.copy2(workspace / "metadata.sqlite", elsewhere)
    second = new_database(mariadb)
    path2 = write_config(tmp_path / "c2.toml", mariadb, second)
    empty_ws = ["--workspace", str(tmp_path / "empty-ws")]
    code, out, err = run_cli(
        "metadata", "copy", "--to", "mysql", "--from", str(elsewhere), "--config", str(path2), *empty_ws, "--json"
    )
    assert code == 0, err
    assert json.loads(out)["copied"] == copied
    assert mariadb.admin(f"SELECT COUNT(*) FROM `{second}`.Artifact")[0][0] == copied["Artifact"]


def test_compile_with_mysql_metadata_embeds_no_connection_and_no_password(tmp_path, monkeypatch):
    from tests.test_compile import VERTEX_TOML

    monkeypatch.setenv("MLPIPE_TEST_DB_PASSWORD", PASSWORD)
    path = tmp_path / "vertex.toml"
    path.write_text(
        VERTEX_TOML + '[metadata]\nbackend = "mysql"\nhost = "mlmd-db.internal"\nport = 3306\n'
        'database = "mlmd_team"\nuser = "mlpipe"\npassword_env = "MLPIPE_TEST_DB_PASSWORD"\n'
    )
    out_file = tmp_path / "out" / "vertex.json"
    code, out, err = run_cli(
        "compile",
        "--target",
        "vertex",
        "-o",
        str(out_file),
        "--config",
        str(path),
        "--workspace",
        str(tmp_path / "ws"),
        "--json",
    )
    assert code == 0, err
    written = "".join(p.read_text() for p in out_file.parent.rglob("*") if p.is_file())
    assert PASSWORD not in written + out + err
    assert "mlmd-db.internal" not in written and "mlmd_team" not in written  # Vertex brings its own MLMD
