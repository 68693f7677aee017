"""The benchmarks' server processes: a free port, waiting until the model answers, stopping."""

from __future__ import annotations

import signal
import socket
import subprocess
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(proc: subprocess.Popen, rest_port: int, seconds: float, poll: float) -> None:
    """Returns once GET /v1/models/taxi answers 200; raises (killing the server) when it exits or takes too long."""
    import requests

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if requests.get(f"http://127.0.0.1:{rest_port}/v1/models/taxi", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(poll)
    proc.kill()
    raise RuntimeError(f"server did not come up within {seconds:g} s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
