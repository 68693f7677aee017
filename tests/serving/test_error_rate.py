"""The served version's error rate: the server counts answered/failed requests per version, the monitor judges them."""

from __future__ import annotations

import dataclasses
import json
import shutil

import requests

from serving.config import VersionPolicy
from serving.outcomes import outcome_files, read_outcomes
from serving.service import LogOptions
from tests.serving import toy_model
from tests.serving.conftest import entry, start_server


def test_a_version_whose_requests_fail_is_rolled_back_on_its_error_rate(toy_cache, tmp_path):
    import grpc
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from pipeline import config as config_lib
    from pipeline.monitoring import auto_rollback

    base = config_lib.load(None, {"workspace": str(tmp_path / "ws")})
    models = base.serving_model_dir
    models.mkdir(parents=True)
    for v in (1, 2):
        toy_model.copy_version(toy_cache, str(models), v)
    server = start_server(
        [entry(base.model_name, str(models), VersionPolicy("all"))],
        log_options=LogOptions(root=str(base.request_log_root), sampling_rate=0.0),
    )
    url = f"http://127.0.0.1:{server.rest_port}/v1/models/{base.model_name}"
    try:
        # Version 2 (the highest, served by default) mostly gets inputs its signature cannot take: 400 after resolution.
        failed = [requests.post(f"{url}:predict", json={"instances": ["not a number"]}) for _ in range(3)]
        failed.append(requests.post(f"{url}:predict", json={"instances": [1.0]}))
        answered = [requests.post(f"{url}/versions/1:predict", json={"instances": [1.0]}) for _ in range(4)]
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:  # gRPC is counted too
            request = predict_pb2.PredictRequest()
            request.model_spec.name = base.model_name
            request.model_spec.version.value = 1
            request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([7.0], np.float32)))
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
        unknown = requests.post(f"{url}/versions/9:predict", json={"instances": [1.0]})  # the client's: not counted
    finally:
        server.stop()  # writes the last deltas
    assert [r.status_code for r in failed] == [400, 400, 400, 200] and {r.status_code for r in answered} == {200}
    assert unknown.status_code == 404
    assert [f.rsplit("/", 1)[1].startswith("outcomes-") for f in outcome_files(str(base.request_log_dir))] == [True]
    totals = {}
    for line in read_outcomes(str(base.request_log_dir)):
        ok, bad = totals.get(line["version"], (0, 0))
        totals[line["version"]] = (ok + line["ok"], bad + line["failed"])
    assert totals == {1: (5, 0), 2: (1, 3)}

    def with_rule(**monitoring):
        return dataclasses.replace(base, monitoring=dataclasses.replace(base.monitoring, **monitoring))

    series = auto_rollback.error_rate_series(with_rule(min_error_requests=4, max_error_rate=0.1))
    assert [(e["version"], e["requests"], e["error_rate"], e["passed"]) for e in series] == [
        (1, 5, 0.0, True),
        (2, 4, 0.75, False),
    ]
    # Fewer requests than monitoring.min_error_requests: not judged, no rollback.
    few = auto_rollback.rollback_decision(with_rule(rollback_after_windows=1, min_error_requests=5), 0)
    assert few["failing"] == []
    decision = auto_rollback.rollback_decision(with_rule(rollback_after_windows=1, min_error_requests=4), 0)
    assert [(f["version"], f["check"]) for f in decision["failing"]] == [(2, "error_rate")]
    assert "failed error_rate in 1 consecutive window(s)" in decision["reason"]
    # A high enough monitoring.max_error_rate passes the same window.
    tolerant = auto_rollback.rollback_decision(
        with_rule(rollback_after_windows=1, min_error_requests=4, max_error_rate=0.8), 0
    )
    assert tolerant["failing"] == []
    # `mlpipe monitor --history` shows the same windows from the server's outcome files (text and --json).
    from tests.conftest import run_cli

    config = tmp_path / "mlpipe.toml"
    config.write_text(
        f'workspace = "{base.workspace_path}"\n[monitoring]\nmax_error_rate = 0.1\nmin_error_requests = 4\n'
    )
    code, out, _ = run_cli("monitor", "--config", str(config), "--history", "--log-dir", str(base.request_log_root))
    assert code == 0 and "ERROR RATE WINDOW SINCE" in out
    assert [line.split()[1:] for line in out.splitlines() if line.endswith(("ok", "(> 0.1000)"))] == [
        ["1", "5", "0", "0.0000", "ok"],
        ["2", "4", "3", "0.7500", "FAIL", "(>", "0.1000)"],
    ]
    doc = json.loads(run_cli("monitor", "--config", str(config), "--history", "--json")[1])
    assert doc["error_rate"] == series
    # The model's logs under another root (`mlpipe monitor --log-dir`): the rollback rule reads the outcome files there.
    moved = tmp_path / "elsewhere" / base.model_name
    shutil.move(str(base.request_log_dir), str(moved))
    decision = auto_rollback.rollback_decision(with_rule(rollback_after_windows=1, min_error_requests=4), 0, moved)
    assert [(f["version"], f["check"]) for f in decision["failing"]] == [(2, "error_rate")]
