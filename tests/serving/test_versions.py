"""Version lifecycle: hot swap under load, partial and broken directories, warm-up, policies, unload."""

from __future__ import annotations

import os
import shutil
import threading
import time

import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from serving.config import ServingConfigError, VersionPolicy, parse_labels, parse_version_policy
from tests.serving import toy_model
from tests.serving.conftest import entry, start_server, wait_until

POLL = 0.2


def states(server, name="toy"):
    from serving.errors import ServingError

    try:
        return {v: s for v, s, _ in server.manager.status(name)}
    except ServingError:  # no version known yet
        return {}


def predict_version(port, value=2.0, path="/v1/models/toy:predict"):
    r = requests.post(f"http://127.0.0.1:{port}{path}", json={"instances": [value]}, timeout=30)
    return r


def test_hot_swap_under_load_has_no_failed_request(toy_versions, toy_cache, tmp_path):
    base = toy_versions([1])
    server = start_server([entry("toy", base)], file_system_poll_wait_seconds=POLL)
    seen, failures, stop = [], [], threading.Event()

    def client():
        session = requests.Session()
        deadline = time.monotonic() + 60  # bounded even if the test fails
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                r = session.post(
                    f"http://127.0.0.1:{server.rest_port}/v1/models/toy:predict", json={"instances": [0.0]}, timeout=30
                )
                if r.status_code != 200:
                    failures.append(r.text)
                else:
                    seen.append((time.monotonic(), r.json()["predictions"][0]))  # the output is the version
            except requests.RequestException as e:
                failures.append(repr(e))

    threads = [threading.Thread(target=client) for _ in range(3)]
    try:
        for t in threads:
            t.start()
        wait_until(lambda: len(seen) > 20)
        staging = toy_model.copy_version(toy_cache, str(tmp_path / "staging"), 2)
        shutil.copytree(staging, os.path.join(base, "2"))  # as a Pusher copies: file by file
        wait_until(lambda: any(v == 2.0 for _, v in seen))  # picked up by a poll (bounded wait, no timing claim)
        first_new = min(t for t, v in seen if v == 2.0)
        wait_until(lambda: states(server).get(1) == "END")
        wait_until(lambda: sum(t > first_new + 0.5 for t, _ in seen) > 10)
    finally:
        stop.set()
        for t in threads:
            t.join()
        server.stop()
    assert failures == []
    after = [v for t, v in seen if t > first_new + 0.5]
    assert after and set(after) == {2.0}  # once v2 serves, latest:1 routes everything to it


def test_partial_then_broken_then_complete_directory(toy_versions, toy_cache, tmp_path):
    base = toy_versions([1])
    server = start_server([entry("toy", base)], file_system_poll_wait_seconds=POLL, max_num_load_retries=1)
    try:
        source = toy_model.copy_version(toy_cache, str(tmp_path / "staging"), 2)
        target = os.path.join(base, "2")
        shutil.copytree(os.path.join(source, "variables"), os.path.join(target, "variables"))  # no saved_model.pb yet
        for _ in range(3):
            server.manager.poll_once()  # polls that certainly ran (the background one may run too)
        assert states(server) == {1: "AVAILABLE"}  # never tried
        assert predict_version(server.rest_port).json() == {"predictions": [2.0]}

        with open(os.path.join(target, "saved_model.pb"), "wb") as f:
            f.write(b"not a SavedModel")  # complete-looking but broken
        wait_until(lambda: any(v == 2 and err is not None for v, _, err in server.manager.status("toy")))
        version, state, error = server.manager.status("toy", 2)[0]
        assert state == "END" and error.message
        assert predict_version(server.rest_port).json() == {"predictions": [2.0]}  # old one still serves
        status = requests.get(f"http://127.0.0.1:{server.rest_port}/v1/models/toy/versions/2").json()
        assert status["model_version_status"][0]["status"]["error_code"] != "OK"

        shutil.rmtree(target)
        shutil.copytree(source, target)  # the files change: it is tried again
        wait_until(lambda: states(server).get(2) == "AVAILABLE")
        assert predict_version(server.rest_port).json() == {"predictions": [3.0]}
    finally:
        server.stop()


def test_non_integer_directories_are_ignored(toy_versions, toy_cache, tmp_path):
    base = toy_versions([1])
    shutil.copytree(os.path.join(base, "1"), os.path.join(base, "tmp-2"))
    shutil.copytree(os.path.join(base, "1"), os.path.join(base, "3.5"))
    server = start_server([entry("toy", base)])
    try:
        assert states(server) == {1: "AVAILABLE"}
    finally:
        server.stop()


