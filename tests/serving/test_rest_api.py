"""REST conformance: each request form of TF Serving's api_rest.md, its response, and each error status."""

from __future__ import annotations

import base64
import json

import pytest
import requests
import tensorflow as tf


@pytest.fixture(scope="module")
def url(toy_module_server):
    return f"http://127.0.0.1:{toy_module_server.rest_port}"


def post(url, path, body):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(url + path, data=data, timeout=30)


def example_b64(**features) -> dict:
    feats = {k: tf.train.Feature(float_list=tf.train.FloatList(value=[v])) for k, v in features.items()}
    raw = tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()
    return {"b64": base64.b64encode(raw).decode()}


# ---- status and metadata --------------------------------------------------------------------


def test_status_lists_every_version_newest_first(url):
    r = requests.get(url + "/v1/models/toy")
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    assert r.json() == {
        "model_version_status": [
            {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
        ]
    }


def test_status_of_one_version_and_of_a_label(url):
    by_version = requests.get(url + "/v1/models/toy/versions/1").json()
    by_label = requests.get(url + "/v1/models/toy/labels/stable").json()
    assert [s["version"] for s in by_version["model_version_status"]] == ["1"]
    assert by_label == requests.get(url + "/v1/models/toy").json()  # TF Serving ignores the label (test_conformance)


def test_metadata_has_model_spec_and_signature_defs_in_json_proto_form(url):
    doc = requests.get(url + "/v1/models/toy/metadata").json()
    assert doc["model_spec"] == {"name": "toy", "signature_name": "", "version": "2"}
    sigs = doc["metadata"]["signature_def"]["signature_def"]
    assert set(sigs) == {"serving_default", "multi", "classify_x", "regress_x"}
    default = sigs["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    assert default["inputs"]["x"]["dtype"] == "DT_FLOAT"
    assert default["inputs"]["x"]["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]
    assert sigs["classify_x"]["method_name"] == "tensorflow/serving/classify"
    assert requests.get(url + "/v1/models/toy/versions/1/metadata").json()["model_spec"]["version"] == "1"
    assert requests.get(url + "/v1/models/toy/labels/canary/metadata").json()["model_spec"]["version"] == "2"


# ---- predict ----------------------------------------------------------------------------------


def test_predict_row_format_single_output_is_bare_values(url):
    r = post(url, "/v1/models/toy:predict", {"instances": [1.0, 2.0, 5.0]})
    assert r.status_code == 200
    assert r.json() == {"predictions": [2.5, 3.0, 4.5]}  # 0.5 x + 2 (latest version, 2)


def test_predict_columnar_format_returns_outputs(url):
    assert post(url, "/v1/models/toy:predict", {"inputs": [1.0, 2.0]}).json() == {"outputs": [2.5, 3.0]}
    assert post(url, "/v1/models/toy:predict", {"inputs": {"x": [1.0]}}).json() == {"outputs": [2.5]}


def test_predict_by_version_and_by_label(url):
    assert post(url, "/v1/models/toy/versions/1:predict", {"instances": [2.0]}).json() == {"predictions": [2.0]}
    assert post(url, "/v1/models/toy/labels/stable:predict", {"instances": [2.0]}).json() == {"predictions": [2.0]}
    assert post(url, "/v1/models/toy/labels/canary:predict", {"instances": [2.0]}).json() == {"predictions": [3.0]}


def test_predict_multi_output_rows_are_objects_and_bytes_outputs_are_b64(url):
    body = {
        "signature_name": "multi",
        "instances": [
            {"a": [1, 2], "tag": "x", "n": 3},
            {"a": [0.5, 0.25], "tag": {"b64": base64.b64encode(b"\x00\xff").decode()}, "n": -1},
        ],
    }
    r = post(url, "/v1/models/toy:predict", body)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert preds[0] == {"sum": 5.0, "tag_bytes": {"b64": base64.b64encode(b"x!").decode()}, "twice": 6}
    assert preds[1]["sum"] == 2.75 and preds[1]["twice"] == -2
    assert base64.b64decode(preds[1]["tag_bytes"]["b64"]) == b"\x00\xff!"


def test_predict_multi_output_columnar_is_an_object_of_outputs(url):
    body = {"signature_name": "multi", "inputs": {"a": [[1, 1]], "tag": ["t"], "n": [4]}}
    assert post(url, "/v1/models/toy:predict", body).json() == {
        "outputs": {"sum": [4.0], "tag_bytes": [{"b64": base64.b64encode(b"t!").decode()}], "twice": [8]}
    }


def test_float_outputs_are_written_as_shortest_float32_decimals(url):
    r = post(url, "/v1/models/toy/versions/1:predict", {"instances": [0.4]})
    assert r.text.replace(" ", "") == '{"predictions":[1.2]}'  # not 1.2000000476837158


def test_predict_b64_serialized_examples_on_the_classify_signature(url):
    body = {"signature_name": "classify_x", "instances": [example_b64(x=0.0)]}
    r = post(url, "/v1/models/toy:predict", body)
    assert r.status_code == 200, r.text
    (pred,) = r.json()["predictions"]
    assert pred["classes"] == ["no", "yes"]
    assert pred["scores"][1] == pytest.approx(0.880797, abs=1e-5)  # sigmoid(0 + 2)


# ---- classify and regress -----------------------------------------------------------------------


def test_classify_returns_label_score_pairs_under_results(url):
    body = {"signature_name": "classify_x", "examples": [{"x": 0.0}, {"x": -2.0}]}
    r = post(url, "/v1/models/toy:classify", body)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [[label for label, _ in row] for row in results] == [["no", "yes"], ["no", "yes"]]
    assert results[1][1][1] == pytest.approx(0.5)


def test_classify_with_context_and_b64_examples(url):
    body = {"signature_name": "classify_x", "context": {"x": 0.0}, "examples": [{}, {"x": -2.0}]}
    results = post(url, "/v1/models/toy/versions/1:classify", body).json()["results"]
    assert results[0][1][1] == pytest.approx(0.731059, abs=1e-5)  # sigmoid(0 + 1): context's x
    assert results[1][1][1] == pytest.approx(0.268941, abs=1e-5)  # the example's own x wins
    raw = base64.b64decode(example_b64(x=0.0)["b64"])
    body = {"signature_name": "classify_x", "examples": [{"x": 0.0, "blob": {"b64": base64.b64encode(raw).decode()}}]}
    assert post(url, "/v1/models/toy:classify", body).status_code == 200


def test_regress_returns_values_under_results(url):
    body = {"signature_name": "regress_x", "examples": [{"x": 1.0}, {"x": 2.0}]}
    assert post(url, "/v1/models/toy:regress", body).json() == {"results": [4.0, 6.0]}
    assert post(url, "/v1/models/toy/labels/stable:regress", body).json() == {"results": [3.0, 5.0]}


# ---- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method,path,body,status,message",
    [
        ("POST", "/v1/models/nope:predict", {"instances": [1.0]}, 404, "Servable not found for request: Latest(nope)"),
        ("POST", "/v1/models/toy/versions/7:predict", {"instances": [1.0]}, 404, "Specific(toy, 7)"),
        (
            "POST",
            "/v1/models/toy/labels/nope:predict",
            {"instances": [1.0]},
            400,
            "Unrecognized servable version label: nope",
        ),
        ("GET", "/v1/models/nope", None, 404, "Could not find any versions of model nope"),
        ("GET", "/v1/models/toy/versions/9", None, 404, "Could not find version 9 of model toy"),
        ("GET", "/v1/models/nope/metadata", None, 404, "Servable not found"),
        ("GET", "/v1/models", None, 400, "Missing model name in request."),
        ("POST", "/v1/models/toy:explain", {"instances": [1.0]}, 400, "Malformed request: POST /v1/models/toy:explain"),
        ("GET", "/v1/models/toy:predict", None, 400, "Malformed request"),
        ("POST", "/v1/models/toy:predict", b"", 400, "JSON Parse error: The document is empty"),
        ("POST", "/v1/models/toy:predict", b"{nope", 400, "JSON Parse error"),
        ("POST", "/v1/models/toy:predict", b"[1, 2]", 400, "Is not object"),
        (
            "POST",
            "/v1/models/toy:predict",
            {"instances": [1.0], "inputs": [1.0]},
            400,
            "expecting only one of 'inputs' or 'instances'",
        ),
        (
            "POST",
            "/v1/models/toy:predict",
            {"signature_name": 3, "instances": [1.0]},
            400,
            "'signature_name' key must be a string value",
        ),
        ("POST", "/v1/models/toy:predict", {"nothing": 1}, 400, "Missing 'inputs' or 'instances' key"),
        ("POST", "/v1/models/toy:predict", {"instances": []}, 400, "No values in 'instances' array"),
        ("POST", "/v1/models/toy:predict", {"instances": 1.0}, 400, "Excepting 'instances' to be an list/array"),
        ("POST", "/v1/models/toy:predict", {"instances": ["a"]}, 400, "is not of expected type: float"),
        ("POST", "/v1/models/toy:predict", {"instances": [[1.0]]}, 400, "expects [?]"),
        ("POST", "/v1/models/toy:predict", {"inputs": [[1.0], [2.0, 3.0]]}, 400, "Encountered list at unexpected size"),
        (
            "POST",
            "/v1/models/toy:predict",
            {"signature_name": "nope", "instances": [1.0]},
            400,
            'Serving signature name: "nope" not found',
        ),
        (
            "POST",
            "/v1/models/toy:predict",
            {"signature_name": "multi", "instances": [1.0]},
            400,
            "instances is a plain list",
        ),
        (
            "POST",
            "/v1/models/toy:predict",
            {"signature_name": "multi", "instances": [{"a": [1, 2], "tag": "x"}]},
            400,
            "keys must be equal to: a,n,tag",
        ),
        (
            "POST",
            "/v1/models/toy:predict",
            {"signature_name": "multi", "inputs": {"a": [[1, 2]], "tag": ["x"]}},
            400,
            "Missing named input: n",
        ),
        (
            "POST",
            "/v1/models/toy:predict",
            {"signature_name": "multi", "instances": [{"a": [1, 2], "tag": "x", "n": 1.5}]},
            400,
            "is not of expected type: int64",
        ),
        (
            "POST",
            "/v1/models/toy:predict",
            {"signature_name": "multi", "instances": [{"a": [1, 2], "tag": {"b64": "!!"}, "n": 1}]},
            400,
            "Unable to base64 decode",
        ),
        (
            "POST",
            "/v1/models/toy:classify",
            {"examples": [{"x": 1.0}]},
            400,
            "Expected classification signature method_name to be tensorflow/serving/classify",
        ),
        (
            "POST",
            "/v1/models/toy:regress",
            {"signature_name": "classify_x", "examples": [{"x": 1.0}]},
            400,
            "Expected regression signature method_name",
        ),
        (
            "POST",
            "/v1/models/toy:classify",
            {"signature_name": "classify_x"},
            400,
            "key 'examples' is expected and was not found",
        ),
        (
            "POST",
            "/v1/models/toy:classify",
            {"signature_name": "classify_x", "examples": []},
            400,
            "'examples' value is an empty array",
        ),
        (
            "POST",
            "/v1/models/toy:classify",
            {"signature_name": "classify_x", "examples": [[1]]},
            400,
            "Example must be JSON object",
        ),
        (
            "POST",
            "/v1/models/toy:classify",
            {"signature_name": "classify_x", "examples": [{"x": [1, "a"]}]},
            400,
            "Unexpected element type in feature: x",
        ),
        (
            "POST",
            "/v1/models/toy:classify",
            {"signature_name": "classify_x", "examples": [{"x": 1}]},
            400,
            "Key: x, Index: 0.  Data types don't match. Data type: int64 but expected type: float",
        ),
        (
            "POST",
            "/v1/models/toy:classify",
            {"signature_name": "classify_x", "examples": [{"y": 1.0}]},
            400,
            "Feature: x (data type: float) is required but could not be found",
        ),
        ("POST", "/v1/models/toy/versions/1/labels/stable:predict", {"instances": [1.0]}, 400, "Malformed request"),
    ],
)
def test_errors_are_json_with_tf_serving_status(url, method, path, body, status, message):
    if method == "GET":
        r = requests.get(url + path, timeout=30)
    else:
        r = post(url, path, body)
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"] == "application/json"
    assert set(r.json()) == {"error"}
    assert message in r.json()["error"]


def test_unknown_paths_outside_the_api_are_json_404(url):
    r = requests.get(url + "/v2/whatever")
    assert r.status_code == 404 and "/v1/models/" in r.json()["error"]


def test_oversized_body_is_413_with_a_hint(tmp_path, toy_versions):
    from tests.serving.conftest import entry, start_server

    server = start_server([entry("toy", toy_versions([1]))], max_request_bytes=1000)
    try:
        big = json.dumps({"instances": [1.0] * 2000})
        r = requests.post(f"http://127.0.0.1:{server.rest_port}/v1/models/toy:predict", data=big, timeout=30)
        assert r.status_code == 413 and "--max_request_bytes" in r.json()["error"]
        chunked = requests.post(
            f"http://127.0.0.1:{server.rest_port}/v1/models/toy:predict", data=iter([big.encode()] * 2), timeout=30
        )
        assert chunked.status_code == 413
        small = requests.post(f"http://127.0.0.1:{server.rest_port}/v1/models/toy:predict", data='{"instances": [1.0]}')
        assert small.json() == {"predictions": [1.5]}
    finally:
        server.stop()


def test_metrics_count_requests_by_model_version_api_and_status(url):
    post(url, "/v1/models/toy/versions/1:predict", {"instances": [1.0]})
    post(url, "/v1/models/toy:predict", {"instances": ["bad"]})
    r = requests.get(url + "/monitoring/prometheus/metrics")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    text = r.text
    assert 'mlpipe_serving_requests_total{api="predict",model="toy",protocol="rest",status="OK",version="1"}' in text
    assert 'api="predict",model="toy",protocol="rest",status="INVALID_ARGUMENT"' in text
    assert "mlpipe_serving_request_latency_seconds_bucket{" in text
    assert 'model="nope"' not in text and 'model="<unknown>"' in text  # names from URLs stay out of labels
    assert 'mlpipe_serving_model_version_available{model="toy",version="2"} 1.0' in text


def test_fast_path_and_tornado_handler_answer_alike(url):
    """A POST with a Content-Length takes serving/rest_fast.py; the same body sent chunked goes through
    tornado.web's handler. Status, body and headers must not depend on which one answered."""
    cases = [
        ("/v1/models/toy:predict", {"instances": [1.0, 2.0]}),
        ("/v1/models/toy/versions/1:predict", {"inputs": [3.0]}),
        ("/v1/models/toy:predict", {"instances": ["bad"]}),
        ("/v1/models/toy:predict", b"{not json"),
        ("/v1/models/nope:predict", {"instances": [1.0]}),
        ("/v1/models/toy:PREDICT", {"instances": [1.0]}),
        ("/v1/models/toy:regress", {"signature_name": "regress_x", "examples": [{"x": 1.0}]}),
    ]
    for path, body in cases:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"X-Request-Id": "same-key-1"}
        fast = requests.post(url + path, data=data, headers=headers, timeout=30)
        slow = requests.post(url + path, data=iter([data]), headers=headers, timeout=30)  # chunked
        assert "Transfer-Encoding" in slow.request.headers and "Content-Length" in fast.request.headers
        assert "Server" in slow.headers and "Server" not in fast.headers  # tornado.web answered only the chunked one
        assert (fast.status_code, fast.content) == (slow.status_code, slow.content), path
        for name in ("Content-Type", "X-Model-Version", "X-Request-Id"):
            assert fast.headers.get(name) == slow.headers.get(name), (path, name)
