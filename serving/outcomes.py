"""Per-version outcome counts of inference requests: how many a served version answered and how many failed.

Counted when request logging is on (a request log directory is known), for requests that resolved to a
version; errors before that (unknown model or version, unparsable request) are the client's and not
counted. Every `flush_seconds` and at shutdown the deltas are appended, one JSON line per
(model, version) with the time, to ``outcomes-<pid>.jsonl`` in the model's request log directory;
`mlpipe monitor`'s error-rate check (pipeline/monitoring/feedback.py) sums them per window.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time

log = logging.getLogger("serving.outcomes")

FILE_PREFIX = "outcomes-"
FILE_SUFFIX = ".jsonl"


def outcome_file(directory: str, pid: int | None = None) -> str:
    return os.path.join(directory, f"{FILE_PREFIX}{os.getpid() if pid is None else pid}{FILE_SUFFIX}")


def outcome_files(directory: str) -> list[str]:
    if not os.path.isdir(directory):
        return []
    return sorted(
        os.path.join(directory, n)
        for n in os.listdir(directory)
        if n.startswith(FILE_PREFIX) and n.endswith(FILE_SUFFIX)
    )


def read_outcomes(directory: str) -> list[dict]:
    """Every outcome line under `directory`: {"time", "model", "version", "ok", "failed"}."""
    out = []
    for path in outcome_files(directory):
        with open(path) as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue  # a line cut short by a crash
    return out


class OutcomeCounter:
    """Counts (model, version) -> [ok, failed] in memory; a background thread appends the deltas."""

    def __init__(self, flush_seconds: float = 5.0):
        self.flush_seconds = flush_seconds
        self._counts: dict[tuple[str, str, int], list[int]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="outcomes", daemon=True)
        self._thread.start()

    def count(self, directory: str, model: str, version: int, ok: bool) -> None:
        with self._lock:
            slot = self._counts.setdefault((directory, model, int(version)), [0, 0])
            slot[0 if ok else 1] += 1

    def flush(self) -> None:
        with self._lock:
            counts, self._counts = self._counts, {}
        now = time.time()
        by_dir: dict[str, list[str]] = {}
        for (directory, model, version), (ok, failed) in sorted(counts.items()):
            line = {"time": now, "model": model, "version": version, "ok": ok, "failed": failed}
            by_dir.setdefault(directory, []).append(json.dumps(line, sort_keys=True) + "\n")
        for directory, lines in by_dir.items():
            try:
                os.makedirs(directory, exist_ok=True)
                with open(outcome_file(directory), "a") as f:
                    f.write("".join(lines))
            except OSError:
                log.exception("writing request outcomes under %s failed", directory)

    def _loop(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.flush()
