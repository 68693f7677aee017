"""`mlpipe monitor` on synthetic request logs of the version `first_run` pushed (the pipeline is not re-run).

Traffic is drawn from the training split the version was trained on (the Examples artifact in
first_run's workspace) and written with serving/request_log.py's writer, as `mlpipe serve` does.
"""

from __future__ import annotations

import json
import random
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli

HOUR = 3600


# --- Synthetic traffic -------------------------------------------------------------------------


def training_rows(workspace: Path, split: str = "train") -> list[dict]:
    """The split's raw rows, decoded from the Examples artifact of the run (feature -> (value or None, kind))."""
    import tensorflow as tf
    from tensorflow.core.example import example_pb2

    files = sorted((workspace / "pipeline_root" / "CsvExampleGen" / "examples").glob(f"*/Split-{split}/*.gz"))
    assert files, f"first_run produced no {split} examples"
    rows = []
    for raw in tf.data.TFRecordDataset([str(f) for f in files], compression_type="GZIP").as_numpy_iterator():
        example = example_pb2.Example.FromString(raw)
        row = {}
        for name, feature in example.features.feature.items():
            kind = feature.WhichOneof("kind")
            values = list(getattr(feature, kind).value) if kind else []
            row[name] = (values[0] if values else None, kind)
        rows.append(row)
    return rows


def _example(row: dict):
    from tensorflow.core.example import example_pb2

    example = example_pb2.Example()
    for name, (value, kind) in row.items():
        if name == "tips" or value is None:
            continue  # clients do not send the label; a missing value is an absent feature
        getattr(example.features.feature[name], kind).value.append(value)
    return example


