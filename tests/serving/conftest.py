"""Fixtures: toy and taxi SavedModels in version directories, and in-process servers on free ports."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from serving.config import ModelEntry, VersionPolicy  # noqa: E402
from serving.server import ModelServer, ServerOptions  # noqa: E402
from tests.serving import toy_model  # noqa: E402


@pytest.fixture(scope="session")
def toy_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("toy-exports"))


@pytest.fixture
def toy_versions(toy_cache, tmp_path):
    """make(versions) -> a base path holding those toy versions."""

    def make(versions, name="toy"):
        base = tmp_path / name
        base.mkdir(exist_ok=True)
        for v in versions:
            toy_model.copy_version(toy_cache, str(base), v)
        return str(base)

    return make


def start_server(models, **overrides) -> ModelServer:
    options = dict(models=models, port=0, rest_api_port=0, file_system_poll_wait_seconds=0.2, shutdown_grace_seconds=5)
    options.update(overrides)
    return ModelServer(ServerOptions(**options)).start()


def entry(name, base_path, policy=None, labels=None, **kw) -> ModelEntry:
    return ModelEntry(name, base_path, policy or VersionPolicy(), tuple(sorted((labels or {}).items())), **kw)


def wait_until(predicate, timeout=20.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


@pytest.fixture(scope="module")
def toy_module_server(tmp_path_factory):
    """Versions 1 and 2 of the toy model (policy all), labels stable=1 and canary=2."""
    cache = str(tmp_path_factory.mktemp("toy-module"))
    base = os.path.join(cache, "toy")
    os.makedirs(base)
    for v in (1, 2):
        toy_model.copy_version(str(tmp_path_factory.mktemp("exports")), base, v)
    server = start_server([entry("toy", base, VersionPolicy("all"), {"stable": 1, "canary": 2})])
    yield server
    server.stop()
    shutil.rmtree(cache, ignore_errors=True)


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MLPIPE = os.path.join(os.path.dirname(sys.executable), "mlpipe")  # the installed console script


class LiveServer:
    """A `mlpipe serve` subprocess; its output is collected line by line in a background thread."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.rest_port: int | None = None
        self.grpc_port: int | None = None

    def _read(self):
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float = 120.0):
        """The first match of the regex `pattern` in the output; None if the process ended first."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    m = regex.search(line)
                    if m:
                        return m
                if self.proc.poll() is not None and not self._reader.is_alive():
                    return None
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no line matching {pattern!r} within {timeout}s:\n{self.output}")
                self._changed.wait(min(left, 0.5))

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.rest_port}{path}"

    def stop(self) -> int:
        """SIGTERM, wait for a clean exit; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(10)
        return self.proc.returncode


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live_serve(*flags: str, cwd=None, env=None, command=(MLPIPE, "serve"), attempts: int = 5):
    """Runs the real `mlpipe serve FLAGS` (or `command FLAGS`) and yields a LiveServer once its ports are open.

    gRPC binds port 0 and the server reports the port it got. REST's port 0 means "off" (TF
    Serving's flag contract), so REST gets a port that was free a moment ago; if another process
    took it meanwhile the server exits 1 saying it cannot listen, and we start it again on another.
    """
    env = dict(os.environ if env is None else env, PYTHONPATH=REPO)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for _ in range(attempts):
        rest = _unused_port()
        proc = subprocess.Popen(
            [*command, "--port", "0", "--rest_api_port", str(rest), *flags],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        server = LiveServer(proc)
        try:
            up = server.wait_for_line(r"REST API at http://[^:]+:(\d+)/")
            if up is None:
                if "cannot listen" in server.output:
                    continue  # the port was taken between our check and the server's bind
                raise AssertionError(f"mlpipe serve exited {proc.returncode}:\n{server.output}")
            server.rest_port = int(up.group(1))
            server.grpc_port = int(server.wait_for_line(r"gRPC API at [^ ]+:(\d+)").group(1))
            yield server
            return
        finally:
            server.stop()
    raise AssertionError(f"mlpipe serve could not bind a REST port in {attempts} attempts")


def listening_addresses(port: int) -> set[str]:
    """The local addresses of the sockets listening on TCP `port` on this machine (from /proc/net/tcp*)."""
    import ipaddress

    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if int(hex_port, 16) != port or fields[3] != "0A":  # 0A: LISTEN
                continue
            # The kernel prints each 32-bit word in host (little-endian) byte order.
            raw = b"".join(bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, width, 8))
            ip = ipaddress.ip_address(raw)
            found.add(str(getattr(ip, "ipv4_mapped", None) or ip))  # ::ffff:127.0.0.1 is 127.0.0.1
    return found
