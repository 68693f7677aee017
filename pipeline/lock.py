"""An exclusive, crash-safe lock on a workspace: at most one `mlpipe retrain` runs in it at a time.

The lock is `fcntl.flock` on ``<workspace>/.retrain.lock``. The kernel releases a flock when its
holder exits in any way (SIGKILL included), so a killed retrain never leaves the workspace locked.
The file's content says who holds it (pid, host, start time); it is cleared on a clean release,
so content found by the next holder means the previous one died: it is reported as recovered.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

LOCK_FILE = ".retrain.lock"


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


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno == errno.EPERM
    return True


def acquire(workspace: str | os.PathLike, wait_seconds: float = 0.0, poll_seconds: float = 0.5,
            on_wait: Callable[[dict], None] | None = None) -> Lock:
    """Takes the lock, waiting up to `wait_seconds` for a holder to finish; raises LockBusy after that.

    `on_wait(holder)` is called once, when the lock is found busy and there is time to wait."""
    path = Path(workspace) / LOCK_FILE
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
