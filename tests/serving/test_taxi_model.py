"""The model the pipeline pushes (the shared real run, `first_run`), served through every API it
supports; raw inputs typed by models/features.py, rows from the real taxi data."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import requests
import tensorflow as tf

from models import features
from tests.conftest import taxi_rows
from tests.serving.conftest import REPO, entry, live_serve, start_server


@pytest.fixture(scope="module")
def pushed_base(first_run):
    """<workspace>/serving_model/taxi of the shared run, holding the one version it pushed."""
    workspace, code, out, err = first_run
    assert code == 0, out + err
    return workspace / "serving_model" / "taxi"


@pytest.fixture(scope="module")
def taxi_server(pushed_base):
    server = start_server([entry("taxi", str(pushed_base))])
    yield server
    server.stop()


def raw_instance(row: dict) -> dict:
    return {k: row[k] for k in features.MODEL_FEATURES}


def example_bytes(row: dict) -> bytes:
    """A tf.Example as ExampleGen writes it: each feature with its declared type, missing ones absent."""
    example = tf.train.Example()
    for key in features.MODEL_FEATURES:
        value, kind = row[key], features.COLUMN_TYPES[key]
        if value is None or value == "" or value != value:
            continue
        feature = example.features.feature[key]
        if kind == "float":
            feature.float_list.value.append(value)
        elif kind == "int":
            feature.int64_list.value.append(value)
        else:
            feature.bytes_list.value.append(value.encode())
    return example.SerializeToString()


def test_status_and_signature_types_come_from_features(taxi_server, pushed_base):
    (version,) = os.listdir(pushed_base)
    url = f"http://127.0.0.1:{taxi_server.rest_port}/v1/models/taxi"
    assert requests.get(url).json()["model_version_status"][0]["version"] == version
    sigs = requests.get(url + "/metadata").json()["metadata"]["signature_def"]["signature_def"]
    assert sigs["serving_default"]["method_name"] == "tensorflow/serving/classify"
    dtypes = {k: v["dtype"] for k, v in sigs["serving_raw"]["inputs"].items()}
    expected = {"float": "DT_FLOAT", "int": "DT_INT64", "string": "DT_STRING"}
    assert dtypes == {k: expected[features.COLUMN_TYPES[k]] for k in features.MODEL_FEATURES}


def test_predict_raw_classify_examples_and_b64_agree(taxi_server, taxi_slice):
    url = f"http://127.0.0.1:{taxi_server.rest_port}/v1/models/taxi"
    rows = taxi_rows(taxi_slice, 3)
    assert len(rows) == 3
    raw = requests.post(
        url + ":predict", json={"signature_name": "serving_raw", "instances": [raw_instance(r) for r in rows]}
    )
    assert raw.status_code == 200, raw.text
    by_raw = np.array(raw.json()["predictions"]).reshape(-1)

    # JSON examples as ExampleGen writes them: a missing value ("") is an absent feature, and floats
    # are written as floats (a whole number would be an int64 feature).
    examples = [
        {
            k: (float(r[k]) if features.COLUMN_TYPES[k] == "float" else r[k])
            for k in features.MODEL_FEATURES
            if r[k] != ""
        }
        for r in rows
    ]
    classified = requests.post(url + ":classify", json={"examples": examples})
    assert classified.status_code == 200, classified.text
    by_classify = np.array([row[0][1] for row in classified.json()["results"]])
    assert all(row[0][0] == "" for row in classified.json()["results"])  # scores only: empty labels

    b64 = [{"b64": base64.b64encode(example_bytes(r)).decode()} for r in rows]
    predicted = requests.post(url + ":predict", json={"instances": b64}).json()["predictions"]
    by_b64 = np.array(predicted).reshape(-1)

    assert by_raw.shape == (3,) and np.all((by_raw > 0) & (by_raw < 1))
    np.testing.assert_allclose(by_classify, by_raw, rtol=1e-4)
    np.testing.assert_allclose(by_b64, by_raw, rtol=1e-4)


def test_missing_values_in_the_raw_signature(taxi_server, taxi_slice):
    """ "" for a string and NaN for a float mean missing, as in the CSV; the b64 example omits them."""
    url = f"http://127.0.0.1:{taxi_server.rest_port}/v1/models/taxi"
    rows = taxi_rows(taxi_slice, 3, missing_floats=True)
    assert any(r[k] != r[k] for r in rows for k in features.MODEL_FEATURES)  # a NaN float
    assert any(r[k] == "" for r in rows for k in features.MODEL_FEATURES)  # an empty string
    body = json.dumps({"signature_name": "serving_raw", "instances": [raw_instance(r) for r in rows]})  # NaN token
    raw = requests.post(url + ":predict", data=body)
    assert raw.status_code == 200, raw.text
    b64 = [{"b64": base64.b64encode(example_bytes(r)).decode()} for r in rows]
    by_b64 = requests.post(url + ":predict", json={"instances": b64}).json()["predictions"]
    np.testing.assert_allclose(np.array(by_b64).reshape(-1), np.array(raw.json()["predictions"]).reshape(-1), rtol=1e-4)


def test_taxi_input_mistakes_are_400s(taxi_server, taxi_slice):
    url = f"http://127.0.0.1:{taxi_server.rest_port}/v1/models/taxi"
    instance = raw_instance(taxi_rows(taxi_slice, 1)[0])
    wrong_type = dict(instance, trip_seconds=600.5)
    r = requests.post(url + ":predict", json={"signature_name": "serving_raw", "instances": [wrong_type]})
    assert r.status_code == 400 and "int64" in r.json()["error"]
    community_as_number = dict(instance, pickup_community_area=8)  # a string feature (features.COLUMN_TYPES)
    r = requests.post(url + ":predict", json={"signature_name": "serving_raw", "instances": [community_as_number]})
    assert r.status_code == 400 and "string" in r.json()["error"].lower(), r.text
    missing = {k: v for k, v in instance.items() if k != "fare"}
    r = requests.post(url + ":predict", json={"signature_name": "serving_raw", "instances": [missing]})
    assert r.status_code == 400 and "keys must be equal to" in r.json()["error"]
    # A whole-number fare in an example is an int64 feature, but the model parses fare as float.
    r = requests.post(url + ":classify", json={"examples": [dict(instance, fare=10)]})
    assert r.status_code == 400 and "fare" in r.json()["error"]
    r = requests.post(url + ":predict", json={"instances": [{"b64": base64.b64encode(b"garbage").decode()}]})
    assert r.status_code == 400


# --- the documented requests, against the real `mlpipe serve` on the pushed model ---------------

DOCS = ["README.md", "docs/serving.md"]


def documented_requests(text: str) -> list[tuple[str, str]]:
    """(path, body) of every `curl ... -d BODY` in the console blocks of a Markdown text.

    A body that uses $EX gets it from the block's own `EX=$(python -c '...')` line, run here.
    """
    found = []
    for block in re.findall(r"```console\n(.*?)```", text, re.S):
        ex = re.search(r"EX=\$\(python -c '(.*?)'\)", block, re.S)
        for path, single, double in re.findall(
            r"curl [^\n]*?(/v1/models/\S+) -d (?:'(.*?)'|\"(.*?)\")(?:\n|$)", block, re.S
        ):
            body = single or double.replace('\\"', '"')
            if "$EX" in body:
                program = ex.group(1)
                value = subprocess.run(
                    [sys.executable, "-c", program], capture_output=True, text=True, check=True
                ).stdout.strip()
                body = body.replace("$EX", value)
            found.append((path, body))
    return found


def test_mlpipe_serve_answers_every_documented_request_with_the_pushed_model(first_run, pushed_base):
    workspace = first_run[0]
    requests_in_docs = {doc: documented_requests(open(os.path.join(REPO, doc)).read()) for doc in DOCS}
    assert len(requests_in_docs["README.md"]) >= 1 and len(requests_in_docs["docs/serving.md"]) >= 3
    env = dict(os.environ, MLPIPE_WORKSPACE=str(workspace))
    # No model flags: `mlpipe serve` serves the workspace's pushed model, as the README says.
    with live_serve("--file_system_poll_wait_seconds", "0", env=env) as server:
        (version,) = os.listdir(pushed_base)
        status = requests.get(server.url("/v1/models/taxi"), timeout=30).json()
        assert status["model_version_status"][0] == {
            "version": version,
            "state": "AVAILABLE",
            "status": {"error_code": "OK", "error_message": ""},
        }
        for doc, pairs in requests_in_docs.items():
            for path, body in pairs:
                r = requests.post(server.url(path), data=body, timeout=60)
                assert r.status_code == 200, (doc, path, body, r.text)
                answer = r.json()
                if "predictions" in answer:
                    scores = np.array(answer["predictions"]).reshape(-1)
                else:
                    assert [[label for label, _ in result] for result in answer["results"]] == [[""]]
                    scores = np.array([score for result in answer["results"] for _, score in result])
                assert scores.size == 1 and 0 < scores[0] < 1, (doc, path, answer)
