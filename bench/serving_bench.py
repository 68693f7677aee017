"""Serving benchmark: p50/p99 latency and requests/s over REST and gRPC, batching off and on,
at concurrency 1, 8 and 32, next to the same signature called in-process (the physical limit).

Usage:
  python bench/serving_bench.py                       # builds the real taxi model (about a minute)
  python bench/serving_bench.py --model_base_path workspace/serving_model/taxi
  python bench/serving_bench.py --seconds 2 --concurrency 1 8
  python bench/serving_bench.py --num_processes 2     # adds servers of 2 processes (rows "off x2", "on x2")
  python bench/serving_bench.py --grpc_client raw grpcio stub   # adds rows "gRPC-io", "gRPC-stub"

The server runs as a subprocess (`python -m serving`) so it does not share the clients' GIL;
clients are threads in this process. Every request is one `serving_raw` predict of one row.
Each cell runs --seconds (after a short warm-up), so the whole run is bounded.

The clients are lean, as a load generator like wrk or ghz is, so the numbers are the server's:
REST sends the request's bytes (built once) on one keep-alive socket per thread and reads the
response by its Content-Length (http.client's parsing alone costs about 0.1 ms a request); gRPC
sends the real PredictRequest, serialized once, as plain HTTP/2 frames on one socket per thread
and reads the response's frames without parsing them (bench/grpc_raw.py: grpcio's own client
spends 0.3 to 0.4 ms of CPU a call even on bytes, and at concurrency 1 the client's time is
counted as the server's; --grpc_client grpcio and stub add rows with grpcio's channel and stub).
A call that ends without a response message counts as an error. The in-process reference
(`loaded.signatures[...](**tensors)` with tf.constant inputs, numpy outputs) is measured in the
same run, interleaved with the others.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402

from bench.grpc_raw import RawGrpcConnection  # noqa: E402
from bench.server_process import free_port, stop_server, wait_until_serving  # noqa: E402
from models.features import COLUMN_TYPES  # noqa: E402

SIGNATURE = "serving_raw"
PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
GRPC_CLIENTS = {"raw": "gRPC", "grpcio": "gRPC-io", "stub": "gRPC-stub"}  # --grpc_client: its rows' name
_VALUES = {
    "trip_miles": 2.0,
    "fare": 10.0,
    "trip_seconds": 600,
    "pickup_latitude": 41.9,
    "pickup_longitude": -87.6,
    "dropoff_latitude": 41.8,
    "dropoff_longitude": -87.7,
    "payment_type": "Credit Card",
    "company": "Flash Cab",
    "trip_start_hour": 9,
    "trip_start_day": 3,
    "trip_start_month": 5,
    "pickup_community_area": 8,
    "dropoff_community_area": 32,
    "pickup_census_tract": 17031081500,
    "dropoff_census_tract": 17031320100,
}
# Each raw column in the type the pushed model's serving_raw signature declares (codes are strings).
ROW = {k: {"string": str, "float": float, "int": int}[COLUMN_TYPES[k]](v) for k, v in _VALUES.items()}


def build_taxi_model(workdir: str) -> str:
    sys.path.insert(0, os.path.join(REPO, "tests", "serving"))
    import taxi_export  # the same export path the tests use

    base = os.path.join(workdir, "taxi")
    taxi_export.export(os.path.join(base, "1"))
    return base


def run_cell(call, concurrency: int, seconds: float, warmup: float = 0.5) -> dict:
    """Each thread calls `call(thread_state)` in a loop; returns latency percentiles and throughput."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    start_barrier = threading.Barrier(concurrency + 1)
    phase = {"measure_from": 0.0, "stop_at": 0.0}

    def worker(i):
        state = {}
        start_barrier.wait()
        while True:
            t0 = time.perf_counter()
            if t0 >= phase["stop_at"]:
                return
            try:
                call(state)
            except Exception:
                errors[i] += 1
                continue
            t1 = time.perf_counter()
            if t0 >= phase["measure_from"]:
                latencies[i].append(t1 - t0)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    now = time.perf_counter()
    phase["measure_from"], phase["stop_at"] = now + warmup, now + warmup + seconds
    start_barrier.wait()
    for t in threads:
        t.join(timeout=seconds + warmup + 60)
    all_lat = np.array([x for per in latencies for x in per])
    if all_lat.size == 0:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "rps": 0.0, "errors": sum(errors)}
    return {
        "p50_ms": float(np.percentile(all_lat, 50) * 1e3),
        "p99_ms": float(np.percentile(all_lat, 99) * 1e3),
        "rps": all_lat.size / seconds,
        "errors": sum(errors),
    }


