"""Where mlpipe serve used to differ from TF Serving, pinned to the TF Serving source line it now follows.

Source: tensorflow/serving at 9d981c5 (see /work/shared/reference/tf-serving-rest-contract.md).
Each test names the file and line whose behaviour it checks, on a live server through HTTP and gRPC.
"""

from __future__ import annotations

import json
import re
import socket
import threading

import grpc
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from tests.serving.conftest import entry, start_server


@pytest.fixture(scope="module")
def server(toy_module_server):
    return toy_module_server


@pytest.fixture(scope="module")
def url(server):
    return f"http://127.0.0.1:{server.rest_port}"


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def post(url, path, body):
    return requests.post(url + path, data=json.dumps(body), timeout=30)


def metric_lines(url) -> list[str]:
    r = requests.get(url + "/monitoring/prometheus/metrics", timeout=30)
    assert r.status_code == 200
    return r.text.splitlines()


def sample(lines, name_and_labels: str) -> float:
    """The value of the one line that starts with `name{labels}` (exactly), or 0 when absent."""
    hits = [line for line in lines if line.startswith(name_and_labels + " ")]
    assert len(hits) <= 1, hits
    return float(hits[0].rsplit(" ", 1)[1]) if hits else 0.0


def example(x: float):
    return tf.train.Example(
        features=tf.train.Features(feature={"x": tf.train.Feature(float_list=tf.train.FloatList(value=[x]))})
    )


# ---- metrics: servables/tensorflow/util.cc:66-88, http_server.cc:194-201, prometheus_exporter.cc:65-142 ----


def test_tf_serving_request_count_and_latency_metrics(url, stub):
    before = metric_lines(url)
    ok = 'model_name="toy",status="OK"'
    bad = 'model_name="toy",status="INVALID_ARGUMENT"'
    rest_predict = 'model_name="toy",API="predict",entrypoint="REST"'
    grpc_predict = 'model_name="toy",API="Predict",entrypoint="GRPC"'

    assert post(url, "/v1/models/toy:predict", {"instances": [1.0]}).status_code == 200
    assert post(url, "/v1/models/toy:predict", {"instances": ["a"]}).status_code == 400
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "toy"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0], dtype=tf.float32))
    stub.Predict(request, timeout=30)
    after = metric_lines(url)

    count = ":tensorflow:serving:request_count"
    assert "# TYPE :tensorflow:serving:request_count counter" in after
    assert sample(after, f"{count}{{{ok}}}") - sample(before, f"{count}{{{ok}}}") == 2  # REST + gRPC predict
    assert sample(after, f"{count}{{{bad}}}") - sample(before, f"{count}{{{bad}}}") == 1

    latency = ":tensorflow:serving:request_latency"
    assert f"# TYPE {latency} histogram" in after
    # Only successful requests are timed (http_server.cc:194: `if (http_status == OK) RecordRequestLatency`).
    assert (
        sample(after, f"{latency}_count{{{rest_predict}}}") - sample(before, f"{latency}_count{{{rest_predict}}}") == 1
    )
    assert (
        sample(after, f"{latency}_count{{{grpc_predict}}}") - sample(before, f"{latency}_count{{{grpc_predict}}}") == 1
    )
    # Buckets::Exponential(10, 1.8, 33) in microseconds, limits printed by absl::StrCat, +Inf last.
    limits = [
        m.group(1)
        for line in after
        if (m := re.match(re.escape(f"{latency}_bucket{{{rest_predict},le=") + r'"([^"]+)"\}', line))
    ]
    assert limits[:6] == ["10", "18", "32.4", "58.32", "104.976", "188.957"]
    assert len(limits) == 34 and limits[-1] == "+Inf"
    assert sample(after, f'{latency}_bucket{{{rest_predict},le="+Inf"}}') == sample(
        after, f"{latency}_count{{{rest_predict}}}"
    )
    assert sample(after, f"{latency}_sum{{{rest_predict}}}") > 0  # microseconds, not seconds

    runtime = ':tensorflow:serving:runtime_latency_count{model_name="toy",API="Predict",runtime="TF1"}'
    assert sample(after, runtime) - sample(before, runtime) == 2  # predict_util.cc:113, one per model call
    assert any(line.startswith("mlpipe_serving_requests_total{") for line in after)  # mlpipe's own stay


