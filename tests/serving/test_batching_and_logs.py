"""Batching merges concurrent requests; request logs hold what the model saw and read back."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import requests
import tensorflow as tf

from serving.batching import BatchingParameters, BatchScheduler, parse_batching_parameters
from serving.errors import ServingError
from serving.request_log import RequestLogger, log_files, make_log, read_logs
from serving.service import LogOptions
from tests.serving.conftest import entry, start_server


def test_batching_parameters_file_text_format():
    params = parse_batching_parameters(
        """
        max_batch_size { value: 8 }
        batch_timeout_micros { value: 2000 }
        num_batch_threads { value: 2 }
        max_enqueued_batches { value: 10 }
        allowed_batch_sizes: 4
        allowed_batch_sizes: 8
        """
    )
    assert params == BatchingParameters(8, 2000, 10, 2, (4, 8))
    with pytest.raises(ValueError, match="must equal max_batch_size"):
        parse_batching_parameters("max_batch_size { value: 8 } allowed_batch_sizes: 4")
    with pytest.raises(Exception, match="no_such_field"):
        parse_batching_parameters("no_such_field { value: 1 }")


class _Recorder:
    """Stands in for Servable.call: records batch sizes, returns 2x per row."""

    model_name = "rec"

    def __init__(self, delay=0.0):
        self.sizes, self.delay = [], delay

    def call(self, signature, inputs):
        self.sizes.append(len(inputs["x"]))
        time.sleep(self.delay)
        return {"y": inputs["x"] * 2}


class _Sig:
    name = "s"


def test_concurrent_requests_are_merged_and_each_gets_its_rows():
    recorder = _Recorder()
    scheduler = BatchScheduler(BatchingParameters(max_batch_size=16, batch_timeout_micros=200_000, num_batch_threads=1))
    try:
        futures = [scheduler.submit(recorder, _Sig(), {"x": np.array([i, i + 100])}) for i in range(5)]
        results = [f.result(timeout=10)["y"].tolist() for f in futures]
    finally:
        scheduler.stop()
    assert results == [[2 * i, 2 * (i + 100)] for i in range(5)]
    assert recorder.sizes == [10]  # one model call for five requests


def test_full_batches_close_at_max_batch_size_and_padding_uses_allowed_sizes():
    recorder = _Recorder()
    scheduler = BatchScheduler(
        BatchingParameters(
            max_batch_size=4, batch_timeout_micros=100_000, num_batch_threads=1, allowed_batch_sizes=(2, 4)
        )
    )
    try:
        futures = [scheduler.submit(recorder, _Sig(), {"x": np.array([i])}) for i in range(5)]
        assert [f.result(timeout=10)["y"].tolist() for f in futures] == [[0], [2], [4], [6], [8]]
        with pytest.raises(ServingError, match="larger than maximum input batch size 4"):
            scheduler.submit(recorder, _Sig(), {"x": np.arange(5)})
        with pytest.raises(ServingError, match="at least one dimension"):
            scheduler.submit(recorder, _Sig(), {"x": np.array(1)})
    finally:
        scheduler.stop()
    assert recorder.sizes == [4, 2]  # the fifth request alone, padded to the allowed size 2


class _Blocking(_Recorder):
    """A _Recorder whose calls say when they start and wait until released."""

    def __init__(self):
        super().__init__()
        self.started, self.release = threading.Event(), threading.Event()

    def call(self, signature, inputs):
        self.started.set()
        assert self.release.wait(30), "never released"
        return super().call(signature, inputs)


def test_a_full_queue_is_resource_exhausted():
    recorder = _Blocking()
    scheduler = BatchScheduler(
        BatchingParameters(max_batch_size=1, batch_timeout_micros=0, num_batch_threads=1, max_enqueued_batches=2)
    )
    try:
        futures = [scheduler.submit(recorder, _Sig(), {"x": np.array([0])})]
        assert recorder.started.wait(10)  # the only worker is now busy with the first
        futures += [scheduler.submit(recorder, _Sig(), {"x": np.array([i])}) for i in (1, 2)]
        with pytest.raises(ServingError, match="queue to which this task was submitted is full") as e:
            scheduler.submit(recorder, _Sig(), {"x": np.array([3])})
        assert e.value.http_status == 429
        recorder.release.set()
        assert [f.result(timeout=10)["y"].tolist() for f in futures] == [[0], [2], [4]]
    finally:
        recorder.release.set()
        scheduler.stop()


def test_batching_server_merges_concurrent_rest_requests(toy_versions):
    from serving.batching import BatchingParameters as P

    server = start_server(
        [entry("toy", toy_versions([1]))],
        batching=P(max_batch_size=32, batch_timeout_micros=50_000, num_batch_threads=1),
    )
    url = f"http://127.0.0.1:{server.rest_port}/v1/models/toy:predict"
    results, barrier = {}, threading.Barrier(8)

    def call(i):
        barrier.wait()
        results[i] = requests.post(url, json={"instances": [float(i)]}, timeout=30).json()

    try:
        threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        page = requests.get(f"http://127.0.0.1:{server.rest_port}/monitoring/prometheus/metrics").text
    finally:
        server.stop()
    assert results == {i: {"predictions": [0.5 * i + 1]} for i in range(8)}
    count = next(line for line in page.splitlines() if line.startswith('mlpipe_serving_batch_size_count{model="toy"}'))
    assert float(count.split()[-1]) < 8  # fewer model calls than requests


def test_rest_and_grpc_requests_are_logged_and_read_back(toy_versions, tmp_path):
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    log_root = str(tmp_path / "request_logs")
    server = start_server(
        [entry("toy", toy_versions([1]))], log_options=LogOptions(root=log_root, sampling_rate=1.0, seed=1)
    )
    try:
        before = time.time()
        requests.post(f"http://127.0.0.1:{server.rest_port}/v1/models/toy:predict", json={"instances": [1.0, 3.0]})
        body = {"signature_name": "classify_x", "examples": [{"x": 0.5}]}
        requests.post(f"http://127.0.0.1:{server.rest_port}/v1/models/toy:classify", json=body)
        requests.post(f"http://127.0.0.1:{server.rest_port}/v1/models/toy:predict", json={"instances": ["bad"]})
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "toy"
            request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([7.0], np.float32)))
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    finally:
        server.stop()  # flushes the logs
    records = list(read_logs(os.path.join(log_root, "toy")))
    assert [r.kind for r in records] == ["predict", "classify", "predict"]  # failed requests are not logged
    rest_predict, classify, grpc_predict = records
    assert rest_predict.model_spec.name == "toy" and rest_predict.model_spec.version.value == 1
    assert rest_predict.model_spec.signature_name == "serving_default"
    assert tf.make_ndarray(rest_predict.request.inputs["x"]).tolist() == [1.0, 3.0]
    assert tf.make_ndarray(rest_predict.response.outputs["y"]).tolist() == [1.5, 2.5]
    assert classify.request.input.example_list.examples[0].features.feature["x"].float_list.value == [0.5]
    assert len(classify.response.result.classifications) == 1
    assert tf.make_ndarray(grpc_predict.request.inputs["x"]).tolist() == [7.0]
    assert all(before - 1 <= r.timestamp <= time.time() for r in records)
    assert list(read_logs(log_root, since=time.time() + 5)) == []
    assert len(list(read_logs(log_root, until=time.time() + 5))) == 3


def _predict_log(value, stamp=None):
    from tensorflow_serving.apis import model_pb2, predict_pb2

    spec = model_pb2.ModelSpec(name="m")
    spec.version.value = 1
    request = predict_pb2.PredictRequest()
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([value]))
    record = make_log("predict_log", spec, request, predict_pb2.PredictResponse(), 1.0)
    if stamp is not None:
        record.log_metadata.timestamp_secs = stamp
    return record


def test_logs_rotate_by_size_sample_and_tolerate_a_partial_last_record(tmp_path):
    logger = RequestLogger(str(tmp_path), sampling_rate=1.0, max_file_bytes=300, seed=0)
    for i in range(20):
        logger.write(_predict_log(float(i), stamp=1000 + i))
    logger.close()
    files = log_files(str(tmp_path))
    assert len(files) > 1
    values = [tf.make_ndarray(r.request.inputs["x"]).tolist()[0] for r in read_logs(str(tmp_path))]
    assert values == [float(i) for i in range(20)]
    assert [r.timestamp for r in read_logs(str(tmp_path), since=1005, until=1008)] == [1005, 1006, 1007]
    with open(files[-1], "ab") as f:
        f.write(b"\x10\x00\x00")  # a record cut off mid-write
    assert len(list(read_logs(str(tmp_path)))) == 20

    sampler = RequestLogger(str(tmp_path / "s"), sampling_rate=0.25, seed=42)
    hits = sum(sampler.sampled() for _ in range(4000))
    sampler.close()
    assert 800 < hits < 1200
