"""gRPC conformance through the real tensorflow_serving.apis stubs."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)


@pytest.fixture(scope="module")
def channel(toy_module_server):
    with grpc.insecure_channel(f"127.0.0.1:{toy_module_server.grpc_port}") as ch:
        yield ch


@pytest.fixture(scope="module")
def predictions(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def models(channel):
    return model_service_pb2_grpc.ModelServiceStub(channel)


def predict_request(values, version=None, label=None, signature=""):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "toy"
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label:
        request.model_spec.version_label = label
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array(values, np.float32)))
    return request


def add_example(examples, **features):
    example = examples.add()
    for k, v in features.items():
        example.features.feature[k].float_list.value.append(v)


def test_predict_latest_version_label_and_model_spec(predictions):
    response = predictions.Predict(predict_request([1.0, 2.0]), timeout=30)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["y"]), [2.5, 3.0])
    assert response.model_spec.name == "toy"
    assert response.model_spec.version.value == 2
    assert response.model_spec.signature_name == "serving_default"
    old = predictions.Predict(predict_request([2.0], version=1), timeout=30)
    assert tf.make_ndarray(old.outputs["y"]).tolist() == [2.0] and old.model_spec.version.value == 1
    stable = predictions.Predict(predict_request([2.0], label="stable"), timeout=30)
    assert stable.model_spec.version.value == 1


def test_predict_output_filter_and_multiple_inputs(predictions):
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "toy", "multi"
    request.inputs["a"].CopyFrom(tf.make_tensor_proto(np.array([[1, 2]], np.float32)))
    request.inputs["tag"].CopyFrom(tf.make_tensor_proto([b"q"]))
    request.inputs["n"].CopyFrom(tf.make_tensor_proto(np.array([5], np.int64)))
    request.output_filter.append("twice")
    response = predictions.Predict(request, timeout=30)
    assert list(response.outputs) == ["twice"]
    assert tf.make_ndarray(response.outputs["twice"]).tolist() == [10]


def test_classify_and_regress(predictions):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name, request.model_spec.signature_name = "toy", "classify_x"
    add_example(request.input.example_list.examples, x=0.0)
    add_example(request.input.example_list.examples, x=-2.0)
    response = predictions.Classify(request, timeout=30)
    assert response.model_spec.version.value == 2
    rows = [[(c.label, round(c.score, 4)) for c in r.classes] for r in response.result.classifications]
    assert rows == [[("no", 0.1192), ("yes", 0.8808)], [("no", 0.5), ("yes", 0.5)]]

    request = regression_pb2.RegressionRequest()
    request.model_spec.name, request.model_spec.signature_name = "toy", "regress_x"
    request.model_spec.version_label = "stable"
    context = request.input.example_list_with_context
    context.context.features.feature["x"].float_list.value.append(10.0)
    add_example(context.examples)
    add_example(context.examples, x=1.0)
    response = predictions.Regress(request, timeout=30)
    assert [r.value for r in response.result.regressions] == [21.0, 3.0]
    assert response.model_spec.version.value == 1


def test_get_model_metadata(predictions):
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "toy"
    request.metadata_field.append("signature_def")
    response = predictions.GetModelMetadata(request, timeout=30)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    assert set(signatures.signature_def) == {"serving_default", "multi", "classify_x", "regress_x"}
    assert signatures.signature_def["regress_x"].method_name == "tensorflow/serving/regress"
    assert response.model_spec.version.value == 2
    request.ClearField("metadata_field")
    with pytest.raises(grpc.RpcError) as e:
        predictions.GetModelMetadata(request, timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_get_model_status(models):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "toy"
    response = models.GetModelStatus(request, timeout=30)
    assert [(s.version, s.state) for s in response.model_version_status] == [
        (2, get_model_status_pb2.ModelVersionStatus.AVAILABLE),
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE),
    ]
    request.model_spec.version_label = "canary"  # ignored, as TF Serving does (get_model_status_impl.cc:82)
    assert [s.version for s in models.GetModelStatus(request, timeout=30).model_version_status] == [2, 1]


@pytest.mark.parametrize(
    "mutate,code,message",
    [
        (lambda r: setattr(r.model_spec, "name", "nope"), grpc.StatusCode.NOT_FOUND, "Latest(nope)"),
        (lambda r: r.model_spec.version.__setattr__("value", 9), grpc.StatusCode.NOT_FOUND, "Specific(toy, 9)"),
        (
            lambda r: setattr(r.model_spec, "version_label", "nope"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Unrecognized servable version label",
        ),
        (lambda r: setattr(r.model_spec, "signature_name", "nope"), grpc.StatusCode.INVALID_ARGUMENT, "not found"),
        (
            lambda r: r.inputs["extra"].CopyFrom(tf.make_tensor_proto([1.0])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Sent extra: {extra}",
        ),
        (
            lambda r: r.inputs["x"].CopyFrom(tf.make_tensor_proto([b"s"])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "expects dtype float32",
        ),
        (
            lambda r: r.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([1.0]))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "expects dtype float32 but got float64",
        ),
        (
            lambda r: r.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones((2, 2), np.float32))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "expects [?]",
        ),
        (lambda r: r.output_filter.append("nope"), grpc.StatusCode.INVALID_ARGUMENT, "output tensor alias not found"),
        (lambda r: setattr(r.model_spec, "name", ""), grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec name"),
    ],
)
def test_predict_errors_carry_canonical_codes(predictions, mutate, code, message):
    request = predict_request([1.0])
    mutate(request)
    with pytest.raises(grpc.RpcError) as e:
        predictions.Predict(request, timeout=30)
    assert e.value.code() == code
    assert message in e.value.details()


def test_classify_on_a_predict_signature_is_invalid_argument(predictions):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "toy"
    add_example(request.input.example_list.examples, x=1.0)
    with pytest.raises(grpc.RpcError) as e:
        predictions.Classify(request, timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    request.model_spec.signature_name = "classify_x"
    request.input.example_list.ClearField("examples")
    with pytest.raises(grpc.RpcError) as e:
        predictions.Classify(request, timeout=30)
    assert "Input is empty" in e.value.details()


def test_reload_config_adds_a_model_and_moves_labels(toy_versions, toy_module_server, models, predictions):
    other = toy_versions([1, 3], name="other")
    config = text_format.Parse(
        f"""
        model_config_list {{
          config {{ name: "toy" base_path: "{toy_module_server.manager.entry('toy').base_path}"
                   model_version_policy {{ all {{}} }}
                   version_labels {{ key: "stable" value: 2 }} }}
          config {{ name: "other" base_path: "{other}"
                   model_version_policy {{ specific {{ versions: 1 }} }} }}
        }}""",
        model_management_pb2.ReloadConfigRequest().config,
    )
    request = model_management_pb2.ReloadConfigRequest()
    request.config.CopyFrom(config)
    try:
        response = models.HandleReloadConfigRequest(request, timeout=60)
        assert response.status.error_code == 0
        stable = predictions.Predict(predict_request([2.0], label="stable"), timeout=30)
        assert stable.model_spec.version.value == 2
        other_request = predict_request([2.0])
        other_request.model_spec.name = "other"
        assert predictions.Predict(other_request, timeout=30).model_spec.version.value == 1  # specific: 1, not 3
        bad = model_management_pb2.ReloadConfigRequest()
        bad.config.model_config_list.config.add(name="x")  # no base_path
        with pytest.raises(grpc.RpcError) as e:
            models.HandleReloadConfigRequest(bad, timeout=30)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "base_path" in e.value.details()
    finally:
        restore = model_management_pb2.ReloadConfigRequest()
        text_format.Parse(
            f"""model_config_list {{ config {{ name: "toy" base_path: "{toy_module_server.manager.entry('toy').base_path}"
                model_version_policy {{ all {{}} }}
                version_labels {{ key: "stable" value: 1 }} version_labels {{ key: "canary" value: 2 }} }} }}""",
            restore.config,
        )
        models.HandleReloadConfigRequest(restore, timeout=60)


def test_the_benchmarks_raw_http2_client_gets_grpcios_bytes_and_sees_errors(toy_module_server, channel):
    from bench.grpc_raw import RawGrpcConnection

    method = "/tensorflow.serving.PredictionService/Predict"
    conn = RawGrpcConnection("127.0.0.1", toy_module_server.grpc_port, method)
    try:
        for values in ([1.0], [2.0, 3.0], [4.0]):  # several calls on one connection, as the benchmark makes
            payload = predict_request(values, version=1).SerializeToString()
            assert conn.call(payload) == channel.unary_unary(method)(payload)
        unknown = predict_request([1.0]).SerializeToString().replace(b"toy", b"nop")
        with pytest.raises(RuntimeError, match="without a response message"):  # NOT_FOUND, trailers only
            conn.call(unknown)
        assert conn.call(payload) == channel.unary_unary(method)(payload)  # the connection goes on
    finally:
        conn.close()
