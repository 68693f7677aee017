"""Traffic controls through a live server: ordered label moves, weighted canary split, shadow copies,
the version that answered (REST header, gRPC trailing metadata)."""

from __future__ import annotations

import glob
import json
import math
import os
import threading
import time

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving.config import read_model_config_file
from tests.serving.conftest import start_server, wait_until
from tests.serving.test_versions import _warmup_request, _write_warmup, states


def write_models_config(path, base, versions, labels):
    """A TF Serving ModelServerConfig text file (what `mlpipe label set` writes)."""
    lines = [
        "model_config_list {",
        "  config {",
        '    name: "toy"',
        f'    base_path: "{base}"',
        '    model_platform: "tensorflow"',
        "    model_version_policy { specific {",
    ]
    lines += [f"      versions: {v}" for v in versions]
    lines += ["    } }"]
    lines += [f'    version_labels {{ key: "{k}" value: {v} }}' for k, v in sorted(labels.items())]
    lines += ["  }", "}"]
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)  # atomic, like publish.versions.write_models_config


def write_traffic(path, doc):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)


def config_server(tmp_path, base, versions, labels, traffic=None):
    config = str(tmp_path / "models.config")
    write_models_config(config, base, versions, labels)
    if traffic is not None:
        write_traffic(str(tmp_path / "traffic.json"), traffic)
    server = start_server(
        read_model_config_file(config), model_config_file=config, model_config_file_poll_wait_seconds=0.1
    )
    time.sleep(0.5)  # let the config poller read the file once, so that later writes are seen as changes
    return server, config


def post(session, server, path="/v1/models/toy:predict", key=None):
    headers = {"X-Client-Key": key} if key else {}
    return session.post(
        f"http://127.0.0.1:{server.rest_port}{path}", json={"instances": [0.0]}, headers=headers, timeout=30
    )


def traffic_lines(tmp_path):
    rows = []
    for path in glob.glob(str(tmp_path / "traffic_logs" / "toy" / "*.jsonl")):
        with open(path) as f:
            rows += [json.loads(line) for line in f if line.strip()]
    return rows


def test_label_move_under_load_loads_and_warms_the_target_first(toy_versions, tmp_path):
    base = toy_versions([1, 2])
    _write_warmup(os.path.join(base, "2"), [_warmup_request()] * 3)
    server, config = config_server(tmp_path, base, [1], {"stable": 1})
    seen, failures, stop = [], [], threading.Event()

    def client():
        session = requests.Session()
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            r = post(session, server, "/v1/models/toy/labels/stable:predict")
            if r.status_code != 200:
                failures.append(r.text)
            else:  # the toy model answers its version for x = 0; the header must agree
                seen.append((int(r.headers["X-Model-Version"]), r.json()["predictions"][0]))

    threads = [threading.Thread(target=client) for _ in range(3)]
    try:
        for t in threads:
            t.start()
        wait_until(lambda: len(seen) > 20)
        assert states(server) == {1: "AVAILABLE"}
        write_models_config(config, base, [2], {"stable": 2})  # what `mlpipe label set stable 2` writes
        wait_until(lambda: any(v == 2 for v, _ in seen))
        wait_until(lambda: states(server).get(1) == "END")  # then what no policy keeps is unloaded
        count = len(seen)
        wait_until(lambda: len(seen) > count + 20)
        page = requests.get(f"http://127.0.0.1:{server.rest_port}/monitoring/prometheus/metrics").text
    finally:
        stop.set()
        for t in threads:
            t.join()
        server.stop()
    assert failures == []  # without the ordered move, requests for `stable` fail while version 2 loads
    assert all(float(version) == y for version, y in seen)
    versions = [v for v, _ in seen]
    assert versions[-1] == 2 and set(versions) == {1, 2}
    assert 'mlpipe_serving_warmup_requests_total{model="toy",version="2"} 3.0' in page  # warmed before it served


def test_a_label_whose_version_cannot_load_stays_where_it_was(toy_versions, tmp_path):
    base = toy_versions([1])
    os.makedirs(os.path.join(base, "3"))
    with open(os.path.join(base, "3", "saved_model.pb"), "wb") as f:
        f.write(b"not a saved model")
    server, config = config_server(tmp_path, base, [1], {"stable": 1})
    try:
        write_models_config(config, base, [3], {"stable": 3})
        wait_until(lambda: states(server).get(3) == "END")
        session = requests.Session()
        for _ in range(5):
            r = post(session, server, "/v1/models/toy/labels/stable:predict")
            assert r.status_code == 200 and r.headers["X-Model-Version"] == "1", r.text
    finally:
        server.stop()


