"""Request keys: the client's (X-Request-Id / x-request-id) or a generated one, answered back and stamped on the log."""

from __future__ import annotations

import os
import re

import numpy as np
import requests
import tensorflow as tf

from serving.request_log import read_logs
from serving.service import LogOptions
from tests.serving.conftest import entry, start_server

GENERATED = re.compile(r"^[0-9a-f]{11}-[0-9a-f]{16}$")


def test_every_logged_request_carries_its_key_and_the_client_gets_it_back(toy_versions, tmp_path):
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    log_root = str(tmp_path / "request_logs")
    server = start_server(
        [entry("toy", toy_versions([1]))], log_options=LogOptions(root=log_root, sampling_rate=1.0, seed=1)
    )
    url = f"http://127.0.0.1:{server.rest_port}/v1/models/toy"
    try:
        sent = requests.post(f"{url}:predict", json={"instances": [1.0]}, headers={"X-Request-Id": "order-17"})
        plain = requests.post(f"{url}:predict", json={"instances": [1.0, 3.0]})
        body = {"signature_name": "classify_x", "examples": [{"x": 0.5}]}
        classify = requests.post(f"{url}:classify", json=body)
        bad = requests.post(f"{url}:predict", json={"instances": [1.0]}, headers={"X-Request-Id": "no spaces"})
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "toy"
            request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([7.0], np.float32)))
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            _, call = stub.Predict.with_call(request, metadata=(("x-request-id", "grpc-1"),), timeout=30)
            _, generated_call = stub.Predict.with_call(request, timeout=30)
    finally:
        server.stop()  # flushes the logs
    # The client's key comes back; without one the server makes one up and says which; bodies do not change.
    assert sent.status_code == 200 and sent.headers["X-Request-Id"] == "order-17"
    assert sent.json() == {"predictions": [1.5]} and plain.json() == {"predictions": [1.5, 2.5]}
    assert GENERATED.match(plain.headers["X-Request-Id"]) and GENERATED.match(classify.headers["X-Request-Id"])
    assert bad.status_code == 400 and "bad request key 'no spaces'" in bad.json()["error"]
    assert dict(call.trailing_metadata())["x-request-id"] == "grpc-1"
    assert GENERATED.match(dict(generated_call.trailing_metadata())["x-request-id"])
    # Each log record carries its request's key (log_metadata.request_origin); the refused request is not logged.
    records = list(read_logs(os.path.join(log_root, "toy")))
    assert [r.request_key for r in records] == [
        "order-17",
        plain.headers["X-Request-Id"],
        classify.headers["X-Request-Id"],
        "grpc-1",
        dict(generated_call.trailing_metadata())["x-request-id"],
    ]