def _predict_request(rows: list[dict], kinds: dict[str, str]):
    """A `serving_raw` PredictRequest: one tensor per model feature; '' / NaN mark missing values."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    from models import features

    request = predict_pb2.PredictRequest()
    request.model_spec.signature_name = "serving_raw"
    for name in features.MODEL_FEATURES:
        kind = kinds.get(name, "bytes_list")  # never present in the data: send missing strings
        if kind == "bytes_list":
            values = np.array([r.get(name, (None,))[0] or b"" for r in rows], dtype=object)
        elif kind == "float_list":
            values = np.array([np.nan if r.get(name, (None,))[0] is None else r[name][0] for r in rows], np.float32)
        else:
            values = np.array([r[name][0] for r in rows], np.int64)  # callers send only complete int rows
        request.inputs[name].CopyFrom(tf.make_tensor_proto(values))
    return request


def write_traffic(
    log_dir: Path, rows: list[dict], version: int, start: float, seconds: float, seed: int = 0, batch: int = 8
) -> int:
    """Logs `rows` as classify and serving_raw predict requests spread over [start, start + seconds)."""
    from tensorflow_serving.apis import classification_pb2, model_pb2, predict_pb2

    from models import features
    from serving.request_log import RequestLogger, make_log

    rng = random.Random(seed)
    kinds = {name: kind for row in rows for name, (value, kind) in row.items() if value is not None}
    logger = RequestLogger(str(log_dir), sampling_rate=1.0)
    requests = 0
    for i in range(0, len(rows), batch):
        chunk = rows[i : i + batch]
        spec = model_pb2.ModelSpec(name="taxi")
        spec.version.value = version
        ints_present = all(
            r.get(n, (None,))[0] is not None
            for r in chunk
            for n in features.MODEL_FEATURES
            if kinds.get(n) == "int64_list"
        )
        if ints_present and requests % 2:
            spec.signature_name = "serving_raw"
            record = make_log("predict_log", spec, _predict_request(chunk, kinds), predict_pb2.PredictResponse(), 1.0)
        else:
            spec.signature_name = "serving_default"
            request = classification_pb2.ClassificationRequest()
            request.input.example_list.examples.extend(_example(r) for r in chunk)
            record = make_log("classify_log", spec, request, classification_pb2.ClassificationResponse(), 1.0)
        record.log_metadata.timestamp_secs = int(start + rng.random() * seconds)
        logger.write(record)
        requests += 1
    logger.close()
    return requests


def shifted(
    rows: list[dict], fraction_new_payment: float = 0.4, miles_factor: float = 6.0, seed: int = 1
) -> list[dict]:
    """trip_miles multiplied by `miles_factor`; a share of payment_type set to a value never seen in training."""
    rng = random.Random(seed)
    out = []
    for row in rows:
        row = dict(row)
        miles, kind = row.get("trip_miles", (None, "float_list"))
        if miles is not None:
            row["trip_miles"] = (miles * miles_factor + 3.0, kind)
        if rng.random() < fraction_new_payment:
            row["payment_type"] = (b"Crypto", "bytes_list")
        out.append(row)
    return out


# --- Fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(first_run, tmp_path_factory):
    """(monitor workspace, pushed version, training rows, now): a copy of first_run's MLMD and serving dir.

    The copy keeps first_run read-only; artifact URIs in MLMD still point at first_run's files.
    """
    workspace, code, out, err = first_run
    assert code == 0, err
    copy = tmp_path_factory.mktemp("monitor-ws")
    shutil.copy2(workspace / "metadata.sqlite", copy / "metadata.sqlite")
    shutil.copytree(workspace / "serving_model", copy / "serving_model")
    versions = sorted(int(p.name) for p in (copy / "serving_model" / "taxi").iterdir() if p.name.isdigit())
    assert versions, "first_run pushed nothing"
    rows = training_rows(workspace)
    random.Random(7).shuffle(rows)
    return copy, versions[-1], rows, time.time()


def _monitor(workspace: Path, *argv: str):
    code, out, err = run_cli("monitor", "--workspace", str(workspace), *argv)
    return code, out, err


def _window(now: float, hours_ago: float, hours: float = 1.0) -> list[str]:
    def iso(t):
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))

    return ["--since", iso(now - hours_ago * HOUR), "--until", iso(now - (hours_ago - hours) * HOUR)]


# --- Tests -------------------------------------------------------------------------------------


def test_training_distribution_raises_no_alert(served, tmp_path):
    workspace, version, rows, now = served
    log_dir = workspace / "request_logs" / "taxi"
    # Two windows (10-9 h ago and 9-8 h ago) of traffic drawn from the training data: no skew, no drift.
    write_traffic(log_dir, rows[:700], version, now - 10 * HOUR, HOUR, seed=1)
    write_traffic(log_dir, rows[700:1400], version, now - 9 * HOUR, HOUR, seed=2)
    code, out, err = _monitor(workspace, *_window(now, 9), "--json")
    assert code == 0, (out, err)
    report = json.loads(out)
    assert report["alert"] is False and report["alerts"] == []
    assert report["versions"][0]["version"] == version and report["versions"][0]["requests"] > 50
    assert report["previous_window"]["requests"] > 50
    checks = {(c["check"], c["feature"]): c for c in report["checks"] if c["slice"] is None}
    # Every model feature is scored in both checks, alerting or not: a distance and its evidence.
    from models import features

    for check in ("skew", "drift"):
        assert {f for (c, f) in checks if c == check} >= set(features.MODEL_FEATURES)
    assert checks[("skew", "payment_type")]["statistic"] in ("CHI2_LINF", "NEW_VALUES")
    assert checks[("skew", "trip_miles")]["statistic"] in ("KS", "MISSING")
    for c in report["checks"]:
        assert 0 <= c["distance"] <= 1 and 0 <= c["p_value"] <= 1 and c["band"] > 0
        assert c["alert"] is False
    # The baseline is the training window (a sample of its train split), not a statistics file.
    assert report["versions"][0]["baseline_rows"] == report["versions"][0]["training_rows"] > 1000
    assert report["anomalies"] == []
    # The table says so too.
    code, out, _ = _monitor(workspace, *_window(now, 9))
    assert code == 0 and out.strip().endswith("no alert")


def test_shifted_traffic_alerts_on_exactly_those_features(served, tmp_path):
    workspace, version, rows, now = served
    log_dir = workspace / "request_logs" / "taxi"
    write_traffic(log_dir, rows[:600], version, now - 6 * HOUR, HOUR, seed=3)  # previous window: normal
    write_traffic(log_dir, shifted(rows[600:1200]), version, now - 5 * HOUR, HOUR, seed=4)
    page = tmp_path / "report.html"
    code, out, err = _monitor(workspace, *_window(now, 5), "--json", "--html", str(page))
    assert code == 3, (out, err)
    report = json.loads(out)
    alerting = {(c["check"], c["feature"]) for c in report["checks"] if c["alert"]}
    assert alerting == {
        ("skew", "trip_miles"),
        ("skew", "payment_type"),
        ("drift", "trip_miles"),
        ("drift", "payment_type"),
    }
    assert report["alerts"] == [
        "anomaly:payment_type",
        "drift:payment_type",
        "drift:trip_miles",
        "skew:payment_type",
        "skew:trip_miles",
    ]
    # The unseen category is also a schema anomaly of the serving data (the label is not required).
    assert {a["feature"] for a in report["anomalies"]} == {"payment_type"}
    # One alerting window is not a persisting alert: --retrain would wait (monitoring.retrain_after_windows 2).
    assert report["retrain_wanted"] is False and report["retrain_gate"]["windows"] == 2
    html = page.read_text()
    # Every feature against its noise band, alerting or not; the alerting ones' distributions.
    assert html.count("<th>noise band</th>") == 2  # the skew and the drift table
    assert all(f">{name}<" in html for name in ("fare", "company", "trip_seconds"))
    assert "Crypto" in html and "Slices that alerted" in html and "Prediction drift" in html
    # Table: the verdicts, distances and evidence.
    code, out, _ = _monitor(workspace, *_window(now, 5))
    assert code == 3
    alert_lines = [line.split() for line in out.splitlines() if " ALERT " in line]
    assert alert_lines and all(x[2] in ("trip_miles", "payment_type") for x in alert_lines)
    assert {x[2] for x in alert_lines} == {"trip_miles", "payment_type"}


def test_per_feature_threshold_from_config(served, tmp_path):
    workspace, version, rows, now = served
    log_dir = workspace / "request_logs" / "taxi"
    write_traffic(log_dir, shifted(rows[:600], fraction_new_payment=0.2), version, now - 3 * HOUR, HOUR, seed=5)
    config = tmp_path / "mlpipe.toml"
    # A minimum distance no shift reaches for trip_miles alone: only payment_type alerts (no previous
    # window: skew only), although trip_miles' shift is far beyond its noise band.
    config.write_text("[monitoring]\nfeature_thresholds = {trip_miles = 0.99}\n")
    code, out, err = _monitor(workspace, "--config", str(config), *_window(now, 3), "--json")
    assert code == 3, err
    report = json.loads(out)
    assert report["alerts"] == ["anomaly:payment_type", "skew:payment_type"]
    miles = next(c for c in report["checks"] if c["feature"] == "trip_miles" and c["slice"] is None)
    assert miles["p_value"] < miles["p_threshold"] and miles["distance"] > miles["band"] and not miles["alert"]
    assert (
        "0 example(s) in the previous window, 600 in this one (monitoring.min_examples 100): drift not checked"
        in report["notes"]
    )


class _Hook(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        _Hook.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_alert_hooks_receive_the_json_and_retrain_starts(served, tmp_path):
    workspace, version, rows, now = served
    log_dir = workspace / "request_logs" / "taxi"
    write_traffic(log_dir, shifted(rows[:400]), version, now - 14 * HOUR, HOUR, seed=6)
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    captured = tmp_path / "alert.json"
    config = tmp_path / "mlpipe.toml"
    config.write_text(
        f'[monitoring]\nretrain_after_windows = 1\nalert_command = "cat > {captured}"\n'
        f'webhook_url = "http://127.0.0.1:{server.server_port}/alert"\n'
    )
    try:
        code, out, err = _monitor(workspace, "--config", str(config), *_window(now, 14), "--json", "--retrain")
    finally:
        server.shutdown()
    assert code == 3, err
    report = json.loads(out)
    assert report["notified"]["command"]["ok"] and report["notified"]["webhook"] == {"status": 204, "ok": True}
    for received in (json.loads(captured.read_text()), _Hook.received[-1]):
        assert received["alert"] is True and "skew:trip_miles" in received["alerts"]
        assert received["window"] == report["window"]
    # retrain ran as a subprocess on the same workspace and config; the default data root is not a span
    # layout, so it refuses at once (exit 2) without touching the workspace.
    assert report["retrain"]["command"][:4] == ["-m", "pipeline", "retrain", "--workspace"]
    assert report["retrain"]["command"][4] == str(workspace.resolve())
    assert report["retrain"]["exit_code"] == 2 and "span layout" in err


def test_bad_input_is_one_line(served, tmp_path):
    workspace, version, rows, now = served
    # No logs at all, and an empty window.
    empty = tmp_path / "ws"
    empty.mkdir()
    code, out, err = _monitor(empty, "--since", "1h")
    assert code == 2 and err.startswith("mlpipe: no request logs at") and len(err.splitlines()) == 1
    code, out, err = _monitor(workspace, *_window(now, 100))
    assert code == 2 and "no logged requests" in err and len(err.splitlines()) == 1
    code, out, err = _monitor(workspace, "--since", "yesterday")
    assert code == 2 and "bad time 'yesterday'" in err
    # A version MLMD has no push of.
    log_dir = workspace / "request_logs" / "taxi"
    write_traffic(log_dir, rows[:80], 12345, now - 30 * HOUR, HOUR, seed=8)
    code, out, err = _monitor(workspace, *_window(now, 30))
    assert code == 2 and "version 12345, which MLMD has no push of" in err and len(err.splitlines()) == 1
    # Corrupted files next to good ones: skipped and listed; the good traffic is still checked.
    write_traffic(log_dir, rows[:700], version, now - 40 * HOUR, HOUR, seed=9)
    (log_dir / "requests-20000101T000000000000Z-1-00001.tfrecord").write_bytes(b"\x00garbage" * 50)
    code, out, err = _monitor(workspace, *_window(now, 40), "--json")
    report = json.loads(out)
    # The good traffic (drawn from the training data) was read and checked: no alert.
    assert code == 0 and report["alert"] is False, (out, err)
    assert report["requests"] > 50 and any(c["check"] == "skew" for c in report["checks"])
    assert [s["path"] for s in report["skipped_logs"] if "corrupted" in s["reason"]] == [
        str(log_dir / "requests-20000101T000000000000Z-1-00001.tfrecord")
    ]
    # Only corrupted data in a window's directory: a clear message, not a traceback.
    only_bad = tmp_path / "bad" / "taxi"
    only_bad.mkdir(parents=True)
    (only_bad / "requests-20000101T000000000000Z-1-00001.tfrecord").write_bytes(b"\x00garbage" * 50)
    code, out, err = _monitor(workspace, "--log-dir", str(tmp_path / "bad"), "--since", "1h")
    assert code == 2 and "1 unreadable file(s) skipped" in err and "Traceback" not in err


def test_evaluate_scores_the_served_model_and_alerts_below_the_value_threshold(served, tmp_path):
    from tests.conftest import write_taxi_slice

    workspace, version, rows, now = served
    # 300 labelled rows of the taxi data; an unreachable value threshold makes TFMA's value alert.
    labelled = write_taxi_slice(tmp_path / "labelled", rows=300) / "data.csv"
    config = tmp_path / "strict.toml"
    config.write_text("[evaluation]\nvalue_lower_bound = 0.999\n")
    code, out, err = _monitor(workspace, "--config", str(config), "--evaluate", str(labelled), "--json")
    assert code == 3, err
    report = json.loads(out)
    assert report["version"] == version and report["examples"] == 300
    assert report["metrics"]["example_count"] == 300
    value = report["threshold"]["value"]
    assert report["threshold"]["metric"] == "binary_accuracy" and value == report["metrics"]["binary_accuracy"]
    assert 0.5 < value < 0.999 and report["threshold"]["passed"] is False
    assert report["alerts"] == ["evaluation:binary_accuracy"] and report["retrain_wanted"] is True
    # Bad input: a path with no CSV.
    code, out, err = _monitor(workspace, "--evaluate", str(tmp_path / "nothing-here"))
    assert code == 2 and err.startswith("mlpipe: no CSV data at") and len(err.splitlines()) == 1


# --- The pipeline's drift gate (monitoring.pipeline_drift) -------------------------------------


def test_drift_gate_compares_spans_with_tfdv(served, first_run):
    """DriftCheck's comparison: the training statistics against a span with shifted trip_miles."""
    import tensorflow_data_validation as tfdv

    from pipeline import monitoring
    from pipeline.config import MonitoringConfig
    from pipeline.dag.components_drift import drift_checks

    workspace, version, rows, now = served
    previous = tfdv.load_stats_binary(
        str(
            next(
                (first_run[0] / "pipeline_root" / "StatisticsGen" / "statistics").glob("*/Split-train/FeatureStats.pb")
            )
        )
    )
    schema = tfdv.load_schema_text(
        str(next((first_run[0] / "pipeline_root" / "SchemaGen" / "schema").glob("*/schema.pbtxt")))
    )

    def decoded(sample):
        return [{name: value for name, (value, kind) in row.items()} for row in sample]

    same = monitoring.statistics_of(decoded(rows[:800]))
    _, checks = drift_checks(same, previous, schema, MonitoringConfig())
    assert checks and not [c for c in checks if c["alert"]]
    moved = monitoring.statistics_of(decoded(shifted(rows[:800], fraction_new_payment=0.0)))
    _, checks = drift_checks(moved, previous, schema, MonitoringConfig())
    assert {c["feature"] for c in checks if c["alert"]} == {"trip_miles"}
    _, checks = drift_checks(moved, previous, schema, MonitoringConfig(feature_thresholds={"trip_miles": 1.0}))
    assert not [c for c in checks if c["alert"]]


