"""Where output goes: full TFX/Beam/TF logs to a file, short progress lines to the terminal."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from pathlib import Path
from typing import IO, Iterator


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
            terminal_err = saved[1]

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


def silence_exit_noise(log_path: Path | None = None) -> None:
    """Points stdout/stderr at `log_path` (or /dev/null) for interpreter teardown, where TF prints
    `AtomicFunction.__del__` tracebacks that users must not see."""
    _flush_all()
    target = open(log_path, "ab") if log_path else open(os.devnull, "wb")
    os.dup2(target.fileno(), 1)
    os.dup2(target.fileno(), 2)