def test_unload_waits_for_in_flight_requests(toy_versions, toy_cache, tmp_path):
    base = toy_versions([1])
    server = start_server([entry("toy", base)], file_system_poll_wait_seconds=POLL)
    try:
        with server.manager.acquire("toy") as held:
            assert held.version == 1
            toy_model.copy_version(toy_cache, base, 2)
            wait_until(lambda: states(server).get(1) == "UNLOADING")
            time.sleep(3 * POLL)
            assert states(server)[1] == "UNLOADING"  # still held by this "request"
            out = held.run(held.signature(""), {"x": np.array([0.0], np.float32)})
            assert out["y"].tolist() == [1.0]
        wait_until(lambda: states(server).get(1) == "END")
    finally:
        server.stop()


def test_version_policies_and_labels(toy_versions):
    base = toy_versions([1, 2, 3])
    server = start_server(
        [
            entry("latest2", base, VersionPolicy("latest", num_versions=2), {"old": 1, "new": 3}),
            entry("specific", base, VersionPolicy("specific", versions=(1, 3))),
            entry("all", base, VersionPolicy("all")),
        ]
    )
    try:
        assert states(server, "latest2") == {3: "AVAILABLE", 2: "AVAILABLE"}
        assert states(server, "specific") == {3: "AVAILABLE", 1: "AVAILABLE"}
        assert set(states(server, "all")) == {1, 2, 3}
        port = server.rest_port
        assert predict_version(port, 0.0, "/v1/models/latest2/labels/new:predict").json() == {"predictions": [3.0]}
        # A label naming a version that is not loaded: the version is not found.
        r = predict_version(port, 0.0, "/v1/models/latest2/labels/old:predict")
        assert r.status_code == 404 and "Specific(latest2, 1)" in r.json()["error"]
    finally:
        server.stop()


def test_policy_and_label_flag_parsing():
    assert parse_version_policy("latest") == VersionPolicy("latest", 1)
    assert parse_version_policy("latest:3").select([1, 2, 5, 9]) == [2, 5, 9]
    assert parse_version_policy("all").select([2, 1]) == [1, 2]
    assert parse_version_policy("specific:2,9").select([1, 2, 3]) == [2]
    assert parse_labels("stable=1, canary=2") == {"stable": 1, "canary": 2}
    for bad in ("latest:0", "newest", "specific:", "specific:a"):
        with pytest.raises(ServingConfigError, match="latest, latest:N"):
            parse_version_policy(bad)
    with pytest.raises(ServingConfigError, match="LABEL=VERSION"):
        parse_labels("stable")


def _write_warmup(version_dir, requests_):
    path = os.path.join(version_dir, "assets.extra")
    os.makedirs(path, exist_ok=True)
    with tf.io.TFRecordWriter(os.path.join(path, "tf_serving_warmup_requests")) as writer:
        for request in requests_:
            log = prediction_log_pb2.PredictionLog()
            log.predict_log.request.CopyFrom(request)
            writer.write(log.SerializeToString())


def _warmup_request(input_name="x"):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "toy"
    request.inputs[input_name].CopyFrom(tf.make_tensor_proto(np.array([1.0, 2.0], np.float32)))
    return request


def test_warmup_requests_are_replayed_before_serving(toy_versions, tmp_path):
    base = toy_versions([1])
    _write_warmup(os.path.join(base, "1"), [_warmup_request()] * 3)
    server = start_server([entry("toy", base)], num_request_iterations_for_warmup=2)
    try:
        assert states(server) == {1: "AVAILABLE"}
        page = requests.get(f"http://127.0.0.1:{server.rest_port}/monitoring/prometheus/metrics").text
        assert 'mlpipe_serving_warmup_requests_total{model="toy",version="1"} 3.0' in page
    finally:
        server.stop()


def test_failing_warmup_fails_the_load(toy_versions):
    base = toy_versions([1])
    _write_warmup(os.path.join(base, "1"), [_warmup_request("not_an_input")])
    server = start_server([entry("toy", base)], file_system_poll_wait_seconds=0)
    try:
        ((version, state, error),) = server.manager.status("toy")
        assert state == "END" and "not_an_input" in error.message
        r = predict_version(server.rest_port)
        assert r.status_code == 404 and "no version of it is loaded" in r.json()["error"]
    finally:
        server.stop()


def test_missing_base_path_serves_nothing_until_a_version_appears(toy_cache, tmp_path):
    base = str(tmp_path / "later" / "toy")
    server = start_server([entry("toy", base)], file_system_poll_wait_seconds=POLL)
    try:
        r = requests.get(f"http://127.0.0.1:{server.rest_port}/v1/models/toy")
        assert r.status_code == 404
        os.makedirs(base)
        toy_model.copy_version(toy_cache, base, 4)
        wait_until(lambda: states(server).get(4) == "AVAILABLE")
    finally:
        server.stop()
