"""Server-side batching with TF Serving's parameters: concurrent requests merged into one model call.

A queue per (servable, signature, output set, inner input shapes). A batch closes when it is full
(max_batch_size rows) or its first request has waited batch_timeout_micros; num_batch_threads workers
run closed batches. More than max_enqueued_batches waiting in one queue: RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from serving.errors import Code, ServingError, from_exception, invalid

log = logging.getLogger("serving.batching")

# BatchingParameters (tensorflow_serving/servables/tensorflow/session_bundle_config.proto); the
# pip package does not ship that proto, so it is declared here with the same field numbers.
_PROTO_FIELDS = [
    ("max_batch_size", 1, "google.protobuf.Int64Value"),
    ("batch_timeout_micros", 2, "google.protobuf.Int64Value"),
    ("max_enqueued_batches", 3, "google.protobuf.Int64Value"),
    ("num_batch_threads", 4, "google.protobuf.Int64Value"),
    ("thread_pool_name", 5, "google.protobuf.StringValue"),
    ("allowed_batch_sizes", 6, None),
    ("pad_variable_length_inputs", 7, "bool"),
    ("enable_large_batch_splitting", 8, "google.protobuf.BoolValue"),
    ("max_execution_batch_size", 9, "google.protobuf.Int64Value"),
]


@dataclass(frozen=True)
class BatchingParameters:
    # TF Serving's defaults (batching_session.h) when the file leaves a field out.
    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 100
    num_batch_threads: int = 4
    allowed_batch_sizes: tuple[int, ...] = ()

    def validate(self) -> "BatchingParameters":
        if self.max_batch_size <= 0:
            raise ValueError(f"max_batch_size must be positive, got {self.max_batch_size}")
        if self.batch_timeout_micros < 0:
            raise ValueError(f"batch_timeout_micros must be >= 0, got {self.batch_timeout_micros}")
        if self.max_enqueued_batches <= 0:
            raise ValueError(f"max_enqueued_batches must be positive, got {self.max_enqueued_batches}")
        if self.num_batch_threads <= 0:
            raise ValueError(f"num_batch_threads must be positive, got {self.num_batch_threads}")
        sizes = self.allowed_batch_sizes
        if sizes:
            if list(sizes) != sorted(set(sizes)) or sizes[0] <= 0:
                raise ValueError(f"allowed_batch_sizes must be increasing positive sizes, got {list(sizes)}")
            if sizes[-1] != self.max_batch_size:
                raise ValueError(
                    f"the last allowed_batch_sizes entry ({sizes[-1]}) must equal max_batch_size ({self.max_batch_size})"
                )
        return self


def _batching_message_class():
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2  # noqa: F401

    pool = descriptor_pool.Default()
    name = "mlpipe.serving.BatchingParameters"
    try:
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))
    except KeyError:
        pass
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="mlpipe/serving/batching_parameters.proto",
        package="mlpipe.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    message = file_proto.message_type.add(name="BatchingParameters")
    F = descriptor_pb2.FieldDescriptorProto
    for field_name, number, type_name in _PROTO_FIELDS:
        f = message.field.add(name=field_name, number=number)
        if type_name is None:
            f.type, f.label = F.TYPE_INT64, F.LABEL_REPEATED
        elif type_name == "bool":
            f.type, f.label = F.TYPE_BOOL, F.LABEL_OPTIONAL
        else:
            f.type, f.label, f.type_name = F.TYPE_MESSAGE, F.LABEL_OPTIONAL, "." + type_name
    pool.Add(file_proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))


def parse_batching_parameters(text: str) -> BatchingParameters:
    """TF Serving's batching_parameters_file text, e.g. ``max_batch_size { value: 32 }``."""
    from google.protobuf import text_format

    message = _batching_message_class()()
    text_format.Parse(text, message)
    values = {}
    for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"):
        if message.HasField(name):
            values[name] = getattr(message, name).value
    values["allowed_batch_sizes"] = tuple(message.allowed_batch_sizes)
    return BatchingParameters(**values).validate()


@dataclass
class _Task:
    inputs: Mapping[str, np.ndarray]
    rows: int
    future: Future = field(default_factory=Future)


@dataclass
class _Batch:
    key: tuple
    servable: object
    signature: object
    tasks: list = field(default_factory=list)
    rows: int = 0
    created: float = field(default_factory=time.monotonic)
    closed: bool = False


