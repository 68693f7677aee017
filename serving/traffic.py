"""Traffic controls TF Serving has no field for: weighted canary splits and shadow labels.

They live in a sidecar, ``traffic.json``, in the directory of the ``--model_config_file`` (stock TF
Serving reads only models.config and ignores this file, so both servers can share the directory):

    {"models": {"taxi": {"split": {"stable": 90, "canary": 10}, "shadow": "candidate"}},
     "log_dir": "traffic_logs"}

- ``split``: requests that name neither a version nor a label go to one of these labels with
  probability proportional to its weight. A client that sends a key (REST header
  ``X-Client-Key``, gRPC metadata ``x-client-key``) always lands on the same label while the
  weights stay the same; without one the choice is random (seeded).
- ``shadow``: a label that gets a copy of every live request for the model, run on a separate
  thread pool after the caller's answer is computed; its answer is logged, never returned.
- ``log_dir`` (default ``traffic_logs`` beside traffic.json): one JSON line per routed request,
  per shadow copy, read by ``mlpipe compare``.

The file is re-read with the model config file (``--model_config_file_poll_wait_seconds``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from serving.config import ServingConfigError

log = logging.getLogger("serving.traffic")

TRAFFIC_FILE = "traffic.json"
CLIENT_KEY_HEADER = "X-Client-Key"
CLIENT_KEY_METADATA = "x-client-key"
VERSION_HEADER = "X-Model-Version"
VERSION_METADATA = "model-version"


@dataclass(frozen=True)
class ModelTraffic:
    split: tuple[tuple[str, float], ...] = ()  # (label, weight), weights > 0
    shadow: str | None = None


def sidecar_path(model_config_file: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(model_config_file)), TRAFFIC_FILE)


def read_traffic(path: str) -> tuple[dict[str, ModelTraffic], str]:
    """({model: ModelTraffic}, log directory) from a traffic.json; ({}, default dir) when there is none."""
    base = os.path.dirname(os.path.abspath(path))
    if not os.path.isfile(path):
        return {}, os.path.join(base, "traffic_logs")
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise ServingConfigError(
            f"{path} is not valid JSON ({e}); fix it (see docs/serving.md, traffic controls)"
        ) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("models", {}), dict):
        raise ServingConfigError(
            f'{path}: expected {{"models": {{MODEL: {{"split": {{LABEL: WEIGHT}}, "shadow": LABEL}}}}}}'
        )
    models = {}
    for name, spec in doc.get("models", {}).items():
        if not isinstance(spec, dict):
            raise ServingConfigError(f"{path}: models.{name} must be an object with split and/or shadow")
        split = spec.get("split", {}) or {}
        if not isinstance(split, dict):
            raise ServingConfigError(f"{path}: models.{name}.split must map labels to weights")
        pairs = []
        for label, weight in sorted(split.items()):
            if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight < 0:
                raise ServingConfigError(f"{path}: models.{name}.split.{label} must be a number >= 0, got {weight!r}")
            if weight > 0:
                pairs.append((label, float(weight)))
        if split and not pairs:
            raise ServingConfigError(f"{path}: models.{name}.split has no positive weight")
        shadow = spec.get("shadow")
        if shadow is not None and not isinstance(shadow, str):
            raise ServingConfigError(f"{path}: models.{name}.shadow must be a label name")
        models[name] = ModelTraffic(tuple(pairs), shadow or None)
    log_dir = doc.get("log_dir") or "traffic_logs"
    return models, log_dir if os.path.isabs(log_dir) else os.path.join(base, log_dir)


def bucket(model: str, key: str) -> float:
    """A stable number in [0, 1) for a client key."""
    digest = hashlib.sha256(f"{model}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class Router:
    """Picks the label for unlabelled requests, runs shadow copies, writes the traffic log."""

    def __init__(self, seed: int | None = 0, shadow_threads: int = 4):
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._models: dict[str, ModelTraffic] = {}
        self._log_dir: str | None = None
        self._files: dict[str, object] = {}
        self._shadow_pool = ThreadPoolExecutor(shadow_threads, thread_name_prefix="shadow")
        self._shadow_pending = 0
        self.max_shadow_pending = 1000  # beyond this, copies are dropped (and counted) rather than queued

    def configure(self, models: dict[str, ModelTraffic], log_dir: str | None) -> None:
        with self._lock:
            if log_dir != self._log_dir:
                self._close_files()
            self._models, self._log_dir = dict(models), log_dir

    def load(self, path: str) -> None:
        models, log_dir = read_traffic(path)
        if models != self._models:
            log.info("traffic controls from %s: %s", path, {m: t.__dict__ for m, t in models.items()} or "none")
        self.configure(models, log_dir)

    def state(self, model: str) -> dict:
        with self._lock:
            t = self._models.get(model, ModelTraffic())
        total = sum(w for _, w in t.split) or 1.0
        return {"split": {label: w / total for label, w in t.split}, "shadow": t.shadow}

    def active(self, model: str) -> bool:
        return model in self._models

    def pick(self, model: str, key: str | None) -> str | None:
        """The label an unlabelled request for `model` goes to, or None (no split: the latest version)."""
        if model not in self._models:  # no traffic controls: no lock on the request path
            return None
        with self._lock:
            t = self._models.get(model)
            if t is None or not t.split:
                return None
            u = bucket(model, key) if key else self._rng.random()
        total = sum(w for _, w in t.split)
        edge = 0.0
        for label, weight in t.split:
            edge += weight / total
            if u < edge:
                return label
        return t.split[-1][0]

    def shadow_label(self, model: str) -> str | None:
        t = self._models.get(model)
        return t.shadow if t else None

    def new_request_id(self) -> str:
        return uuid.uuid4().hex

    def submit_shadow(self, model: str, request_id: str, protocol: str, api: str, call) -> bool:
        """Runs `call()` -> (version, outputs) on the shadow pool; logs it; never raises to the caller."""
        label = self.shadow_label(model)
        if label is None:
            return False
        with self._lock:
            if self._shadow_pending >= self.max_shadow_pending:
                self.record(model, request_id, "shadow", protocol, api, label, None, 0.0, "dropped: shadow queue full")
                return False
            self._shadow_pending += 1

        def run():
            start = time.perf_counter()
            try:
                version, outputs = call(label)
                self.record(
                    model,
                    request_id,
                    "shadow",
                    protocol,
                    api,
                    label,
                    version,
                    time.perf_counter() - start,
                    None,
                    outputs,
                )
            except Exception as e:  # a failing shadow is logged, never seen by the caller
                self.record(
                    model,
                    request_id,
                    "shadow",
                    protocol,
                    api,
                    label,
                    None,
                    time.perf_counter() - start,
                    str(e) or type(e).__name__,
                )
            finally:
                with self._lock:
                    self._shadow_pending -= 1

        try:
            self._shadow_pool.submit(run)
        except RuntimeError:  # shutting down
            with self._lock:
                self._shadow_pending -= 1
            return False
        return True

    def record(
        self,
        model,
        request_id,
        role,
        protocol,
        api,
        label,
        version,
        seconds,
        error,
        outputs=None,
        key=None,
        inputs=None,
    ) -> None:
        with self._lock:
            directory = self._log_dir
            if directory is None or model not in self._models:
                return
            line = json.dumps(
                {
                    "time": round(time.time(), 6),
                    "request_id": request_id,
                    "model": model,
                    "role": role,
                    "protocol": protocol,
                    "api": api,
                    "label": label,
                    "version": version,
                    "latency_ms": round(seconds * 1000, 3),
                    "ok": error is None,
                    "error": error,
                    "client_key": key,
                    "outputs": outputs,
                    "inputs": inputs,
                },
                default=str,
            )
            f = self._files.get(model)
            if f is None:
                os.makedirs(os.path.join(directory, model), exist_ok=True)
                path = os.path.join(directory, model, f"traffic-{os.getpid()}-{int(time.time())}.jsonl")
                f = self._files[model] = open(path, "a", buffering=1)
            f.write(line + "\n")

    def _close_files(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def close(self, wait: float = 5.0) -> None:
        self._shadow_pool.shutdown(wait=wait > 0, cancel_futures=True)
        with self._lock:
            self._close_files()
