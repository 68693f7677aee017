"""Where output goes: full TFX/Beam/TF logs to a file, short progress lines to the terminal."""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import sys
import threading
from pathlib import Path
from typing import IO, Iterator

# The terminal's stderr (a stream and its fd) while quiet_stderr() sends file descriptor 2 to a log.
_terminal: IO[str] | None = None
_terminal_fd: int | None = None


def _flush_all() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (ValueError, OSError):
            pass


@contextlib.contextmanager
def capture_output(log_path: Path, verbose: bool = False) -> Iterator[IO[str]]:
    """Sends everything written to file descriptors 1 and 2 (Python, absl, TF's C++ logging, Beam
    worker processes) into `log_path`, and yields a text stream to the real terminal.

    With `verbose`, the same output is also copied live to the terminal's stderr.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    _flush_all()
    saved = os.dup(1), os.dup(2)
    console = os.fdopen(os.dup(1), "w", buffering=1)
    log = open(log_path, "ab", buffering=0)
    copier = None
    absl_logger = logging.getLogger("absl")
    previous_level = absl_logger.level
    try:
        if verbose:
            read_end, write_end = os.pipe()
            terminal_err = _terminal_fd if _terminal_fd is not None else saved[1]

            def copy() -> None:
                while chunk := os.read(read_end, 65536):
                    log.write(chunk)
                    os.write(terminal_err, chunk)
                os.close(read_end)

            copier = threading.Thread(target=copy, name="log-copier", daemon=True)
            copier.start()
            os.dup2(write_end, 1)
            os.dup2(write_end, 2)
            os.close(write_end)
        else:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
        absl_logger.setLevel(logging.INFO)
        yield console
    finally:
        _flush_all()
        absl_logger.setLevel(previous_level)
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        if copier is not None:
            copier.join(timeout=10)
        for fd in saved:
            os.close(fd)
        log.close()
        console.flush()


def new_log(log_dir: Path, prefix: str, header: str) -> Path:
    """Creates a new log file `<log_dir>/<prefix>-YYYYmmdd-HHMMSS-<microseconds>.log` holding `header`
    as its first line; never reuses a name, even for two runs started in the same instant."""
    log_dir.mkdir(parents=True, exist_ok=True)
    while True:
        now = datetime.datetime.now()
        path = log_dir / f"{prefix}-{now:%Y%m%d-%H%M%S}-{now:%f}.log"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{header} (started {now.isoformat(timespec='seconds')}, pid {os.getpid()})\n")
        return path


def silence_exit_noise(log_path: Path | None = None) -> None:
    """Points stdout/stderr at `log_path` (or /dev/null) for interpreter teardown, where TF prints
    `AtomicFunction.__del__` tracebacks that users must not see."""
    _flush_all()
    target = open(log_path, "ab") if log_path else open(os.devnull, "wb")
    os.dup2(target.fileno(), 1)
    os.dup2(target.fileno(), 2)


def terminal() -> IO[str]:
    """Where mlpipe's own stderr lines go: the user's terminal, also while quiet_stderr() sends file
    descriptor 2 (and so sys.stderr) to a log."""
    return _terminal if _terminal is not None else sys.stderr


@contextlib.contextmanager
def quiet_stderr(log_path: Path | None) -> Iterator[None]:
    """Third-party noise off the terminal: file descriptor 2 (TF's C++ logs, CUDA probes, and through
    sys.stderr Python warnings and absl/logging handlers) goes to `log_path` (appended; /dev/null if
    None, removed again if nothing was written). mlpipe's own lines go to `terminal()`."""
    global _terminal, _terminal_fd
    _flush_all()
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab", buffering=0) if log_path is not None else open(os.devnull, "wb")
    saved = os.dup(2)
    try:
        to_fd2 = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # e.g. a StringIO a caller redirected stderr to
        to_fd2 = False
    previous = _terminal, _terminal_fd
    console = os.fdopen(os.dup(saved), "w", buffering=1) if to_fd2 else None
    os.dup2(log.fileno(), 2)
    _terminal, _terminal_fd = (console if console is not None else previous[0]), saved
    try:
        yield
    finally:
        _flush_all()
        if console is not None:
            console.flush()
        _terminal, _terminal_fd = previous
        os.dup2(saved, 2)
        os.close(saved)
        if console is not None:
            console.close()
        log.close()
        if log_path is not None and log_path.is_file() and log_path.stat().st_size == 0:
            log_path.unlink()  # nothing to keep


def command_log(config_file: str | None, workspace: str | None, command: str) -> Path | None:
    """Where a command's third-party noise goes: <workspace>/logs/<command>.log when the workspace
    exists (None: nowhere). A bad config is reported by the command itself."""
    from pipeline import config as config_lib

    try:
        config = config_lib.load(config_file, {"workspace": workspace})
    except config_lib.ConfigError:
        return None
    return config.command_log_path(command) if config.workspace_path.is_dir() else None
