"""Request logging: sampled requests and responses as tensorflow.serving.PredictionLog TFRecords.

The same record format as TF Serving's request logs and warm-up files. Files are named
``requests-<UTC start time>-<pid>-<n>.tfrecord`` and rotated by size and age; a background thread
writes them so a request never waits on the disk. `read_logs` reads them back for monitoring.

Request keys: every inference request has one, the client's (REST header ``X-Request-Id``, gRPC
metadata ``x-request-id``) or one generated here; the server returns it (REST response header,
gRPC trailing metadata) and stamps it on the request's log record in ``log_metadata.request_origin``,
so labels that arrive later can be joined to the logged prediction (`mlpipe monitor --labels`).
"""

from __future__ import annotations

import contextvars
import datetime as dt
import logging
import os
import queue
import random
import re
import threading
import time
import uuid
from typing import Iterator, NamedTuple

log = logging.getLogger("serving.request_log")

FILE_PREFIX = "requests-"
FILE_SUFFIX = ".tfrecord"
_LOG_KINDS = ("predict_log", "classify_log", "regress_log")

REQUEST_KEY_HEADER = "X-Request-Id"
REQUEST_KEY_METADATA = "x-request-id"
_KEY_RE = re.compile(r"[A-Za-z0-9._:/@=+-]{1,128}")
_CURRENT_KEY: contextvars.ContextVar[str] = contextvars.ContextVar("mlpipe_request_key", default="")


def new_request_key() -> str:
    """A generated request key: milliseconds since the epoch (hex, so keys sort by time) and 16 random hex digits."""
    return f"{int(time.time() * 1000):011x}-{uuid.uuid4().hex[:16]}"


def set_request_key(key: str | None) -> None:
    """The key `make_log` stamps on this thread's current request (set at the start of every call)."""
    _CURRENT_KEY.set("")
    if key is not None and not _KEY_RE.fullmatch(key):
        raise ValueError(
            f"bad request key {key[:40]!r} ({REQUEST_KEY_HEADER} / {REQUEST_KEY_METADATA}): use 1 to 128 letters, "
            "digits or . _ : / @ = + -"
        )
    _CURRENT_KEY.set(key or "")


class RequestLogger:
    """Writes sampled PredictionLog records of one model under `directory`."""

    def __init__(
        self,
        directory: str,
        sampling_rate: float,
        max_file_bytes: int = 64 << 20,
        max_file_seconds: float = 3600.0,
        seed: int | None = None,
        queue_size: int = 10000,
    ):
        if not 0.0 <= sampling_rate <= 1.0:
            raise ValueError(f"request log sampling rate must be in [0, 1], got {sampling_rate}")
        self.directory = directory
        self.sampling_rate = sampling_rate
        self.max_file_bytes = max_file_bytes
        self.max_file_seconds = max_file_seconds
        self._random = random.Random(seed)
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._writer = None
        self._file_bytes = 0
        self._file_opened = 0.0
        self._files = 0
        self.dropped = 0
        os.makedirs(directory, exist_ok=True)
        self._thread = threading.Thread(target=self._write_loop, name="request-log", daemon=True)
        self._thread.start()

    def sampled(self) -> bool:
        """Decides whether this request is logged (decided before any log record is built)."""
        return self.sampling_rate > 0 and self._random.random() < self.sampling_rate

    def write(self, prediction_log) -> None:
        try:
            self._queue.put_nowait(prediction_log.SerializeToString())
        except queue.Full:
            self.dropped += 1  # never block a request on logging

    def _open(self) -> None:
        import tensorflow as tf

        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        self._files += 1
        path = os.path.join(self.directory, f"{FILE_PREFIX}{stamp}-{os.getpid()}-{self._files:05d}{FILE_SUFFIX}")
        self._writer = tf.io.TFRecordWriter(path)
        self._file_bytes = 0
        self._file_opened = time.monotonic()

    def _rotate_if_due(self) -> None:
        if self._writer is not None and (
            self._file_bytes >= self.max_file_bytes or time.monotonic() - self._file_opened >= self.max_file_seconds
        ):
            self._writer.close()
            self._writer = None

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            records = [item]
            while True:  # drain what is waiting, then flush once
                try:
                    records.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = None in records
            try:
                for record in records:
                    if record is None:
                        continue
                    self._rotate_if_due()
                    if self._writer is None:
                        self._open()
                    self._writer.write(record)
                    self._file_bytes += len(record) + 16  # TFRecord framing
                if self._writer is not None:
                    self._writer.flush()
            except Exception:
                log.exception("writing request log under %s failed", self.directory)
            if stop:
                if self._writer is not None:
                    self._writer.close()
                    self._writer = None
                return

    def close(self) -> None:
        """Writes what is queued and closes the current file."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=30)


def make_log(kind: str, model_spec, request, response, sampling_rate: float, tags=("serve",)):
    """A PredictionLog of `kind` (predict_log, classify_log, regress_log) stamped with the current time."""
    from tensorflow_serving.apis import prediction_log_pb2

    record = prediction_log_pb2.PredictionLog()
    record.log_metadata.model_spec.CopyFrom(model_spec)
    record.log_metadata.sampling_config.sampling_rate = sampling_rate
    record.log_metadata.saved_model_tags.extend(tags)
    record.log_metadata.timestamp_secs = int(time.time())
    record.log_metadata.request_origin = _CURRENT_KEY.get()  # the request key (module docstring)
    entry = getattr(record, kind)
    entry.request.CopyFrom(request)
    entry.response.CopyFrom(response)
    return record


class LogRecord(NamedTuple):
    timestamp: float  # seconds since the epoch (UTC), from log_metadata.timestamp_secs
    model_spec: object  # tensorflow.serving.ModelSpec: name, version, signature_name
    request: object  # PredictRequest, ClassificationRequest or RegressionRequest
    response: object  # the matching response
    kind: str  # "predict", "classify" or "regress"
    request_key: str = ""  # log_metadata.request_origin: the request key ("" in logs written before keys)


def _seconds(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value.timestamp()
    return float(value)


def log_files(directory: str) -> list[str]:
    """Request log files under `directory` (searched recursively), oldest first."""
    found = []
    for root, _, files in os.walk(directory):
        for name in files:
            if name.startswith(FILE_PREFIX) and name.endswith(FILE_SUFFIX):
                found.append(os.path.join(root, name))
    return sorted(found, key=lambda p: (os.path.basename(p), p))


def read_logs(directory: str, since=None, until=None) -> Iterator[LogRecord]:
    """Yields the logged requests under `directory` with since <= timestamp < until (epoch seconds or datetime).

    A file still being written may end in a partial record: reading that file stops there.
    """
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    lo, hi = _seconds(since), _seconds(until)
    for path in log_files(directory):
        try:
            for raw in tf.compat.v1.io.tf_record_iterator(path):
                record = prediction_log_pb2.PredictionLog()
                record.ParseFromString(raw)
                stamp = float(record.log_metadata.timestamp_secs)
                if (lo is not None and stamp < lo) or (hi is not None and stamp >= hi):
                    continue
                kind = record.WhichOneof("log_type")
                if kind not in _LOG_KINDS:
                    continue
                entry = getattr(record, kind)
                yield LogRecord(
                    stamp,
                    record.log_metadata.model_spec,
                    entry.request,
                    entry.response,
                    kind[:-4],
                    record.log_metadata.request_origin,
                )
        except tf.errors.DataLossError:
            log.warning("request log %s ends in a partial record; read up to it", path)
