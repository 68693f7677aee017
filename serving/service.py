"""What REST and gRPC share: model lookup, the model calls, status and metadata protos, request logs."""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass

from serving import inference
from serving.errors import invalid
from serving.manager import ModelManager
from serving.outcomes import OutcomeCounter
from serving.request_log import RequestLogger, make_log
from serving.traffic import Router

_STATE_NUMBERS = {"UNKNOWN": 0, "START": 10, "LOADING": 20, "AVAILABLE": 30, "UNLOADING": 40, "END": 50}


@dataclass(frozen=True)
class LogOptions:
    root: str | None = None  # <root>/<model name>/ unless a model's config names a directory
    sampling_rate: float = 0.0  # default for models whose config has no logging_config
    max_file_bytes: int = 64 << 20
    max_file_seconds: float = 3600.0
    seed: int | None = None


class Service:
    def __init__(self, manager: ModelManager, log_options: LogOptions = LogOptions()):
        self.manager = manager
        self.log_options = log_options
        self._loggers: dict[tuple, RequestLogger] = {}
        self._lock = threading.Lock()
        self.router = Router(seed=log_options.seed if log_options.seed is not None else 0)
        self.outcomes = OutcomeCounter()

    def log_directory(self, model_name: str, entry=None) -> str | None:
        """The model's request log directory: its config's, else <root>/<model name>; None when logging is off."""
        entry = entry or self.manager.entry(model_name)
        if entry is None:
            return None
        if entry.log_dir:
            return entry.log_dir
        return os.path.join(self.log_options.root, model_name) if self.log_options.root else None

    @contextlib.contextmanager
    def acquire(self, name: str, version: int | None, label: str | None):
        """manager.acquire, counting whether the resolved version answered or failed (serving/outcomes.py)."""
        with self.manager.acquire(name, version, label) as servable:
            directory = self.log_directory(name)
            if directory is None:
                yield servable
                return
            try:
                yield servable
            except BaseException:
                self.outcomes.count(directory, name, servable.version, ok=False)
                raise
            self.outcomes.count(directory, name, servable.version, ok=True)

    # ---- request logging --------------------------------------------------------------------

    def logger(self, model_name: str) -> RequestLogger | None:
        entry = self.manager.entry(model_name)
        if entry is None:
            return None
        opts = self.log_options
        rate = entry.log_sampling_rate if entry.log_sampling_rate is not None else opts.sampling_rate
        if not rate:
            return None
        directory = self.log_directory(model_name, entry)
        if directory is None:
            return None
        key = (model_name, directory, rate)
        with self._lock:
            logger = self._loggers.get(key)
            if logger is None:
                logger = self._loggers[key] = RequestLogger(
                    directory, rate, opts.max_file_bytes, opts.max_file_seconds, seed=opts.seed
                )
            return logger

    def maybe_log(self, kind: str, model_name: str, build) -> None:
        """`build()` -> (model_spec, request, response) runs only for sampled requests."""
        logger = self.logger(model_name)
        if logger is not None and logger.sampled():
            model_spec, request, response = build()
            logger.write(make_log(kind, model_spec, request, response, logger.sampling_rate, self.manager.tags))

    def close(self) -> None:
        self.router.close()
        self.outcomes.close()
        with self._lock:
            for logger in self._loggers.values():
                logger.close()
            self._loggers.clear()

    # ---- status and metadata ------------------------------------------------------------------

    def status(self, name: str, version: int | None, label: str | None):
        from tensorflow_serving.apis import get_model_status_pb2

        response = get_model_status_pb2.GetModelStatusResponse()
        for v, state, error in self.manager.status(name, version, label):
            item = response.model_version_status.add()
            item.version = v
            item.state = _STATE_NUMBERS[state]
            item.status.SetInParent()  # TF Serving always reports a status, "OK" when fine
            if error is not None:
                item.status.error_code = error.code.value[0]
                item.status.error_message = error.message
        return response

    def metadata(self, name: str, version: int | None, label: str | None, fields=("signature_def",)):
        from tensorflow_serving.apis import get_model_metadata_pb2

        fields = list(fields)
        if not fields:
            raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
        for field in fields:
            if field != "signature_def":
                raise invalid(f"Metadata field {field} is not supported (only signature_def is)")
        with self.manager.acquire(name, version, label) as servable:
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            inference.fill_model_spec(response.model_spec, servable)
            response.metadata["signature_def"].Pack(inference.signature_def_map(servable))
            return servable.version, response
