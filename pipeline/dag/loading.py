"""Loading a model the way `mlpipe serve` does, for the release gates (infra validation, replay).

The model directory is laid out as a served version (`<tmp>/<model>/1/`, with the files the Pusher
would add: the mlmd_uuid and the warm-up requests taken from the request logs) and loaded by
serving's own ModelManager: the same loader, the same warm-up, the same error on failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from typing import Iterator

from pipeline.publish import serving_assets


class LoadError(RuntimeError):
    """The model could not be loaded or warmed up by the server code; the message says why."""


@contextlib.contextmanager
def served(model_path: str, name: str, request_log_dir: str | None = None, copy: bool = True) -> Iterator:
    """Yields (servable, load seconds) for the SavedModel at `model_path`, loaded by serving's ModelManager.

    `copy`: lay it out as the Pusher would (warm-up requests from `request_log_dir` added); else
    serve the directory as it is (an already pushed version). Raises LoadError when it does not load.
    """
    from serving.config import ModelEntry
    from serving.manager import ModelManager

    with tempfile.TemporaryDirectory(prefix="mlpipe-gate-") as tmp:
        base = os.path.join(tmp, name)
        os.makedirs(base)
        version_dir = os.path.join(base, "1")
        if copy:
            shutil.copytree(model_path, version_dir)
            config = {serving_assets.REQUEST_LOG_DIR_KEY: request_log_dir} if request_log_dir else None
            extra = serving_assets.extra_files("release-gate", config, model_path)
            for relative, content in extra.items():
                target = os.path.join(version_dir, relative)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with open(target, "wb") as f:
                    f.write(content)
        else:
            os.symlink(os.path.abspath(model_path), version_dir)
        manager = ModelManager([ModelEntry(name, base)], poll_seconds=0, max_load_retries=0)
        started = time.perf_counter()
        manager.poll_once()
        seconds = time.perf_counter() - started
        try:
            _, state, error = manager.status(name, 1)[0]
            if state != "AVAILABLE":
                why = error.message if error is not None else f"state {state}"
                raise LoadError(f"the server code could not load {model_path}: {why.splitlines()[0][:300]}")
            with manager.acquire(name, 1) as servable:
                yield servable, seconds
        finally:
            manager.stop(timeout=10)
