"""The speed paths give exactly the answers and errors of the checked paths they shortcut."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests
import tensorflow as tf

from serving import json_codec
from serving.errors import ServingError
from serving.servable import Servable
from tests.serving import toy_model

DTYPES = {"fare": np.dtype(np.float32), "hour": np.dtype(np.int32), "company": np.dtype(object)}


def test_row_format_of_scalars_becomes_typed_columns():
    fmt, arrays = json_codec.predict_inputs(
        {
            "instances": [
                {"fare": 16777217, "hour": 9, "company": "Flash Cab"},
                {"fare": 1.5, "hour": -1, "company": "é"},
            ]
        },
        DTYPES,
    )
    assert fmt == "row"
    assert arrays["fare"].dtype == np.float32 and arrays["fare"].tolist() == [16777216.0, 1.5]
    assert arrays["hour"].dtype == np.int32 and arrays["hour"].tolist() == [9, -1]
    assert arrays["company"].tolist() == [b"Flash Cab", "é".encode()]


@pytest.mark.parametrize(
    "instance,message",
    [
        (
            {"fare": "x", "hour": 9, "company": "c"},
            "key: fare of 'instances' list. Error: JSON Value: \"x\" Type: String is not of expected type: float",
        ),
        ({"fare": 1.0, "hour": True, "company": "c"}, "Type: True is not of expected type: int32"),
        ({"fare": 1.0, "hour": 2**31, "company": "c"}, "is not of expected type: int32"),
        ({"fare": 1.0, "hour": 9, "company": 3}, "Type: Number is not of expected type: string"),
        ({"fare": 1.0, "hour": 9}, "keys must be equal to: company,fare,hour"),
        ({"fare": 1.0, "hour": 9, "company": "c", "x": 1}, "does not have named input: x"),
    ],
)
def test_row_format_errors_are_the_checked_paths_errors(instance, message):
    with pytest.raises(ServingError) as e:
        json_codec.predict_inputs({"instances": [instance]}, DTYPES)
    assert message in e.value.message


def test_json_tokens_orjson_does_not_take_still_work():
    doc = json_codec.parse_body(b'{"instances": [NaN, Infinity, -Infinity]}')
    assert np.isnan(doc["instances"][0]) and doc["instances"][1:] == [float("inf"), float("-inf")]
    assert json_codec.dumps({"outputs": [float("nan"), 1.5]}) == b'{"outputs": [NaN, 1.5]}'
    assert json.loads(json_codec.dumps({"predictions": [[0.25]], "s": "null"})) == {
        "predictions": [[0.25]],
        "s": "null",
    }
    with pytest.raises(ServingError, match="JSON Parse error"):
        json_codec.parse_body(b'{"instances": [1,]}')


def test_prebound_signature_call_answers_like_the_signature_function(tmp_path):
    servable = Servable("toy", 1, toy_model.export(str(tmp_path / "1"), 1))
    signature = servable.signature("multi")
    assert signature.prebound is not None  # the fast path is the one in use
    inputs = {
        "a": np.array([[1.0, 2.0], [3.0, 4.0]], np.float32),
        "tag": np.array([b"x", b"y"], dtype=object),
        "n": np.array([5, 6], np.int64),
    }
    expected = {k: v.numpy() for k, v in signature.function(**{k: tf.constant(v) for k, v in inputs.items()}).items()}
    got = servable.call(signature, inputs)
    assert sorted(got) == sorted(expected)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])


def test_nan_in_a_request_over_rest(toy_module_server):
    url = f"http://127.0.0.1:{toy_module_server.rest_port}/v1/models/toy:predict"
    r = requests.post(url, data=b'{"instances": [NaN, 2.0]}', timeout=30)
    assert r.status_code == 200 and r.text == '{"predictions": [NaN, 3.0]}'


@pytest.mark.parametrize(
    "value,dtype",
    [
        ([1.5], tf.float32),
        ([[1.0, 2.0], [3.0, 4.0]], tf.float64),
        ([7], tf.int32),
        ([[2**40]], tf.int64),
        ([b"a", b"\xff"], tf.string),
        ([True, False], tf.bool),
        (np.arange(6, dtype=np.float32).reshape(2, 3), tf.float32),
        (3.0, tf.float32),
        ([], tf.int64),
    ],
)
def test_tensor_protos_convert_like_make_ndarray(value, dtype):
    from serving.inference import tensor_to_array

    proto = tf.make_tensor_proto(value, dtype=dtype)  # tensor_content for numpy input, typed fields otherwise
    expected = tf.make_ndarray(proto)
    got = tensor_to_array(proto)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def test_tensor_proto_with_one_value_for_many_is_filled_like_make_ndarray():
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2

    from serving.inference import tensor_to_array

    proto = tensor_pb2.TensorProto(
        dtype=tf.float32.as_datatype_enum,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=3)]),
        float_val=[2.5],
    )
    np.testing.assert_array_equal(tensor_to_array(proto), tf.make_ndarray(proto))


@pytest.mark.parametrize(
    "array",
    [
        np.array([[0.25]], dtype=np.float32),
        np.array([0.1, float("nan"), -np.inf], dtype=np.float64),
        np.arange(6, dtype=np.int32).reshape(2, 3),
        np.array([2**40, -1], dtype=np.int64),
        np.array([True, False]),
        np.array(3.5, dtype=np.float32),
        np.zeros((2, 0), dtype=np.float32),
    ],
)
def test_output_tensors_are_written_in_typed_fields_and_read_back_like_make_tensor_proto(array):
    from serving.inference import array_to_tensor

    got, reference = array_to_tensor(array), tf.make_tensor_proto(array)
    assert not got.tensor_content  # values in float_val, int64_val, ... as TF Serving's AsProtoField writes them
    assert got.dtype == reference.dtype and got.tensor_shape == reference.tensor_shape
    np.testing.assert_array_equal(tf.make_ndarray(got), tf.make_ndarray(reference))
    assert tf.make_ndarray(got).dtype == array.dtype


def _request_inputs(tensors: dict):
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    for key, proto in tensors.items():
        request.inputs[key].CopyFrom(proto)
    return request.inputs


def _typed(value, dtype, shape=None):
    """A TensorProto with its values in the typed field (make_tensor_proto uses tensor_content for arrays)."""
    return tf.make_tensor_proto(np.asarray(value).tolist(), dtype=dtype, shape=shape)


@pytest.mark.parametrize(
    "tensors",
    [
        {"fare": _typed([1.5], tf.float32), "n": _typed([7], tf.int64), "c": _typed([b"Flash"], tf.string)},
        {"a": _typed([1.0, 2.0], tf.float32), "b": _typed([3.0, 4.0], tf.float32), "t": _typed([True, False], tf.bool)},
        {"a": _typed([[1.0], [2.0]], tf.float64), "b": _typed([[3.0], [4.0]], tf.float64), "i": _typed([9], tf.int32)},
        {"a": _typed([1.0], tf.float32), "b": _typed([2.0, 3.0], tf.float32)},  # one dtype, two shapes
        {"a": _typed([1.0], tf.float32), "b": tf.make_tensor_proto(np.array([2.0], np.float32))},  # tensor_content
        {"a": _typed([1.0], tf.float32), "s": tf.make_tensor_proto(3.0, dtype=tf.float32)},  # a scalar
        {"a": _typed([2.5], tf.float32, shape=[3])},  # one value for three
        {"a": _typed([], tf.int64, shape=[0]), "b": _typed([], tf.int64, shape=[0])},
        {"h": tf.make_tensor_proto([1.0], dtype=tf.float16)},  # a type read by make_ndarray only
    ],
)
def test_a_requests_tensors_read_together_equal_each_tensor_read_alone(tensors):
    from serving.inference import request_arrays, tensor_to_array

    inputs = _request_inputs(tensors)
    expected = {k: tensor_to_array(v) for k, v in inputs.items()}
    got = request_arrays(inputs)
    assert list(got) == list(expected)
    for key in expected:
        assert got[key].dtype == expected[key].dtype and got[key].shape == expected[key].shape, key
        np.testing.assert_array_equal(got[key], expected[key])


def test_a_requests_bad_tensor_fails_as_that_tensor_alone_fails():
    from serving.inference import request_arrays, tensor_to_array

    inputs = _request_inputs({"a": tf.make_tensor_proto(np.zeros(2, np.float32)), "b": _typed([1.0], tf.float32)})
    inputs["a"].tensor_content = b"\x00" * 3  # not two float32s
    with pytest.raises(ServingError) as alone:
        {k: tensor_to_array(v) for k, v in inputs.items()}
    with pytest.raises(ServingError) as together:
        request_arrays(inputs)
    assert together.value.code == alone.value.code and together.value.message == alone.value.message
