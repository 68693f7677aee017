"""An exclusive, crash-safe lock on a workspace: at most one `mlpipe retrain` runs in it at a time.

The lock is `fcntl.flock` on ``<workspace>/.retrain.lock``. The kernel releases a flock when its
holder exits in any way (SIGKILL included), so a killed retrain never leaves the workspace locked.
The file's content says who holds it (pid, host, start time); it is cleared on a clean release,
so content found by the next holder means the previous one died: it is reported as recovered.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipeline.config import retrain_lock_path


class LockBusy(Exception):
    """Another live process holds the lock; `holder` is what its lock file says (may be {})."""

    def __init__(self, path: Path, holder: dict):
        who = describe(holder) if holder else "another process"
        super().__init__(f"workspace is busy: {who} holds {path}")
        self.path = path
        self.holder = holder


@dataclass
class Lock:
    path: Path
    fd: int
    stale: dict  # what a dead previous holder left in the file, {} if it released cleanly


def read_holder(path: Path) -> dict:
    """The holder info in a lock file, {} if empty, missing or unreadable."""
    try:
        text = Path(path).read_text().strip()
        return json.loads(text) if text else {}
    except (OSError, ValueError):
        return {}


def describe(holder: dict) -> str:
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('started', '?')}"


def acquire(
    workspace: str | os.PathLike,
    wait_seconds: float = 0.0,
    poll_seconds: float = 0.5,
    on_wait: Callable[[dict], None] | None = None,
) -> Lock:
    """Takes the lock, waiting up to `wait_seconds` for a holder to finish; raises LockBusy after that.

    `on_wait(holder)` is called once, when the lock is found busy and there is time to wait."""
    path = retrain_lock_path(workspace)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + max(0.0, wait_seconds)
    announced = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                holder = read_holder(path)
                os.close(fd)
                raise LockBusy(path, holder) from None
            if on_wait is not None and not announced:
                on_wait(read_holder(path))
                announced = True
            time.sleep(min(poll_seconds, max(0.0, deadline - time.monotonic())) or poll_seconds)
    # We hold the flock, so whoever wrote the content is gone (or released without clearing it).
    stale = read_holder(path)
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    os.fsync(fd)
    return Lock(path, fd, stale)


def release(lock: Lock) -> None:
    """Clears the holder info and releases the flock."""
    try:
        os.ftruncate(lock.fd, 0)
    finally:
        fcntl.flock(lock.fd, fcntl.LOCK_UN)
        os.close(lock.fd)


@contextlib.contextmanager
def workspace_lock(workspace: str | os.PathLike, wait_seconds: float = 0.0):
    lock = acquire(workspace, wait_seconds)
    try:
        yield lock
    finally:
        release(lock)


# --- Across hosts: a lock held in the shared metadata database (MySQL/MariaDB GET_LOCK) ---------


class DbLockBusy(LockBusy):
    """Another connection holds the database lock; `holder` says which (connection id, client host)."""

    def __init__(self, name: str, holder: dict):
        Exception.__init__(
            self,
            f"another retrain holds the database lock {name!r} (MySQL connection "
            f"{holder.get('connection', '?')} from {holder.get('host', '?')})",
        )
        self.path = Path(name)
        self.holder = holder


@dataclass
class DbLock:
    name: str
    connection: object  # the PyMySQL connection that owns the lock: the lock lives as long as it does


def db_lock_name(config) -> str:
    """One name per database and pipeline (MySQL allows 64 characters)."""
    return f"mlpipe.retrain:{config.metadata.database}:{config.pipeline_name}"[:64]


def _db_holder(cursor, name: str) -> dict:
    cursor.execute("SELECT IS_USED_LOCK(%s)", (name,))
    (connection_id,) = cursor.fetchone()
    holder = {"connection": connection_id}
    if connection_id is not None:
        try:
            cursor.execute("SELECT HOST FROM information_schema.PROCESSLIST WHERE ID = %s", (connection_id,))
            row = cursor.fetchone()
            if row:
                holder["host"] = row[0]
        except Exception:  # the user may not see other users' connections
            pass
    return holder


def acquire_db(config, wait_seconds: float = 0.0, poll_seconds: float = 0.5) -> DbLock | None:
    """Takes the database lock of a MySQL-backed config (None for SQLite: the workspace lock suffices).

    The lock belongs to a dedicated connection: the database frees it when that connection dies,
    so a killed holder (or its lost host) never leaves it held. Raises DbLockBusy after `wait_seconds`.
    Bad [metadata] settings raise pipeline.metadata.queries.MetadataConnectionError.
    """
    if config.metadata.backend != "mysql":
        return None
    from pipeline.metadata import queries as metadata

    name = db_lock_name(config)
    connection = metadata.mysql_connect(config)
    deadline = time.monotonic() + max(0.0, wait_seconds)
    try:
        with connection.cursor() as cursor:
            while True:
                cursor.execute("SELECT GET_LOCK(%s, 0)", (name,))
                if cursor.fetchone()[0] == 1:
                    return DbLock(name, connection)
                if time.monotonic() >= deadline:
                    raise DbLockBusy(name, _db_holder(cursor, name))
                time.sleep(min(poll_seconds, max(0.0, deadline - time.monotonic())) or poll_seconds)
    except BaseException:
        connection.close()
        raise


def release_db(lock: DbLock | None) -> None:
    if lock is None:
        return
    try:
        with lock.connection.cursor() as cursor:
            cursor.execute("SELECT RELEASE_LOCK(%s)", (lock.name,))
    except Exception:  # the connection is gone, and with it the lock
        pass
    finally:
        try:
            lock.connection.close()
        except Exception:
            pass