def test_tf_serving_metrics_for_classify_and_regress_over_grpc(url, stub):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name, request.model_spec.signature_name = "toy", "classify_x"
    request.input.example_list.examples.add().CopyFrom(example(1.0))
    stub.Classify(request, timeout=30)
    lines = metric_lines(url)
    assert (
        sample(lines, ':tensorflow:serving:request_latency_count{model_name="toy",API="Classify",entrypoint="GRPC"}')
        >= 1
    )
    assert (
        sample(lines, ':tensorflow:serving:runtime_latency_count{model_name="toy",API="Classify",runtime="TF1"}') >= 1
    )


# ---- integers for float inputs: json_tensor.cc:293-296 (val.GetFloat(), no check since commit 57dac6cd) ----


def test_integers_past_2_24_are_accepted_for_float_inputs(url):
    r = post(url, "/v1/models/toy:predict", {"instances": [16777217]})
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": [0.5 * 16777216 + 2]}  # rounded to float32 as TF Serving does; version 2
    r = post(url, "/v1/models/toy:predict", {"inputs": [1e39]})  # past float32's range: +inf, as GetFloat gives
    assert r.status_code == 200 and r.text == '{"outputs": [Infinity]}'
    body = {"signature_name": "regress_x", "examples": [{"x": 16777217.0}]}
    assert post(url, "/v1/models/toy:regress", body).status_code == 200


# ---- status ignores labels: get_model_status_impl.cc:82 (only model_spec.has_version() is looked at) ----


def test_status_with_a_label_lists_every_version_even_for_an_unknown_label(url):
    everything = requests.get(url + "/v1/models/toy", timeout=30).json()
    assert [s["version"] for s in everything["model_version_status"]] == ["2", "1"]
    for label in ("stable", "canary", "nope"):
        r = requests.get(url + f"/v1/models/toy/labels/{label}", timeout=30)
        assert r.status_code == 200 and r.json() == everything
    # Requests that use the label still resolve it (server_core.cc GetModelVersionForLabel): 400 when unknown.
    assert requests.get(url + "/v1/models/toy/labels/nope/metadata", timeout=30).status_code == 400
    assert post(url, "/v1/models/toy/labels/nope:predict", {"instances": [1.0]}).status_code == 400


# ---- routes: http_rest_api_util.h:33 "(?i)/v1/.*", util.cc:31-34 (?i) regexes, handler.cc:74-104 ----


def test_routes_ignore_case_but_the_verb_and_subresource_compare_exactly(url):
    assert post(url, "/V1/MODELS/toy:predict", {"instances": [2.0]}).json() == {"predictions": [3.0]}
    one = requests.get(url + "/v1/Models/toy/VERSIONS/1", timeout=30).json()
    assert [s["version"] for s in one["model_version_status"]] == ["1"]
    # handler.cc:86 compares `*method == "predict"`: a matched ":PREDICT" stays "Malformed request".
    r = post(url, "/v1/models/toy:PREDICT", {"instances": [2.0]})
    assert r.status_code == 400 and r.json() == {"error": "Malformed request: POST /v1/models/toy:PREDICT"}
    # handler.cc:98 `model_subresource == "metadata"`: any other spelling asks for status.
    assert "model_version_status" in requests.get(url + "/v1/models/toy/METADATA", timeout=30).json()
    assert requests.get(url + "/v1/models/TOY", timeout=30).status_code == 404  # model names keep their case


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_other_methods_are_a_json_400_malformed_request(url, method):
    r = requests.request(method, url + "/v1/models/toy", data=b"{}", timeout=30)
    assert r.status_code == 400
    assert r.headers["Content-Type"] == "application/json"
    assert r.json() == {"error": f"Malformed request: {method} /v1/models/toy"}


def test_head_and_unknown_methods_are_not_html(url):
    r = requests.head(url + "/v1/models/toy", timeout=30)
    assert r.status_code == 400 and r.headers["Content-Type"] == "application/json"
    r = requests.request("PROPFIND", url + "/v1/models/toy", timeout=30)  # tornado's own 405
    assert r.status_code == 405 and r.json()["error"].startswith("405 Method Not Allowed")


