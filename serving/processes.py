"""`--num_processes N`: N server processes on the same REST and gRPC ports (SO_REUSEPORT), supervised.

The Python work of a request (HTTP, JSON, protobuf, the call into TF) holds one process's GIL, so one
process uses about one core for it. With N processes the kernel spreads the connections over N
accept queues. Each process loads every model, polls for versions, batches and logs on its own:

* the parent reserves the ports (a bound, not listening, SO_REUSEPORT socket: nothing else can take
  them, and port 0 becomes one concrete port for all), starts the workers (`python -m
  serving.processes OPTIONS_FILE INDEX`), waits until each has loaded its models and opened the
  ports, restarts a worker that dies, and on SIGTERM or Ctrl-C passes the signal on and waits for
  all of them to drain;
* metrics: each worker writes its page to a directory the parent owns, every second; a scrape (which
  reaches one worker) answers the sum over all workers (serving/metrics.py `merge_pages`);
* request logs and traffic logs carry the writing process's id in their file names, so the workers
  never write to one file; readers read the whole directory.

This is the serve command's process layer (like serving/cli.py): it starts and stops processes.
"""

from __future__ import annotations

import logging
import os
import pickle
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

log = logging.getLogger("serving")

TERMINAL_FD_ENV = "MLPIPE_SERVING_TERMINAL_FD"  # where a worker writes its own log lines
MAX_QUICK_RESTARTS = 3  # a worker that dies this many times in a row within QUICK seconds of starting stops all
QUICK = 30.0


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound, not listening socket on (host, port) with SO_REUSEPORT: holds the port for the workers."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror} (is another server using port {port}?)") from None
    return sock


