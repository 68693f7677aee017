"""The model the pipeline pushes: served from a workspace layout, through every API it supports."""

from __future__ import annotations

import base64
import os
import shutil

import numpy as np
import pytest
import requests
from tests.serving import taxi_export
from tests.serving.conftest import entry, start_server


@pytest.fixture(scope="session")
def taxi_export_dir(tmp_path_factory):
    return taxi_export.export(str(tmp_path_factory.mktemp("taxi") / "export"))


@pytest.fixture(scope="module")
def taxi_server(taxi_export_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("ws") / "serving_model" / "taxi"
    base.mkdir(parents=True)
    shutil.copytree(taxi_export_dir, os.path.join(base, "1700000000"))  # Pusher versions are timestamps
    server = start_server([entry("taxi", str(base))])
    yield server
    server.stop()


def test_status_and_signatures(taxi_server):
    url = f"http://127.0.0.1:{taxi_server.rest_port}/v1/models/taxi"
    assert requests.get(url).json()["model_version_status"][0]["version"] == "1700000000"
    sigs = requests.get(url + "/metadata").json()["metadata"]["signature_def"]["signature_def"]
    assert sigs["serving_default"]["method_name"] == "tensorflow/serving/classify"
    assert sigs["serving_raw"]["inputs"]["company"]["dtype"] == "DT_STRING"


def test_predict_raw_classify_examples_and_b64_agree(taxi_server):
    url = f"http://127.0.0.1:{taxi_server.rest_port}/v1/models/taxi"
    rows = taxi_export.rows()[:3]
    raw = requests.post(url + ":predict", json={"signature_name": "serving_raw", "instances": [taxi_export.raw_instance(r) for r in rows]})
    assert raw.status_code == 200, raw.text
    by_raw = np.array(raw.json()["predictions"]).reshape(-1)

    examples = [{k: v for k, v in r.items() if k != "tips"} for r in rows]
    classified = requests.post(url + ":classify", json={"examples": examples})
    assert classified.status_code == 200, classified.text
    by_classify = np.array([row[0][1] for row in classified.json()["results"]])
    assert all(row[0][0] == "" for row in classified.json()["results"])  # scores only: empty labels

    b64 = [{"b64": base64.b64encode(taxi_export.example_bytes(r)).decode()} for r in rows]
    predicted = requests.post(url + ":predict", json={"instances": b64}).json()["predictions"]
    by_b64 = np.array(predicted).reshape(-1)

    assert by_raw.shape == (3,) and np.all((by_raw > 0) & (by_raw < 1))
    np.testing.assert_allclose(by_classify, by_raw, rtol=1e-4)
    np.testing.assert_allclose(by_b64, by_raw, rtol=1e-4)


def test_taxi_input_mistakes_are_400s(taxi_server):
    url = f"http://127.0.0.1:{taxi_server.rest_port}/v1/models/taxi"
    instance = taxi_export.raw_instance(taxi_export.rows()[0])
    wrong_type = dict(instance, trip_seconds=600.5)
    r = requests.post(url + ":predict", json={"signature_name": "serving_raw", "instances": [wrong_type]})
    assert r.status_code == 400 and "int64" in r.json()["error"]
    missing = {k: v for k, v in instance.items() if k != "fare"}
    r = requests.post(url + ":predict", json={"signature_name": "serving_raw", "instances": [missing]})
    assert r.status_code == 400 and "keys must be equal to" in r.json()["error"]
    # A whole-number fare in an example is an int64 feature, but the model parses fare as float.
    example = {k: v for k, v in taxi_export.rows()[0].items() if k != "tips"}
    r = requests.post(url + ":classify", json={"examples": [dict(example, fare=10)]})
    assert r.status_code == 400 and "fare" in r.json()["error"]
    r = requests.post(url + ":predict", json={"instances": [{"b64": base64.b64encode(b"garbage").decode()}]})
    assert r.status_code == 400
