"""Property: malformed bodies at every endpoint get a 4xx with a JSON error, never a 5xx or a hang."""

from __future__ import annotations

import json

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ENDPOINTS = [
    "/v1/models/toy:predict",
    "/v1/models/toy/versions/1:predict",
    "/v1/models/toy/labels/stable:predict",
    "/v1/models/toy:classify",
    "/v1/models/toy:regress",
]
SIGNATURES = ["serving_default", "multi", "classify_x", "regress_x", "nope", ""]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.just({"b64": "AAEC"}),
    st.just({"b64": "!"}),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)
keys = st.sampled_from(["instances", "inputs", "examples", "context", "signature_name", "x", "a", "tag", "n"])
documents = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "signature_name": st.one_of(st.sampled_from(SIGNATURES), values),
            "instances": values,
            "inputs": values,
            "examples": st.one_of(
                values, st.lists(st.dictionaries(st.sampled_from(["x", "a", "y"]), values, max_size=3), max_size=3)
            ),
            "context": values,
        },
    ),
    st.dictionaries(keys, values, max_size=4),
    values,
)
raw_bodies = st.one_of(
    documents.map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=64),
    documents.map(lambda d: json.dumps(d).encode()[:-1]),  # truncated JSON
    st.just(b"[" * 5000 + b"]" * 5000),  # deep nesting
)


@pytest.fixture(scope="module")
def session(toy_module_server):
    s = requests.Session()
    s.base = f"http://127.0.0.1:{toy_module_server.rest_port}"
    yield s
    s.close()


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(endpoint=st.sampled_from(ENDPOINTS), body=raw_bodies)
def test_malformed_bodies_get_4xx_json_errors(session, endpoint, body):
    r = session.post(session.base + endpoint, data=body, timeout=30)
    if r.status_code == 200:
        return  # a body that happens to be valid
    assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
    assert set(r.json()) == {"error"} and r.json()["error"]


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.text(alphabet="/:abcv0123456789%._-", max_size=40))
def test_arbitrary_paths_under_v1_get_4xx(session, path):
    for method in ("GET", "POST"):
        r = session.request(method, session.base + "/v1/" + path, data=b"{}", timeout=30)
        # The alphabet spells no model name (the only one served is "toy"), so no path names a servable:
        # every answer is a client error.
        assert 400 <= r.status_code < 500, (method, path, r.status_code, r.text)
        assert r.headers["Content-Type"] == "application/json" and set(r.json()) == {"error"} and r.json()["error"]
