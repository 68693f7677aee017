"""On the real pushed taxi model: mlmd_uuid, the lineage endpoint, label moves confirmed by a live server,
label history (including rollbacks), and warm-up requests written at push from logged traffic."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import requests

from tests.conftest import FAST_FLAGS, run_cli
from tests.serving.conftest import start_server
from tests.test_monitor import _example, training_rows
from tests.test_registry import cli_json, copy_workspace, version_dirs

REPO = Path(__file__).resolve().parent.parent


def test_push_stamps_lineage_and_labels_move_through_the_server(first_run, taxi_slice, tmp_path):
    from pipeline.metadata import queries as metadata
    from serving.config import read_model_config_file
    from serving.service import LogOptions

    assert first_run[1] == 0, first_run[2] + first_run[3]
    ws = copy_workspace(first_run, tmp_path / "ws")
    base = ws / "serving_model" / "taxi"
    (v1,) = version_dirs(ws)

    # assets.extra/mlmd_uuid, and the same id on the PushedModel in MLMD
    uuid = (base / str(v1) / "assets.extra" / "mlmd_uuid").read_text()
    store = metadata.open_store(ws / "metadata.sqlite")
    pushed = [a for a in store.get_artifacts_by_type("PushedModel") if "mlmd_uuid" in a.custom_properties]
    assert [a.custom_properties["mlmd_uuid"].string_value for a in pushed] == [uuid]
    assert not (base / str(v1) / "assets.extra" / "tf_serving_warmup_requests").exists()  # no traffic logged yet

    cli_json("label", "set", "stable", str(v1), "--workspace", str(ws), "--reason", "first blessed model")
    config = str(ws / "serving_model" / "models.config")
    server = start_server(
        read_model_config_file(config),
        model_config_file=config,
        model_config_file_poll_wait_seconds=0.1,
        log_options=LogOptions(root=str(ws / "request_logs"), sampling_rate=1.0, seed=0),
    )
    url = f"http://127.0.0.1:{server.rest_port}"
    try:
        # The answer says which version answered; the lineage endpoint is `mlpipe lineage --json`.
        bodies = [
            {"instances": [{"b64": base64.b64encode(_example(row).SerializeToString()).decode()}]}
            for row in training_rows(ws)[:4]
        ]
        for body in bodies:
            r = requests.post(f"{url}/v1/models/taxi/labels/stable:predict", timeout=30, json=body)
            assert r.status_code == 200 and r.headers["X-Model-Version"] == str(v1), r.text
        served = requests.get(f"{url}/v1/models/taxi/versions/{v1}/lineage", timeout=60).json()
        assert served == cli_json("lineage", str(v1), "--workspace", str(ws))
        missing = requests.get(f"{url}/v1/models/taxi/versions/1/lineage", timeout=60)
        assert missing.status_code == 404 and "never pushed" in missing.json()["error"]
        page = requests.get(f"{url}/monitoring/prometheus/metrics").text
        assert f'mlpipe_serving_mlmd_map{{mlmd_uuid="{uuid}",model_name="taxi",version="{v1}"}} 1.0' in page

        # A label move the server confirms (loaded and warmed up before the label moved).
        moved = cli_json(
            "label", "set", "canary", str(v1), "--workspace", str(ws), "--reason", "try it", "--wait-server", url
        )
        assert moved["move"]["server_confirmed_seconds"] >= 0 and moved["move"]["to_version"] == v1
        r = requests.post(f"{url}/v1/models/taxi/labels/canary:predict", timeout=30, json=bodies[0])
        assert r.status_code == 200 and r.headers["X-Model-Version"] == str(v1)
    finally:
        server.stop()

    # A new push after logged traffic carries warm-up requests from it (Evaluator and Pusher re-run).
    code, out, err = run_cli(
        "run", "--workspace", str(ws), "--data-root", str(taxi_slice), *FAST_FLAGS, "--value-threshold", "0.5"
    )
    assert code == 0, out + err
    v1_, v2 = version_dirs(ws)
    warmup = base / str(v2) / "assets.extra" / "tf_serving_warmup_requests"
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    records = [prediction_log_pb2.PredictionLog.FromString(r) for r in tf.compat.v1.io.tf_record_iterator(str(warmup))]
    assert len(records) == 5 and all(
        r.predict_log.request.model_spec.signature_name in ("", "serving_default") for r in records
    )  # the 4 stable requests and the canary one
    assert not any(r.predict_log.request.model_spec.HasField("version") for r in records)

    # Rollback goes through the same path: the labels on the replaced version follow, all in the history.
    cli_json("label", "set", "stable", str(v2), "--workspace", str(ws), "--reason", "promote v2")
    result = cli_json("rollback", "--to", str(v1), "--reason", "v2 regressed", "--workspace", str(ws))
    v3 = result["new_version"]
    history = cli_json("label", "history", "--workspace", str(ws))["moves"]
    assert [(m["label"], m["from_version"], m["to_version"]) for m in history] == [
        ("stable", v2, v3),
        ("(latest)", v2, v3),
        ("stable", v1, v2),
        ("canary", None, v1),
        ("stable", None, v1),
    ]
    assert history[0]["reason"] == f"rollback to version {v1}: v2 regressed" and history[0]["user"]
    assert cli_json("label", "list", "--workspace", str(ws))["labels"] == {"canary": v1, "stable": v3}
    code, out, _ = run_cli("label", "history", "--workspace", str(ws), "--label", "canary")
    assert code == 0 and f"canary     - -> {v1}  try it" in out


def test_the_lineage_endpoint_imports_no_tfx(first_run):
    ws = first_run[0]
    (v1,) = version_dirs(ws)[:1]
    code = (
        "import sys, json; from serving.lineage import version_lineage; "
        f"d = version_lineage('taxi', {str(ws / 'serving_model' / 'taxi')!r}, {v1}); "
        "bad = sorted(m for m in sys.modules if m == 'tfx' or m.startswith('tfx.')); "
        "print(json.dumps({'version': d['version'], 'tfx': bad}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"version": v1, "tfx": []}