def test_weighted_split_is_90_10_sticky_per_key_reloaded_and_visible(toy_versions, tmp_path):
    base = toy_versions([1, 2])
    traffic = {"models": {"toy": {"split": {"stable": 90, "canary": 10}}}}
    server, config = config_server(tmp_path, base, [1, 2], {"stable": 1, "canary": 2}, traffic)
    session = requests.Session()
    try:
        n = 1000
        answers = [post(session, server) for _ in range(n)]
        assert all(r.status_code == 200 for r in answers)
        canary = sum(r.headers["X-Model-Version"] == "2" for r in answers)
        assert all(float(r.headers["X-Model-Version"]) == r.json()["predictions"][0] for r in answers)
        # Binomial(n, 0.1): mean 100, sd 9.5; 5 sd either side (the router is seeded, so this is also stable).
        sd = math.sqrt(n * 0.1 * 0.9)
        assert abs(canary - n * 0.1) <= 5 * sd, canary

        by_key = {}
        for i in range(40):
            key = f"client-{i}"
            by_key[key] = {post(session, server, key=key).headers["X-Model-Version"] for _ in range(5)}
        assert all(len(v) == 1 for v in by_key.values()), by_key  # sticky
        assert {next(iter(v)) for v in by_key.values()} == {"1", "2"}  # 40 keys at 10%: both seen

        status = requests.get(f"http://127.0.0.1:{server.rest_port}/v1/models/toy/traffic").json()
        assert status["split"] == {"canary": 0.1, "stable": 0.9} and status["labels"] == {"canary": 2, "stable": 1}
        page = requests.get(f"http://127.0.0.1:{server.rest_port}/monitoring/prometheus/metrics").text
        assert 'mlpipe_serving_routed_requests_total{label="canary",model="toy"}' in page
        assert 'version="2"' in page and 'version="1"' in page

        # gRPC: the same split, the client key as metadata, the answering version in the trailing metadata.
        channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "toy"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([0.0], np.float32)))
        key = next(k for k, v in by_key.items() if v == {"2"})
        response, call = stub.Predict.with_call(request, metadata=(("x-client-key", key),))
        assert dict(call.trailing_metadata())["model-version"] == "2"
        assert tf.make_ndarray(response.outputs["y"]).tolist() == [2.0]
        channel.close()

        # Reloaded without a restart: all traffic to the canary.
        write_traffic(str(tmp_path / "traffic.json"), {"models": {"toy": {"split": {"canary": 1}}}})
        wait_until(lambda: all(post(session, server).headers["X-Model-Version"] == "2" for _ in range(20)))
        # Named versions and labels are never re-routed.
        assert post(session, server, "/v1/models/toy/versions/1:predict").headers["X-Model-Version"] == "1"
        assert post(session, server, "/v1/models/toy/labels/stable:predict").headers["X-Model-Version"] == "1"
    finally:
        server.stop()


def test_shadow_gets_a_copy_off_the_request_path_and_a_failing_one_is_harmless(toy_versions, tmp_path):
    base = toy_versions([1, 2])
    traffic = {"models": {"toy": {"split": {"stable": 1}, "shadow": "canary"}}}
    server, config = config_server(tmp_path, base, [1, 2], {"stable": 1, "canary": 2}, traffic)
    session = requests.Session()
    gate = threading.Event()
    try:
        router = server.service.router
        # A slow shadow: every shadow worker is busy until the gate opens.
        blockers = [router._shadow_pool.submit(gate.wait, 60) for _ in range(router._shadow_pool._max_workers)]
        answers = [post(session, server) for _ in range(20)]
        assert [r.headers["X-Model-Version"] for r in answers] == ["1"] * 20  # the shadow's answer is never returned
        assert all(r.json() == {"predictions": [1.0]} for r in answers)
        rows = traffic_lines(tmp_path)
        assert sum(r["role"] == "primary" for r in rows) == 20
        assert not any(r["role"] == "shadow" for r in rows)  # the callers did not wait for the shadow
        gate.set()
        for b in blockers:
            b.result(timeout=30)
        wait_until(lambda: sum(r["role"] == "shadow" for r in traffic_lines(tmp_path)) == 20)
        rows = traffic_lines(tmp_path)
        primary = {r["request_id"]: r for r in rows if r["role"] == "primary"}
        for shadow in (r for r in rows if r["role"] == "shadow"):
            assert shadow["request_id"] in primary and shadow["ok"] and shadow["version"] == 2
            assert shadow["outputs"] == {"predictions": [2.0]} and primary[shadow["request_id"]]["outputs"] == {
                "predictions": [1.0]
            }

        # A failing shadow (its label names nothing): callers are unaffected, the failure is logged.
        write_traffic(str(tmp_path / "traffic.json"), {"models": {"toy": {"split": {"stable": 1}, "shadow": "nope"}}})
        wait_until(lambda: router.shadow_label("toy") == "nope")
        answers = [post(session, server) for _ in range(10)]
        assert all(r.status_code == 200 and r.headers["X-Model-Version"] == "1" for r in answers)
        wait_until(lambda: sum(r["role"] == "shadow" and not r["ok"] for r in traffic_lines(tmp_path)) == 10)
        failed = [r for r in traffic_lines(tmp_path) if r["role"] == "shadow" and not r["ok"]]
        assert "Unrecognized servable version label: nope" in failed[0]["error"]
    finally:
        gate.set()
        server.stop()


