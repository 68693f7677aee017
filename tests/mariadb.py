"""A throw-away MariaDB server for tests: Debian's mariadb-server, started unprivileged-style on
127.0.0.1 at a free port with its data directory under a pytest tmp dir (never the system service).

`tools/test-services.sh` installs the packages (CI runs it); where they are missing the tests that
need a server are skipped with the reason.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

PASSWORD = "s3cret-Mlmd-pw"  # the test user's password: tests check it never leaks
USER = "mlpipe"


def _binary(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name) or next(
            (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name) if p.exists()), None
        )
        if found:
            return found
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class MariaDB:
    datadir: Path
    port: int
    process: subprocess.Popen | None = None

    @property
    def socket_path(self) -> Path:
        return self.datadir / "mysqld.sock"

    def start(self) -> None:
        server = _binary("mariadbd", "mysqld")
        args = [
            server,
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--socket={self.socket_path}",
            "--bind-address=127.0.0.1",
            f"--port={self.port}",
            f"--pid-file={self.datadir}/mysqld.pid",
            f"--log-error={self.datadir}/error.log",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=32M",
            "--performance-schema=OFF",
            "--skip-log-bin",
        ]
        if os.geteuid() == 0:  # mariadbd refuses root unless told; it still runs only our own tmp data dir
            args.append("--user=root")
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mariadbd exited: {(self.datadir / 'error.log').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("mariadbd did not start listening within 60 s")

    def kill(self) -> None:
        """SIGKILL, as a crashed database host: clients see their connections die."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def admin(self, sql: str) -> list[tuple]:
        """Runs SQL as the server's root over its socket."""
        import pymysql

        conn = pymysql.connect(unix_socket=str(self.socket_path), user="root", autocommit=True)
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return list(cur.fetchall())
        finally:
            conn.close()

    def create_database(self, name: str) -> str:
        self.admin(f"CREATE DATABASE `{name}`")
        return name

    def metadata_table(self, database: str, password_env: str = "MLPIPE_TEST_DB_PASSWORD") -> str:
        """The [metadata] TOML section pointing at `database` (the password comes from `password_env`)."""
        return (
            f'[metadata]\nbackend = "mysql"\nhost = "127.0.0.1"\nport = {self.port}\n'
            f'database = "{database}"\nuser = "{USER}"\npassword_env = "{password_env}"\n'
        )


def start(datadir: Path) -> MariaDB:
    """Initialises a data dir and starts a server with a password-protected `mlpipe` user."""
    install = _binary("mariadb-install-db", "mysql_install_db")
    if install is None or _binary("mariadbd", "mysqld") is None:
        pytest.skip("MariaDB is not installed (run tools/test-services.sh, which apt-get installs mariadb-server)")
    datadir.mkdir(parents=True, exist_ok=True)
    args = [
        install,
        "--no-defaults",
        f"--datadir={datadir}",
        "--auth-root-authentication-method=normal",
        "--skip-test-db",
    ]
    if os.geteuid() == 0:
        args.append("--user=root")
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"mariadb-install-db failed: {done.stderr[-2000:]}")
    server = MariaDB(datadir, free_port())
    server.start()
    server.admin(f"CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'")
    server.admin(f"GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'%'")
    return server


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory):
    server = start(tmp_path_factory.mktemp("mariadb") / "data")
    yield server
    server.stop()


@pytest.fixture
def mysql_env(monkeypatch):
    """The test user's password in the environment variable the [metadata] sections name."""
    monkeypatch.setenv("MLPIPE_TEST_DB_PASSWORD", PASSWORD)
