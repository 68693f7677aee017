"""`mlpipe serve --num_processes N`: N server processes on the same ports (SO_REUSEPORT), supervised.

Through the real console script: every worker listens on both ports, requests over fresh connections
land on several workers and the metrics page sums them, a killed worker is started again, a gRPC
config reload (which would reach one worker) is refused, and SIGTERM stops all of them.
"""

from __future__ import annotations

import os
import re
import signal

import grpc
import pytest
import requests

from serving.metrics import merge_pages
from tests.serving import toy_model
from tests.serving.conftest import live_serve, wait_until


def _listening_sockets(port: int) -> int:
    """How many sockets listen on TCP `port` on this machine (each worker has its own)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A":
                count += 1
    return count


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def _ok_count(server) -> int:
    page = requests.get(server.url("/monitoring/prometheus/metrics"), timeout=30).text
    m = re.search(r'^:tensorflow:serving:request_count\{model_name="toy",status="OK"\} (\d+)$', page, re.M)
    return int(m.group(1)) if m else 0


def test_two_processes_share_the_ports_sum_their_metrics_and_are_supervised(toy_cache, tmp_path):
    base = tmp_path / "models" / "toy"
    base.mkdir(parents=True)
    toy_model.copy_version(toy_cache, str(base), 1)
    with live_serve(
        "--model_name",
        "toy",
        "--model_base_path",
        str(base),
        "--file_system_poll_wait_seconds",
        "0",
        "--workspace",
        str(tmp_path / "ws"),
        "--num_processes",
        "2",
    ) as server:
        assert server.wait_for_line(r"2 server processes \(pids (\d+) (\d+)\) share the ports")
        workers = _children(server.proc.pid)
        assert len(workers) == 2
        assert _listening_sockets(server.rest_port) == 2
        assert _listening_sockets(server.grpc_port) == 2

        # A new connection per request: the kernel spreads them over both workers' accept queues.
        for x in range(20):
            r = requests.post(server.url("/v1/models/toy:predict"), json={"instances": [float(x)]}, timeout=30)
            assert r.json() == {"predictions": [0.5 * x + 1.0]}
        # Each worker counts its own requests; any one of them answers the sum (pages shared every second).
        wait_until(lambda: _ok_count(server) == 20, timeout=10)

        # A reload through gRPC would reach one worker only: refused with what to do instead.
        from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

        request = model_management_pb2.ReloadConfigRequest()
        model = request.config.model_config_list.config.add()
        model.name, model.base_path, model.model_platform = "toy", str(base), "tensorflow"
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            with pytest.raises(grpc.RpcError) as refused:
                model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, timeout=30)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "--model_config_file" in refused.value.details()

        # A worker that dies is started again; the port keeps answering meanwhile.
        os.kill(workers[0], signal.SIGKILL)
        assert server.wait_for_line(r"server process 1 serves again \(pid (\d+)\)", timeout=120)
        assert len(_children(server.proc.pid)) == 2
        r = requests.post(server.url("/v1/models/toy:predict"), json={"instances": [2.0]}, timeout=30)
        assert r.json() == {"predictions": [2.0]}

        survivors = _children(server.proc.pid)
        assert server.stop() == 0, server.output
    for pid in survivors:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    assert "server stopped" in server.output


def test_merged_pages_sum_counters_and_histograms_and_keep_gauges():
    a = (
        "# HELP mlpipe_serving_requests_total Requests.\n# TYPE mlpipe_serving_requests_total counter\n"
        'mlpipe_serving_requests_total{model="t"} 3.0\n'
        "# TYPE mlpipe_serving_requests_created gauge\n"
        'mlpipe_serving_requests_created{model="t"} 1700000010.5\n'
        "# TYPE mlpipe_serving_model_version_available gauge\n"
        'mlpipe_serving_model_version_available{model="t",version="1"} 1.0\n'
        "# TYPE :tensorflow:serving:request_count counter\n"
        ':tensorflow:serving:request_count{model_name="t",status="OK"} 3\n'
        "# TYPE :tensorflow:serving:request_latency histogram\n"
        ':tensorflow:serving:request_latency_bucket{model_name="t",le="10"} 1\n'
        ':tensorflow:serving:request_latency_sum{model_name="t"} 1234.5\n'
    )
    b = (
        "# HELP mlpipe_serving_requests_total Requests.\n# TYPE mlpipe_serving_requests_total counter\n"
        'mlpipe_serving_requests_total{model="t"} 2.0\n'
        'mlpipe_serving_requests_total{model="u"} 1.0\n'
        "# TYPE mlpipe_serving_requests_created gauge\n"
        'mlpipe_serving_requests_created{model="t"} 1700000001.25\n'
        "# TYPE mlpipe_serving_model_version_available gauge\n"
        'mlpipe_serving_model_version_available{model="t",version="1"} 1.0\n'
        "# TYPE :tensorflow:serving:request_count counter\n"
        ':tensorflow:serving:request_count{model_name="t",status="OK"} 4\n'
        "# TYPE :tensorflow:serving:request_latency histogram\n"
        ':tensorflow:serving:request_latency_bucket{model_name="t",le="10"} 2\n'
        ':tensorflow:serving:request_latency_sum{model_name="t"} 1000000\n'
    )
    lines = merge_pages([a, b]).splitlines()
    assert lines.count("# TYPE mlpipe_serving_requests_total counter") == 1
    assert 'mlpipe_serving_requests_total{model="t"} 5.0' in lines
    assert 'mlpipe_serving_requests_total{model="u"} 1.0' in lines
    assert 'mlpipe_serving_requests_created{model="t"} 1700000001.25' in lines  # the earliest start
    assert 'mlpipe_serving_model_version_available{model="t",version="1"} 1.0' in lines  # not 2
    assert ':tensorflow:serving:request_count{model_name="t",status="OK"} 7' in lines
    assert ':tensorflow:serving:request_latency_bucket{model_name="t",le="10"} 3' in lines
    assert ':tensorflow:serving:request_latency_sum{model_name="t"} 1.00123e+06' in lines  # TF Serving's digits


def test_num_processes_must_be_positive(tmp_path):
    import subprocess

    from tests.serving.conftest import MLPIPE

    done = subprocess.run(
        [MLPIPE, "serve", "--workspace", str(tmp_path), "--num_processes", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == "mlpipe serve: error: --num_processes must be positive, got 0"
