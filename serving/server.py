"""The model server: a ModelManager behind a tornado REST server and a grpcio server."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from serving.batching import BatchingParameters, BatchScheduler
from serving.config import ModelEntry, ModelRoot, read_model_config_file
from serving.manager import ModelManager
from serving.metrics import Metrics
from serving.rest import RestApi, make_app
from serving.rest_fast import FastRouter
from serving.service import LogOptions, Service
from serving.traffic import sidecar_path

log = logging.getLogger("serving")

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServerOptions:
    models: list[ModelEntry]
    grpc_host: str = "127.0.0.1"
    port: int | None = 8500  # gRPC; None: off; 0: any free port
    rest_api_host: str = "127.0.0.1"
    rest_api_port: int | None = 8501  # None: off; 0: any free port
    rest_api_num_threads: int = max(16, 4 * (os.cpu_count() or 1))
    rest_api_timeout_in_ms: int = 30000
    grpc_max_threads: int = max(16, 4 * (os.cpu_count() or 1))
    file_system_poll_wait_seconds: float = 1.0
    model_config_file: str | None = None
    model_config_file_poll_wait_seconds: float = 0.0
    saved_model_tags: tuple[str, ...] = ("serve",)
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 1
    max_num_load_retries: int = 5
    batching: BatchingParameters | None = None  # None: batching off
    max_request_bytes: int = 32 << 20
    auth_token: str | None = None
    log_options: LogOptions = field(default_factory=LogOptions)
    shutdown_grace_seconds: float = 10.0
    model_roots: list[ModelRoot] = field(default_factory=list)  # serving roots: each model directory is served
    shared_metadata: object | None = None  # mlpipe Config whose [metadata] is a shared database (lineage)
    reuse_port: bool = False  # one of several processes on the same ports (SO_REUSEPORT; serving/processes.py)
    metrics_dir: str | None = None  # with reuse_port: where the processes share their metrics pages


class ModelServer:
    """start() loads the models and opens the ports; stop() drains and closes; serve() does both around SIGTERM."""

    def __init__(self, options: ServerOptions):
        self.options = options
        self.metrics = Metrics(options.metrics_dir)
        self.batcher = None
        if options.batching is not None:
            self.batcher = BatchScheduler(
                options.batching, on_batch=lambda model, rows: self.metrics.batch_size.labels(model).observe(rows)
            )
        self.manager = ModelManager(
            options.models,
            poll_seconds=options.file_system_poll_wait_seconds,
            tags=tuple(options.saved_model_tags),
            warmup=options.enable_model_warmup,
            warmup_iterations=options.num_request_iterations_for_warmup,
            max_load_retries=options.max_num_load_retries,
            runner=self.batcher,
            metrics=self.metrics,
            roots=options.model_roots,
        )
        self.service = Service(self.manager, options.log_options)
        self.rest_api = RestApi(self.service, self.metrics, options.shared_metadata)
        self.executor = ThreadPoolExecutor(options.rest_api_num_threads, thread_name_prefix="rest")
        self.grpc_executor = ThreadPoolExecutor(options.grpc_max_threads, thread_name_prefix="grpc")
        self.rest_port: int | None = None
        self.grpc_port: int | None = None
        self._grpc = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._http = None
        self._loop_thread: threading.Thread | None = None
        self._inflight = 0
        self.recent_request_seconds = 0.0  # moving average of REST requests' time (serving/rest.py)
        self._inflight_cond = threading.Condition()
        self._stopped = threading.Event()
        self._config_thread: threading.Thread | None = None

    # ---- lifecycle --------------------------------------------------------------------------

    def start(self) -> "ModelServer":
        opts = self.options
        for host, what in ((opts.rest_api_host, "--rest_api_host"), (opts.grpc_host, "--grpc_host")):
            if host not in LOOPBACK and not opts.auth_token:
                log.warning(
                    "%s=%s accepts connections from other machines and no --auth_token is set: anyone who "
                    "can reach this port can call the model",
                    what,
                    host,
                )
        if opts.model_config_file:
            self.service.router.load(sidecar_path(opts.model_config_file))
        self.manager.start()
        if opts.port is not None:
            from serving.grpc_service import make_server

            self._grpc = make_server(self.service, self.metrics, self.grpc_executor, opts)
            address = f"[{opts.grpc_host}]:{opts.port}" if ":" in opts.grpc_host else f"{opts.grpc_host}:{opts.port}"
            try:
                self.grpc_port = self._grpc.add_insecure_port(address)
            except RuntimeError as e:
                raise OSError(
                    f"cannot listen for gRPC on {address}: {e} (is another server using --port {opts.port}?)"
                ) from None
            if not self.grpc_port:
                raise OSError(f"cannot listen for gRPC on {address} (is another server using --port {opts.port}?)")
            self._grpc.start()
            log.info("gRPC API at %s:%d", opts.grpc_host, self.grpc_port)
        if opts.rest_api_port is not None:
            self._start_rest()
            log.info("REST API at http://%s:%d/v1/models/", opts.rest_api_host, self.rest_port)
        if opts.model_config_file and opts.model_config_file_poll_wait_seconds > 0:
            self._config_thread = threading.Thread(target=self._watch_config, name="config-poll", daemon=True)
            self._config_thread.start()
        return self

    def _start_rest(self) -> None:
        from tornado.httpserver import HTTPServer
        from tornado.netutil import bind_sockets

        opts = self.options
        try:
            sockets = bind_sockets(opts.rest_api_port, opts.rest_api_host, reuse_port=opts.reuse_port)
        except OSError as e:
            raise OSError(
                f"cannot listen for REST on {opts.rest_api_host}:{opts.rest_api_port}: {e.strerror} "
                f"(is another server using --rest_api_port {opts.rest_api_port}?)"
            ) from None
        self.rest_port = sockets[0].getsockname()[1]
        ready = threading.Event()

        def run_loop():
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            # Bodies past the limit are read and dropped (to answer with a JSON 413); the hard cap
            # below closes connections that send far more.
            hard_cap = 2 * opts.max_request_bytes + (1 << 20)
            self._http = HTTPServer(
                FastRouter(self, make_app(self)), max_body_size=hard_cap, idle_connection_timeout=60
            )
            self._http.add_sockets(sockets)
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._loop_thread = threading.Thread(target=run_loop, name="rest-loop", daemon=True)
        self._loop_thread.start()
        ready.wait()

    def track(self, delta: int) -> None:
        with self._inflight_cond:
            self._inflight += delta
            self._inflight_cond.notify_all()

    def _watch_config(self) -> None:
        # Compare with the models the server started with, not with the first poll's reading: a
        # change made between start and the first poll must be applied too.
        last = list(self.options.models)
        while not self._stopped.wait(self.options.model_config_file_poll_wait_seconds):
            try:
                entries = read_model_config_file(self.options.model_config_file)
                if entries != last:
                    log.info("model config file changed; applying it")
                    self.manager.reload(entries)
                last = entries
                self.service.router.load(sidecar_path(self.options.model_config_file))
            except Exception as e:
                log.warning("re-reading %s failed: %s; keeping the current models", self.options.model_config_file, e)

    def stop(self) -> None:
        """Stops accepting, lets in-flight requests finish (up to the grace period), then unloads."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.options.shutdown_grace_seconds
        if self._http is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._http.stop)
            with self._inflight_cond:
                self._inflight_cond.wait_for(lambda: self._inflight == 0, timeout=grace)
            # Then close idle keep-alive connections, so neither they nor their clients wait out the grace.
            closing = asyncio.run_coroutine_threadsafe(self._http.close_all_connections(), self._loop)
            try:
                closing.result(timeout=5)
            except Exception:  # a stuck connection must not stop the shutdown
                log.warning("some REST connections did not close cleanly")
        if self._grpc is not None:
            self._grpc.stop(grace).wait(grace + 1)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop_thread.join(5)
        self.manager.stop(timeout=grace)
        if self.batcher is not None:
            self.batcher.stop()
        self.service.close()
        self.metrics.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.grpc_executor.shutdown(wait=False, cancel_futures=True)
        log.info("server stopped")

    def serve(self, on_started=None) -> int:
        """Runs until SIGTERM or SIGINT, then shuts down cleanly; returns the exit code.

        `on_started()` runs once the models are loaded and the ports are open."""
        stop = threading.Event()
        previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
        try:
            self.start()
            if on_started is not None:
                on_started()
            while not stop.wait(0.5):
                pass
            log.info("shutting down: finishing in-flight requests")
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