class BatchScheduler:
    """Merges concurrent `run` calls; installed as each servable's runner when batching is on."""

    def __init__(self, params: BatchingParameters, on_batch=None):
        self.params = params
        self._on_batch = on_batch  # callback(model_name, batch_rows) for metrics
        self._cond = threading.Condition()
        self._queues: dict[tuple, list[_Batch]] = {}
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._work, name=f"batch-{i}", daemon=True) for i in range(params.num_batch_threads)
        ]
        for t in self._threads:
            t.start()

    def __call__(self, servable, signature, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.submit(servable, signature, inputs).result()

    def submit(self, servable, signature, inputs: Mapping[str, np.ndarray]) -> Future:
        rows = None
        for array in inputs.values():
            if array.ndim == 0:
                raise invalid("Batching Run() input tensors must have at least one dimension")
            if rows is None:
                rows = array.shape[0]
            elif array.shape[0] != rows:
                raise invalid("Batching Run() input tensors must have equal 0th-dimension size")
        rows = rows or 0
        if rows > self.params.max_batch_size:
            raise invalid(
                f"Task size {rows} is larger than maximum input batch size {self.params.max_batch_size} "
                "(send fewer rows per request, or raise max_batch_size in the batching parameters file)"
            )
        inner = tuple(sorted((k, a.shape[1:], a.dtype.str) for k, a in inputs.items()))
        key = (id(servable), signature.name, inner)
        task = _Task(inputs, rows)
        with self._cond:
            if self._stopping:
                raise ServingError(Code.UNAVAILABLE, "Server is shutting down")
            queue = self._queues.setdefault(key, [])
            if not queue or queue[-1].closed or queue[-1].rows + rows > self.params.max_batch_size:
                if queue and not queue[-1].closed:
                    queue[-1].closed = True
                if len(queue) >= self.params.max_enqueued_batches:
                    raise ServingError(
                        Code.RESOURCE_EXHAUSTED,
                        "The batch scheduling queue to which this task was submitted is full",
                    )
                queue.append(_Batch(key, servable, signature))
            batch = queue[-1]
            batch.tasks.append(task)
            batch.rows += rows
            if batch.rows >= self.params.max_batch_size:
                batch.closed = True
            self._cond.notify()
        return task.future

    def _next_batch(self) -> _Batch | None:
        """Under the lock: the oldest batch that is closed or timed out, else None."""
        timeout = self.params.batch_timeout_micros / 1e6
        now = time.monotonic()
        best = None
        for queue in self._queues.values():
            if queue and (queue[0].closed or now - queue[0].created >= timeout):
                if best is None or queue[0].created < best.created:
                    best = queue[0]
        if best is not None:
            queue = self._queues[best.key]
            queue.pop(0)
            if not queue:
                del self._queues[best.key]
        return best

    def _wait_time(self) -> float | None:
        timeout = self.params.batch_timeout_micros / 1e6
        oldest = min((q[0].created for q in self._queues.values() if q), default=None)
        if oldest is None:
            return None
        return max(0.0, oldest + timeout - time.monotonic())

    def _work(self) -> None:
        while True:
            with self._cond:
                batch = self._next_batch()
                while batch is None:
                    if self._stopping and not self._queues:
                        return
                    self._cond.wait(self._wait_time())
                    batch = self._next_batch()
            self._run(batch)

    def _padded_size(self, rows: int) -> int:
        for size in self.params.allowed_batch_sizes:
            if size >= rows:
                return size
        return rows

    def _run(self, batch: _Batch) -> None:
        tasks = [t for t in batch.tasks if t.future.set_running_or_notify_cancel()]
        if not tasks:
            return
        try:
            names = list(tasks[0].inputs)
            merged = {
                n: np.concatenate([t.inputs[n] for t in tasks]) if len(tasks) > 1 else tasks[0].inputs[n] for n in names
            }
            rows = sum(t.rows for t in tasks)
            padded = self._padded_size(rows)
            if padded > rows:  # pad with copies of the first row, as TF Serving does
                merged = {n: np.concatenate([a, np.repeat(a[:1], padded - rows, axis=0)]) for n, a in merged.items()}
            outputs = batch.servable.call(batch.signature, merged)
            for name, value in outputs.items():
                if value.ndim == 0 or value.shape[0] != padded:
                    raise ServingError(
                        Code.FAILED_PRECONDITION,
                        f"Batched output tensor '{name}' has 0th dimension {value.shape[:1]} but the batch had "
                        f"{padded} rows; this signature cannot be batched (turn --enable_batching off)",
                    )
            if self._on_batch is not None:
                self._on_batch(batch.servable.model_name, rows)
            start = 0
            for task in tasks:
                end = start + task.rows
                task.future.set_result({n: v[start:end] for n, v in outputs.items()})
                start = end
        except BaseException as e:  # every waiting request gets the error, none hangs
            error = from_exception(e)
            for task in tasks:
                if not task.future.done():
                    task.future.set_exception(error)

    def stop(self) -> None:
        """Runs what is queued, then ends the workers."""
        with self._cond:
            self._stopping = True
            for queue in self._queues.values():
                for batch in queue:
                    batch.closed = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=30)