class Supervisor:
    """Starts `count` workers serving `options` on shared ports; `serve()` runs until SIGTERM/SIGINT."""

    def __init__(self, options, count: int, log_level: str = "INFO", terminal_fd: int = 2):
        self.options = options
        self.count = count
        self.log_level = log_level
        self.terminal_fd = terminal_fd
        self.workers: list[subprocess.Popen | None] = [None] * count
        self._started_at = [0.0] * count
        self._quick_deaths = [0] * count
        self._reserved: list[socket.socket] = []
        self._dir = None
        self._stop = threading.Event()

    def _prepare(self) -> str:
        import dataclasses

        opts = self.options
        changes = {"reuse_port": True}
        if opts.port is not None:
            sock = reserve_port(opts.grpc_host, opts.port)
            self._reserved.append(sock)
            changes["port"] = sock.getsockname()[1]
        if opts.rest_api_port is not None:
            sock = reserve_port(opts.rest_api_host, opts.rest_api_port)
            self._reserved.append(sock)
            changes["rest_api_port"] = sock.getsockname()[1]
        self._dir = tempfile.mkdtemp(prefix="mlpipe-serve-")
        os.makedirs(os.path.join(self._dir, "metrics"))
        changes["metrics_dir"] = os.path.join(self._dir, "metrics")
        self.options = dataclasses.replace(opts, **changes)
        path = os.path.join(self._dir, "options.pickle")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
            pickle.dump({"options": self.options, "log_level": self.log_level}, f)
        return path

    def _spawn(self, index: int, options_path: str) -> tuple[subprocess.Popen, int]:
        read_end, write_end = os.pipe()
        env = dict(os.environ, **{TERMINAL_FD_ENV: str(self.terminal_fd)})
        proc = subprocess.Popen(
            [sys.executable, "-m", "serving.processes", options_path, str(index), str(write_end)],
            env=env,
            pass_fds=tuple({self.terminal_fd, write_end}),
            stdin=subprocess.DEVNULL,
        )
        os.close(write_end)
        self.workers[index] = proc
        self._started_at[index] = time.monotonic()
        return proc, read_end

    @staticmethod
    def _wait_ready(proc: subprocess.Popen, read_end: int) -> bool:
        """True once the worker says it serves; False if it exits first."""
        try:
            while True:
                ready, _, _ = select.select([read_end], [], [], 1.0)
                if ready:
                    return os.read(read_end, 1) == b"1"
                if proc.poll() is not None:
                    return False
        finally:
            os.close(read_end)

    def start(self) -> int:
        """Starts every worker and waits until all serve; returns 0, or a failed worker's exit code."""
        options_path = self._prepare()
        started = [self._spawn(i, options_path) for i in range(self.count)]
        for index, (proc, read_end) in enumerate(started):
            if not self._wait_ready(proc, read_end):
                code = proc.wait()
                log.error(
                    "server process %d of %d exited with %s while starting; stopping the others",
                    index + 1,
                    self.count,
                    code,
                )
                self.stop()
                return code if code and code > 0 else 1
        self._options_path = options_path
        opts = self.options
        log.info(
            "%d server processes (pids %s) share the ports", self.count, " ".join(str(p.pid) for p in self.workers)
        )
        if opts.port is not None:
            log.info("gRPC API at %s:%d", opts.grpc_host, opts.port)
        if opts.rest_api_port is not None:
            log.info("REST API at http://%s:%d/v1/models/", opts.rest_api_host, opts.rest_api_port)
        return 0

    def _check(self) -> int | None:
        """Restarts workers that died; an exit code when one keeps dying at start."""
        for index, proc in enumerate(self.workers):
            if proc is None or proc.poll() is None:
                continue
            self._forget(proc)
            quick = time.monotonic() - self._started_at[index] < QUICK
            self._quick_deaths[index] = self._quick_deaths[index] + 1 if quick else 1
            if self._quick_deaths[index] > MAX_QUICK_RESTARTS:
                log.error("server process %d keeps exiting (last code %s); stopping", index + 1, proc.returncode)
                return 1
            log.warning(
                "server process %d (pid %d) exited with %s; starting it again", index + 1, proc.pid, proc.returncode
            )
            new, read_end = self._spawn(index, self._options_path)
            if self._wait_ready(new, read_end):
                log.info("server process %d serves again (pid %d)", index + 1, new.pid)
        return None

    def _forget(self, proc: subprocess.Popen) -> None:
        """A gone worker's metrics page no longer counts (a restart looks like a counter reset)."""
        try:
            os.unlink(os.path.join(self.options.metrics_dir, f"metrics-{proc.pid}.prom"))
        except OSError:
            pass

    def serve(self) -> int:
        previous = {sig: signal.signal(sig, lambda *_: self._stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            code = self.start()
            if code:
                return code
            while not self._stop.wait(0.5):
                code = self._check()
                if code is not None:
                    return code
            log.info("shutting down: each server process finishes its in-flight requests")
            return 0
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def stop(self) -> None:
        grace = self.options.shutdown_grace_seconds + 15
        for proc in self.workers:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.workers:
            if proc is None:
                continue
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("server process %d did not stop in %.0f s; killing it", proc.pid, grace)
                proc.kill()
                proc.wait()
        for sock in self._reserved:
            sock.close()
        self._reserved = []
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def worker_main(argv: list[str]) -> int:
    """One worker: `python -m serving.processes OPTIONS_FILE INDEX READY_FD` (started by Supervisor)."""
    options_path, index, ready_fd = argv[0], int(argv[1]), int(argv[2])
    with open(options_path, "rb") as f:
        payload = pickle.load(f)
    terminal_fd = int(os.environ.get(TERMINAL_FD_ENV, "2"))
    logging.basicConfig(
        level=payload["log_level"],
        format=f"%(asctime)s %(levelname)s %(name)s [process {index + 1} pid {os.getpid()}]: %(message)s",
        stream=os.fdopen(os.dup(terminal_fd), "w", buffering=1),
    )
    from serving.server import ModelServer

    def ready():
        os.write(ready_fd, b"1")
        os.close(ready_fd)

    parent = os.getppid()

    def orphaned():  # the supervisor was killed (SIGKILL passes on nothing): stop as on SIGTERM
        while os.getppid() == parent:
            time.sleep(1.0)
        log.warning("the supervising process is gone; stopping")
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=orphaned, name="supervisor-watch", daemon=True).start()

    try:
        return ModelServer(payload["options"]).serve(on_started=ready)
    except OSError as e:
        log.error("%s", e)
        return 1


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
