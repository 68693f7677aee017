"""The one atomic publish: a model version appears in ``<base>/<version>/`` whole or not at all.

A copy goes into a hidden ``<base>/.tmp-<version>-<pid>/`` (not an integer, so no server loads it) and
is renamed to ``<base>/<version>/`` (atomic on one filesystem). A process killed mid-copy leaves only
the hidden directory, which the next publish removes once its pid is gone. The Pusher (pusher.py)
and `mlpipe rollback` (rollback.py) both publish through here. TFX-free.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time

TMP_PREFIX = ".tmp-"

log = logging.getLogger(__name__)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno == errno.EPERM
    return True


def clean_stale_tmp_dirs(base: str | os.PathLike) -> list[str]:
    """Removes `<base>/.tmp-<version>-<pid>` left by publishes whose process is gone; returns their names.

    A temp dir of a live process (a publish running right now elsewhere) is left alone.
    """
    removed: list[str] = []
    if not os.path.isdir(base):
        return removed
    for name in sorted(os.listdir(base)):
        if not name.startswith(TMP_PREFIX):
            continue
        pid = name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and pid_alive(int(pid)):
            continue
        shutil.rmtree(os.path.join(base, name), ignore_errors=True)
        removed.append(name)
    return removed


def next_version(base: str | os.PathLike) -> str:
    """Unix seconds now, or one more than the newest existing version if that is not later."""
    existing = [int(n) for n in os.listdir(base) if n.isdigit()] if os.path.isdir(base) else []
    return str(max([int(time.time())] + [v + 1 for v in existing]))


def atomic_push(
    model_path: str | os.PathLike,
    base: str | os.PathLike,
    extra_files: dict[str, bytes] | None = None,
    version: str | None = None,
) -> tuple[str, str]:
    """Copies the SavedModel at `model_path` to a new `<base>/<version>`; returns (version, path).

    `version`: the next one (next_version) unless given. `extra_files` ({relative path: content}, e.g.
    assets.extra/mlmd_uuid) are written into the copy before it is renamed into place. Raises
    FileExistsError when `<base>/<version>` appeared meanwhile (another publish raced this one)."""
    base = str(base)
    os.makedirs(base, exist_ok=True)
    for name in clean_stale_tmp_dirs(base):
        log.warning("Removed a partial push left by a killed run: %s", os.path.join(base, name))
    version = version or next_version(base)
    tmp = os.path.join(base, f"{TMP_PREFIX}{version}-{os.getpid()}")
    shutil.copytree(model_path, tmp, copy_function=lambda src, dst: shutil.copy2(src, dst))
    for relative, content in (extra_files or {}).items():
        target = os.path.join(tmp, relative)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(content)
    final = os.path.join(base, version)
    if os.path.exists(final):
        shutil.rmtree(tmp, ignore_errors=True)
        raise FileExistsError(final)
    os.rename(tmp, final)  # atomic: the version is either absent or complete
    return version, final


def withdraw(base: str | os.PathLike, version: str) -> None:
    """Takes `<base>/<version>` back out in one rename (no server sees half of it), then deletes it."""
    gone = os.path.join(str(base), f"{TMP_PREFIX}withdrawn{version}-{os.getpid()}")
    os.rename(os.path.join(str(base), version), gone)
    shutil.rmtree(gone, ignore_errors=True)
