"""Auth, the serve command (flags, --help, workspace default, SIGTERM), and import hygiene."""

from __future__ import annotations

import os
import subprocess
import sys

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving import cli
from tests.serving import toy_model
from tests.serving.conftest import entry, listening_addresses, live_serve, start_server

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_bearer_token_is_required_on_rest_and_grpc(toy_versions):
    server = start_server([entry("toy", toy_versions([1]))], auth_token="s3cret")
    url = f"http://127.0.0.1:{server.rest_port}/v1/models/toy:predict"
    try:
        r = requests.post(url, json={"instances": [1.0]})
        assert r.status_code == 401 and "Authorization: Bearer" in r.json()["error"]
        assert r.headers["WWW-Authenticate"] == "Bearer"
        wrong = requests.post(url, json={"instances": [1.0]}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = requests.post(url, json={"instances": [1.0]}, headers={"Authorization": "Bearer s3cret"})
        assert ok.json() == {"predictions": [1.5]}
        metrics = requests.get(f"http://127.0.0.1:{server.rest_port}/monitoring/prometheus/metrics")
        assert metrics.status_code == 401

        request = predict_pb2.PredictRequest()
        request.model_spec.name = "toy"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([1.0], np.float32)))
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            with pytest.raises(grpc.RpcError) as e:
                stub.Predict(request, timeout=30)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            response = stub.Predict(request, timeout=30, metadata=[("authorization", "Bearer s3cret")])
            assert tf.make_ndarray(response.outputs["y"]).tolist() == [1.5]
    finally:
        server.stop()


def test_mlpipe_serve_binds_loopback_by_default(toy_cache, tmp_path):
    base = tmp_path / "toy"
    base.mkdir()
    toy_model.copy_version(toy_cache, str(base), 1)
    # No --rest_api_host / --grpc_host: the defaults of the real command.
    with live_serve(
        "--model_name", "toy", "--model_base_path", str(base), "--file_system_poll_wait_seconds", "0"
    ) as server:
        assert listening_addresses(server.rest_port) == {"127.0.0.1"}
        assert listening_addresses(server.grpc_port) == {"127.0.0.1"}
        r = requests.post(server.url("/v1/models/toy:predict"), json={"instances": [4.0]}, timeout=30)
        assert r.json() == {"predictions": [3.0]}


def _parser():
    """The real `mlpipe` parser (pipeline/cli/__init__.py), where `serve` is registered with its own --workspace."""
    from pipeline.cli import build_parser

    return build_parser()


def test_add_parser_registers_serve_with_defaults_and_help(capsys):
    args = _parser().parse_args(["serve"])
    assert args.func is cli.run
    assert (args.port, args.rest_api_port, args.rest_api_host, args.grpc_host) == (8500, 8501, "127.0.0.1", "127.0.0.1")
    with pytest.raises(SystemExit) as e:
        _parser().parse_args(["serve", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--model_config_file", "--enable_batching", "--file_system_poll_wait_seconds", "--auth_token"):
        assert flag in out


def test_options_default_to_the_workspace_pushed_model(tmp_path, monkeypatch):
    monkeypatch.delenv("MLPIPE_WORKSPACE", raising=False)
    args = _parser().parse_args(
        ["serve", "--workspace", str(tmp_path), "--enable_batching", "--version_labels", "stable=3"]
    )
    options = cli.build_options(args)
    (model,) = options.models
    assert model.name == "taxi"
    assert model.base_path == str(tmp_path / "serving_model" / "taxi")
    assert model.label_map == {"stable": 3}
    assert options.batching is not None and options.log_options.root == str(tmp_path / "request_logs")


def test_model_config_file_in_tf_serving_text_format(tmp_path):
    config = tmp_path / "models.config"
    config.write_text(
        """model_config_list {
             config { name: "a" base_path: "models/a" model_platform: "tensorflow"
                      model_version_policy { latest { num_versions: 2 } } }
             config { name: "b" base_path: "/abs/b" version_labels { key: "canary" value: 4 }
                      logging_config { sampling_config { sampling_rate: 0.5 } } }
           }"""
    )
    args = _parser().parse_args(["serve", "--workspace", str(tmp_path), "--model_config_file", str(config)])
    a, b = cli.build_options(args).models
    assert (a.name, a.base_path, a.policy.describe()) == ("a", str(tmp_path / "models" / "a"), "latest:2")
    assert (b.base_path, b.label_map, b.log_sampling_rate) == ("/abs/b", {"canary": 4}, 0.5)


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--version_policy", "newest"], "--version_policy"),
        (["--batching_parameters_file", "x"], "needs --enable_batching"),
        (["--enable_batching", "--batching_parameters_file", "/nonexistent"], "cannot read it"),
        (["--model_config_file", "/nonexistent"], "cannot read /nonexistent"),
        (["--rest_api_num_threads", "0"], "must be positive"),
    ],
)
def test_bad_flags_exit_2_with_a_message(tmp_path, capsys, flags, message):
    args = _parser().parse_args(["serve", "--workspace", str(tmp_path), *flags])
    assert args.func(args) == 2
    assert message in capsys.readouterr().err


def test_python_m_serving_serves_the_workspace_model_and_stops_on_sigterm(toy_cache, tmp_path):
    base = tmp_path / "ws" / "serving_model" / "taxi"
    base.mkdir(parents=True)
    toy_model.copy_version(toy_cache, str(base), 1)
    env = dict(os.environ, MLPIPE_WORKSPACE=str(tmp_path / "ws"))
    with live_serve(cwd=str(tmp_path), env=env, command=(sys.executable, "-m", "serving")) as server:
        r = requests.post(server.url("/v1/models/taxi:predict"), json={"instances": [4.0]}, timeout=30)
        assert r.json() == {"predictions": [3.0]}
        code = server.stop()  # SIGTERM
    assert code == 0, server.output
    assert "server stopped" in server.output


def test_serving_imports_no_tfx_orchestration():
    code = (
        "import sys, serving.cli, serving.server, serving.request_log, serving.grpc_service\n"
        "bad = [m for m in sys.modules if m == 'tfx' or m.startswith('tfx.') or m in ('pipeline.dag.pipeline', 'pipeline.ops.runner')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)