def _loaded(base_path: str):
    from serving.manager import version_dirs
    from serving.servable import Servable

    version, path = max(version_dirs(base_path).items())
    servable = Servable("taxi", version, path)
    signature = servable.signature(SIGNATURE)
    inputs = {}
    for key, spec in signature.inputs.items():
        value = ROW[key]
        inputs[key] = np.array([value.encode() if isinstance(value, str) else value], dtype=spec.dtype)
    return servable, signature, inputs


def in_process_call(base_path: str):
    """The reference: the SavedModel's signature called the ordinary way, tensors in, numpy out."""
    import tensorflow as tf

    servable, signature, inputs = _loaded(base_path)
    function = signature.function

    def call(state):
        outputs = function(**{k: tf.constant(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in outputs.items()}

    call(None)
    return call


def in_process_prebound_call(base_path: str):
    """What the server runs per request after decoding: the same signature through Servable.call."""
    servable, signature, inputs = _loaded(base_path)
    servable.call(signature, inputs)
    return lambda state: servable.call(signature, inputs)


def rest_call(port: int):
    """A lean keep-alive client, as a load generator like wrk is: one socket per thread, the request's
    bytes built once, the response read by its Content-Length (http.client's header parsing alone
    costs about 0.1 ms a request, as much as the server's HTTP handling)."""
    body = json.dumps({"signature_name": SIGNATURE, "instances": [ROW]}).encode()
    request = (
        b"POST /v1/models/taxi:predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    ) + body

    def exchange(sock) -> tuple[bytes, bytes]:
        sock.sendall(request)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            data += chunk
            end = data.find(b"\r\n\r\n")
            if end < 0:
                continue
            head = data[:end].lower() + b"\r\n"
            at = head.index(b"\r\ncontent-length:") + 17
            length = int(head[at : head.index(b"\r\n", at)])
            if len(data) >= end + 4 + length:
                return data[:end], data[end + 4 : end + 4 + length]

    def call(state):
        sock = state.get("s")
        if sock is None:
            sock = state["s"] = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            head, payload = exchange(sock)
        except OSError:
            state.pop("s").close()
            raise
        if not head.startswith(b"HTTP/1.1 200 "):
            raise RuntimeError(head.decode("latin-1") + payload.decode("utf-8", "replace"))

    return call


def grpc_request_bytes() -> bytes:
    """The benchmark's PredictRequest, serialized."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "taxi"
    request.model_spec.signature_name = SIGNATURE
    for key, value in ROW.items():
        dtype = tf.string if isinstance(value, str) else tf.float32 if isinstance(value, float) else tf.int64
        request.inputs[key].CopyFrom(tf.make_tensor_proto([value], dtype=dtype))
    return request.SerializeToString()


def grpc_call(port: int, client: str = "raw"):
    """The real PredictRequest, serialized once. `raw` (the default): one plain HTTP/2 socket per thread
    (bench/grpc_raw.py), the response's frames read but not parsed; `grpcio`: grpcio's channel (one for all
    threads) with the bytes, the response bytes not parsed; `stub`: PredictionServiceStub, the request
    parsed and serialized per call and the response parsed, as an application's client would."""
    import grpc

    payload = grpc_request_bytes()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    if client == "stub":
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        return lambda state: stub.Predict(predict_pb2.PredictRequest.FromString(payload), timeout=30)
    predict = channel.unary_unary(PREDICT_METHOD)
    if client == "grpcio":
        return lambda state: predict(payload, timeout=30)
    check = RawGrpcConnection("127.0.0.1", port, PREDICT_METHOD)
    if check.call(payload) != predict(payload, timeout=30):
        raise RuntimeError("the raw gRPC client's response differs from grpcio's")
    check.close()
    channel.close()

    def call(state):
        conn = state.get("c")
        if conn is None:
            conn = state["c"] = RawGrpcConnection("127.0.0.1", port, PREDICT_METHOD)
        try:
            conn.call(payload)
        except (OSError, RuntimeError):
            state.pop("c").close()
            raise

    return call


def start_server(base_path: str, batching: bool, workdir: str, processes: int = 1):
    rest, grpc_port = free_port(), free_port()
    cmd = [
        sys.executable,
        "-m",
        "serving",
        "--model_name",
        "taxi",
        "--model_base_path",
        base_path,
        "--rest_api_port",
        str(rest),
        "--port",
        str(grpc_port),
        "--log_level",
        "WARNING",
        "--workspace",
        workdir,
    ]
    if processes > 1:
        cmd += ["--num_processes", str(processes)]
    if batching:
        params = os.path.join(workdir, "batching.config")
        with open(params, "w") as f:
            f.write(
                "max_batch_size { value: 32 }\nbatch_timeout_micros { value: 1000 }\n"
                "num_batch_threads { value: 2 }\nmax_enqueued_batches { value: 1000 }\n"
            )
        cmd += ["--enable_batching", "--batching_parameters_file", params]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    wait_until_serving(proc, rest, 180, 0.3)
    return proc, rest, grpc_port


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_base_path", help="taxi model versions to serve (default: build one in a temp dir)")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per cell (default 3)")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 8, 32], help="client threads (default 1 8 32)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all cells, interleaved (default 3)")
    parser.add_argument(
        "--num_processes",
        type=int,
        default=1,
        help="also serve with this many server processes (mlpipe serve --num_processes; default 1: only one)",
    )
    parser.add_argument(
        "--grpc_client",
        choices=GRPC_CLIENTS,
        nargs="+",
        default=["raw"],
        help="gRPC clients, each its own rows: raw HTTP/2 frames on a socket per thread (default; rows "
        '"gRPC"), grpcio\'s channel with pre-serialized bytes ("gRPC-io"), grpcio\'s PredictionServiceStub '
        '("gRPC-stub"); see above',
    )
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.rounds <= 0 or args.num_processes <= 0 or any(c <= 0 for c in args.concurrency):
        parser.error("--seconds, --rounds, --num_processes and --concurrency must be positive")

    workdir = tempfile.mkdtemp(prefix="serving-bench-")
    try:
        base = os.path.abspath(args.model_base_path) if args.model_base_path else build_taxi_model(workdir)
        print(
            f"model: {base}  signature: {SIGNATURE}  one row per request  {args.seconds:g}s per cell  cores: {os.cpu_count()}"
        )
        print(
            f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  load average at start: "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
        )
        paths = {("in-process", "-"): in_process_call(base), ("prebound", "-"): in_process_prebound_call(base)}
        servers = []
        try:
            layouts = [(False, 1), (True, 1)]
            if args.num_processes > 1:
                layouts += [(False, args.num_processes), (True, args.num_processes)]
            for batching, processes in layouts:
                proc, rest, grpc_port = start_server(base, batching, workdir, processes)
                servers.append(proc)
                mode = ("on" if batching else "off") + (f" x{processes}" if processes > 1 else "")
                paths[("REST", mode)] = rest_call(rest)
                for client in args.grpc_client:
                    paths[(GRPC_CLIENTS[client], mode)] = grpc_call(grpc_port, client)
            for call in paths.values():  # first requests pay one-time costs (connections, lazy imports)
                run_cell(call, max(args.concurrency), 1.0, warmup=0.0)
            # Rounds of every path side by side, so a change in the machine's load hits all of them alike.
            cells: dict[tuple, list[dict]] = {}
            for _ in range(args.rounds):
                for c in args.concurrency:
                    for key, call in paths.items():
                        cells.setdefault((*key, c), []).append(run_cell(call, c, args.seconds))
        finally:
            for proc in servers:
                stop_server(proc)
        header = (
            f"{'path':<11}{'batching':<10}{'conc':>5}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>8}"
            f"{'req/s vs in-process':>21}{'p50 - in-process':>18}{'errors':>8}"
        )
        print(header)
        print("-" * len(header))
        for c in args.concurrency:
            for name, mode in paths:
                runs, base_runs = cells[(name, mode, c)], cells[("in-process", "-", c)]
                ratios = [r["rps"] / b["rps"] if b["rps"] else float("nan") for r, b in zip(runs, base_runs)]
                extra = [r["p50_ms"] - b["p50_ms"] for r, b in zip(runs, base_runs)]
                med = lambda xs: float(np.median(xs))  # noqa: E731
                print(
                    f"{name:<11}{mode:<10}{c:>5}{med([r['p50_ms'] for r in runs]):>9.2f}"
                    f"{med([r['p99_ms'] for r in runs]):>9.2f}{med([r['rps'] for r in runs]):>8.0f}"
                    f"{med(ratios):>20.2f}x{med(extra):>+15.2f} ms{sum(r['errors'] for r in runs):>8}"
                )
        print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(
            "in-process: the signature called with tf.constant inputs (the reference); prebound: Servable.call, "
            f"the server's model call; xN: N server processes. Medians over {args.rounds} rounds; each ratio "
            "is taken within a round."
        )
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