def test_previous_span_statistics_strategy():
    """Spans come from the Examples each StatisticsGen execution read (events in a real, in-memory MLMD)."""
    import ml_metadata as mlmd
    from ml_metadata.proto import metadata_store_pb2 as pb
    from tfx.types import artifact_utils

    from pipeline.dag.components_drift import PreviousSpanStatisticsStrategy

    config = pb.ConnectionConfig()
    config.fake_database.SetInParent()
    store = mlmd.MetadataStore(config)
    examples_type = store.put_artifact_type(pb.ArtifactType(name="Examples"))
    stats_type = store.put_artifact_type(pb.ArtifactType(name="ExampleStatistics"))
    exec_type = store.put_execution_type(pb.ExecutionType(name="StatisticsGen"))

    def ingest(span):
        """One Examples artifact of `span` and the statistics a StatisticsGen execution made of it."""
        examples = pb.Artifact(type_id=examples_type)
        examples.custom_properties["span"].int_value = span
        [examples_id] = store.put_artifacts([examples])
        [stats_id] = store.put_artifacts([pb.Artifact(type_id=stats_type)])
        [execution_id] = store.put_executions([pb.Execution(type_id=exec_type)])
        store.put_events(
            [
                pb.Event(artifact_id=examples_id, execution_id=execution_id, type=pb.Event.INPUT),
                pb.Event(artifact_id=stats_id, execution_id=execution_id, type=pb.Event.OUTPUT),
            ]
        )
        wrap = [
            artifact_utils.deserialize_artifact(t, a)
            for t, a in (
                (store.get_artifact_types_by_id([examples_type])[0], store.get_artifacts_by_id([examples_id])[0]),
                (store.get_artifact_types_by_id([stats_type])[0], store.get_artifacts_by_id([stats_id])[0]),
            )
        ]
        return wrap[0], wrap[1]

    made = [ingest(span) for span in (1, 2, 2, 4, 3)]  # span 2 ingested twice; span 4 before 3
    examples = [e for e, _ in made]
    statistics = [s for _, s in made]
    strategy = PreviousSpanStatisticsStrategy()
    resolved = strategy.resolve_artifacts(
        store, {"current": [statistics[4]], "statistics": statistics, "examples": examples}
    )
    # The current span is 3: the newest statistics of span 2 (not span 4, which is later).
    assert [a.id for a in resolved["statistics"]] == [statistics[2].id]
    assert [a.get_int_custom_property("span") for a in resolved["examples"]] == [2]
    resolved = strategy.resolve_artifacts(
        store, {"current": [statistics[0]], "statistics": statistics, "examples": examples}
    )
    assert resolved["statistics"] == [] and resolved["examples"] == []  # span 1 is the first


def test_drift_gate_is_wired_before_transform_only_when_configured(tmp_path):
    from pipeline import config as config_lib
    from pipeline.dag.pipeline import create_pipeline

    root = tmp_path / "spans"
    (root / "span-1").mkdir(parents=True)
    (root / "span-1" / "data.csv").write_text("a\n1\n")
    base = config_lib.Config(workspace=str(tmp_path / "ws"))
    for mode in ("off", "warn", "block"):
        config = base.replace({"data.root": str(root), "monitoring.pipeline_drift": mode})
        nodes = {c.id: c for c in create_pipeline(config).components}
        if mode == "off":
            assert "DriftCheck" not in nodes
            continue
        assert "DriftCheck" in {n.id for n in nodes["Transform"].upstream_nodes}
        assert nodes["DriftCheck"].exec_properties["mode"] == mode
        assert "drift_baseline_resolver" in {n.id for n in nodes["DriftCheck"].upstream_nodes}
    # A flat data root has no previous span: no gate even when configured.
    flat = base.replace({"monitoring.pipeline_drift": "block"})
    assert "DriftCheck" not in {c.id for c in create_pipeline(flat).components}