def test_options_is_a_cors_preflight(url):
    # http_server.cc:170-177: OK with an http(s):// Origin, else FAILED_PRECONDITION (400).
    r = requests.options(url + "/v1/models/toy:predict", timeout=30)
    assert r.status_code == 400 and r.json() == {"error": "Origin header is missing in CORS preflight"}
    r = requests.options(url + "/v1/models/toy:predict", headers={"Origin": "https://app.example"}, timeout=30)
    assert r.status_code == 200


# ---- MultiInference: servables/tensorflow/multi_inference.cc:33-130 ----


def _task(request, signature, method, name="toy"):
    task = request.tasks.add()
    task.model_spec.name, task.model_spec.signature_name, task.method_name = name, signature, method


def test_multi_inference_runs_classify_and_regress_tasks_on_one_input(stub):
    request = inference_pb2.MultiInferenceRequest()
    request.input.example_list.examples.add().CopyFrom(example(1.0))
    _task(request, "classify_x", "tensorflow/serving/classify")
    _task(request, "regress_x", "tensorflow/serving/regress")
    response = stub.MultiInference(request, timeout=30)

    classify = classification_pb2.ClassificationRequest(input=request.input)
    classify.model_spec.name, classify.model_spec.signature_name = "toy", "classify_x"
    regress = regression_pb2.RegressionRequest(input=request.input)
    regress.model_spec.name, regress.model_spec.signature_name = "toy", "regress_x"
    assert len(response.results) == 2
    assert response.results[0].classification_result == stub.Classify(classify, timeout=30).result
    assert response.results[1].regression_result == stub.Regress(regress, timeout=30).result
    assert response.results[1].regression_result.regressions[0].value == 4.0  # 2x + version 2
    spec = response.results[0].model_spec
    assert (spec.name, spec.signature_name, spec.version.value) == ("toy", "classify_x", 2)


@pytest.mark.parametrize(
    "tasks,code,message",
    [
        (
            [
                ("classify_x", "tensorflow/serving/classify", "toy"),
                ("regress_x", "tensorflow/serving/regress", "other"),
            ],
            grpc.StatusCode.INVALID_ARGUMENT,
            "must access the same model name",
        ),
        (
            [("regress_x", "tensorflow/serving/regress", "toy")] * 2,
            grpc.StatusCode.INVALID_ARGUMENT,
            "Duplicate evaluation of signature: regress_x",
        ),
        (
            [("nope", "tensorflow/serving/regress", "toy")],
            grpc.StatusCode.INVALID_ARGUMENT,
            "Requested signature not found in model graph: nope",
        ),
        (
            [("serving_default", "tensorflow/serving/predict", "toy")],
            grpc.StatusCode.UNIMPLEMENTED,
            "Unsupported signature method_name: tensorflow/serving/predict",
        ),
    ],
)
def test_multi_inference_errors_follow_tf_serving(stub, tasks, code, message):
    request = inference_pb2.MultiInferenceRequest()
    request.input.example_list.examples.add().CopyFrom(example(1.0))
    for signature, method, name in tasks:
        _task(request, signature, method, name)
    with pytest.raises(grpc.RpcError) as e:
        stub.MultiInference(request, timeout=30)
    assert e.value.code() == code and message in e.value.details()


# ---- SIGTERM: idle keep-alive connections are closed once in-flight requests are done ----


def test_stop_closes_idle_keep_alive_connections_without_waiting_out_the_grace(toy_versions):
    server = start_server([entry("toy", toy_versions([1]))], shutdown_grace_seconds=600)
    stopper = threading.Thread(target=server.stop)
    try:
        client = socket.create_connection(("127.0.0.1", server.rest_port), timeout=30)
        client.sendall(b"GET /v1/models/toy HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
        assert client.recv(65536).startswith(b"HTTP/1.1 200")  # now idle, kept alive
        stopper.start()
        assert client.recv(65536) == b""  # the server closed it (without the fix: recv times out)
        stopper.join(60)
        assert not stopper.is_alive()  # stop() returned instead of waiting 600 s
    finally:
        client.close()
        if not stopper.is_alive() and not stopper.ident:
            server.stop()