def test_a_bad_traffic_file_keeps_the_current_routing(toy_versions, tmp_path):
    base = toy_versions([1, 2])
    traffic = {"models": {"toy": {"split": {"canary": 1}}}}
    server, config = config_server(tmp_path, base, [1, 2], {"stable": 1, "canary": 2}, traffic)
    session = requests.Session()
    try:
        (tmp_path / "traffic.json").write_text("{not json")
        time.sleep(0.5)  # a few polls of the bad file (not a timing assertion: the result must not change)
        assert all(post(session, server).headers["X-Model-Version"] == "2" for _ in range(10))
    finally:
        server.stop()


def test_compare_reports_canary_and_shadow_from_the_traffic_log(toy_versions, tmp_path):
    from tests.conftest import run_cli

    base = toy_versions([1, 2, 3])
    traffic = {"models": {"toy": {"split": {"stable": 3, "canary": 1}, "shadow": "candidate"}}}
    server, config = config_server(tmp_path, base, [1, 2, 3], {"stable": 1, "canary": 2, "candidate": 3}, traffic)
    session = requests.Session()
    try:
        for i in range(80):
            body = {"instances": [0.0]}
            r = session.post(
                f"http://127.0.0.1:{server.rest_port}/v1/models/toy:predict",
                json=body,
                headers={"X-Client-Key": f"k{i}"},
                timeout=30,
            )
            assert r.status_code == 200
        session.post(f"http://127.0.0.1:{server.rest_port}/v1/models/toy/versions/9:predict", json={"instances": [0.0]})
        wait_until(lambda: sum(r["role"] == "shadow" for r in traffic_lines(tmp_path)) == 81)
    finally:
        server.stop()
    settings = tmp_path / "mlpipe.toml"
    settings.write_text('model_name = "toy"\n')
    page = tmp_path / "compare.html"
    code, out, err = run_cli(
        "compare", "--config", str(settings), "--log-dir", str(tmp_path / "traffic_logs"), "--json", "--html", str(page)
    )
    assert code == 0, out + err
    report = json.loads(out)
    arms = {(a["role"], a["label"], a["version"]): a for a in report["arms"]}
    stable, canary = arms[("primary", "stable", 1)], arms[("primary", "canary", 2)]
    assert stable["requests"] + canary["requests"] == 80 and stable["mean_prediction"] == 1.0
    assert canary["mean_prediction"] == 2.0 and stable["latency_ms"]["p50"] is not None
    assert arms[("shadow", "candidate", 3)]["requests"] == 81  # failed requests are copied too
    failed = [a for (role, label, version), a in arms.items() if role == "primary" and a["errors"]]
    assert len(failed) == 1 and failed[0]["error_rate"] == 1.0  # the request for the missing version 9
    (c,) = report["canaries"]
    assert c["label"] == "canary" and c["primary_label"] == "stable" and c["mean_prediction_diff"] == 1.0
    d = report["shadow"]["divergence"]
    assert (
        d["instances"] == 80
        and d["max_abs_diff"] == 2.0
        and d["mean_abs_diff"] == pytest.approx((stable["requests"] * 2.0 + canary["requests"] * 1.0) / 80, abs=1e-6)
    )
    assert "mlpipe compare" in page.read_text()
    # --slice: these toy requests send unnamed instances, so every pair lands in "(unknown)", none dropped.
    code, out, err = run_cli(
        "compare", "--config", str(settings), "--log-dir", str(tmp_path / "traffic_logs"), "--slice", "x", "--json"
    )
    assert code == 0, out + err
    sliced = json.loads(out)["shadow"]
    assert json.loads(out)["slice_feature"] == "x"
    assert list(sliced["by_slice"]) == ["(unknown)"] and sliced["by_slice"]["(unknown)"] == d
    code, out, _ = run_cli("compare", "--config", str(settings), "--log-dir", str(tmp_path / "traffic_logs"))
    assert code == 0 and "shadow candidate: 81 copies, 80 paired instances" in out
    code, _, err = run_cli("compare", "--config", str(settings), "--log-dir", str(tmp_path / "nothing"))
    assert code == 2 and "no traffic log" in err
