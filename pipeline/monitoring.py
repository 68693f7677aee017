"""Training-serving skew, drift and schema anomalies of logged serving traffic (`mlpipe monitor`).

The model server's request logs (serving/request_log.py) are decoded back into the raw features
the model received, summarised with TFDV, and compared by TFDV itself (`validate_statistics` with
skew/drift comparators on an in-memory copy of the schema) with:
- skew: the training statistics of the version that served the traffic (lineage in MLMD:
  pushed version -> Model -> Trainer -> Transform -> Examples -> StatisticsGen, train split);
- drift: the traffic of the previous window (same length, right before `since`);
- anomalies: the version's schema in TFDV's SERVING environment (label and non-model columns optional).
Distances are TFDV's: L-infinity for categorical (string) features, Jensen-Shannon divergence for
numeric ones. See docs/monitoring.md.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import html
import json
import math
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from pipeline import logs, metadata, registry
from pipeline.config import Config

TRAINING, SERVING = "TRAINING", "SERVING"
L_INFTY, JSD = "L_INFTY", "JENSEN_SHANNON_DIVERGENCE"


class MonitorError(Exception):
    """A user-facing refusal (no logs, unknown version, bad window): one line; `code` is the exit code."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------------------------
# Time windows.

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """'24h', '30m', '7d', '90s', '2w' as seconds."""
    match = _RELATIVE.match(text.strip().lower())
    if not match:
        raise MonitorError(f"bad duration {text!r}: use a number and a unit s, m, h, d or w (e.g. 24h)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def parse_time(text: str, now: float) -> float:
    """An ISO 8601 time (no zone = UTC), 'now', or a duration meaning that long before `now`."""
    text = text.strip()
    if text.lower() == "now":
        return now
    if _RELATIVE.match(text.lower()):
        return now - parse_duration(text)
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise MonitorError(
            f"bad time {text!r}: use ISO 8601 (2026-11-22T04:00:00Z), 'now', or a duration like 24h"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.timestamp()


def iso_seconds(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------
# Reading and decoding the request logs.


@dataclasses.dataclass
class Traffic:
    """Decoded requests: one dict of raw feature values per example, grouped by model version."""

    rows: dict[int, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)
    requests: dict[int, int] = dataclasses.field(default_factory=dict)
    skipped: list[dict[str, str]] = dataclasses.field(default_factory=list)  # unreadable files/records

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    def all_rows(self) -> list[dict[str, Any]]:
        return [row for version in sorted(self.rows) for row in self.rows[version]]


def _example_row(example) -> dict[str, Any]:
    row = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        values = list(getattr(feature, kind).value) if kind else []
        row[name] = values[0] if values else None
    return row


def _clean(value):
    """A tensor element as a plain value; '' and NaN (the raw signature's 'missing') become None."""
    if isinstance(value, bytes):
        return value or None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def decode_request(kind: str, request) -> list[dict[str, Any]]:
    """The examples of one logged request as {raw feature: value or None}.

    predict: one tensor per raw feature (the `serving_raw` signature), or one string tensor of
    serialized tf.Examples (`serving_default` through Predict); classify/regress: tf.Examples.
    """
    import tensorflow as tf
    from tensorflow.core.example import example_pb2

    from serving.inference import serialized_examples

    if kind in ("classify", "regress"):
        return [_example_row(example_pb2.Example.FromString(b)) for b in serialized_examples(request.input)]
    inputs = {name: tf.make_ndarray(tensor) for name, tensor in request.inputs.items()}
    if len(inputs) == 1:
        (name, array), = inputs.items()
        if name in ("inputs", "examples") and array.dtype == object:
            return [_example_row(example_pb2.Example.FromString(b)) for b in array.reshape(-1)]
    columns = {name: array.reshape(-1) for name, array in inputs.items()}
    size = max((len(a) for a in columns.values()), default=0)
    return [{name: _clean(a[i]) if i < len(a) else None for name, a in columns.items()} for i in range(size)]


def read_traffic(log_dir: Path, since: float | None, until: float | None) -> Traffic:
    """The decoded requests logged in [since, until) under `log_dir`; unreadable parts are skipped and listed."""
    import tensorflow as tf
    from google.protobuf.message import DecodeError
    from tensorflow_serving.apis import prediction_log_pb2

    from serving.request_log import log_files

    traffic = Traffic()
    for path in log_files(str(log_dir)):
        bad_records = 0
        try:
            for raw in tf.compat.v1.io.tf_record_iterator(path):
                try:
                    record = prediction_log_pb2.PredictionLog.FromString(raw)
                except DecodeError:
                    bad_records += 1
                    continue
                stamp = float(record.log_metadata.timestamp_secs)
                if (since is not None and stamp < since) or (until is not None and stamp >= until):
                    continue
                kind = record.WhichOneof("log_type")
                if kind not in ("predict_log", "classify_log", "regress_log"):
                    continue
                try:
                    rows = decode_request(kind[:-4], getattr(record, kind).request)
                except Exception:  # tensors or examples this decoder cannot read: count, go on
                    bad_records += 1
                    continue
                version = int(record.log_metadata.model_spec.version.value)
                traffic.rows.setdefault(version, []).extend(rows)
                traffic.requests[version] = traffic.requests.get(version, 0) + 1
        except tf.errors.DataLossError as e:  # corrupted or truncated: keep what was read before it
            traffic.skipped.append({"path": path, "reason": f"corrupted TFRecord data ({e.message.splitlines()[0]})"})
        except tf.errors.OpError as e:
            traffic.skipped.append({"path": path, "reason": e.message.splitlines()[0]})
        if bad_records:
            traffic.skipped.append({"path": path, "reason": f"{bad_records} record(s) are not readable PredictionLogs"})
    return traffic


def statistics_of(rows: list[dict[str, Any]]):
    """TFDV statistics (DatasetFeatureStatisticsList) of the model features of decoded rows, in memory.

    Only the features the model reads are summarised (a client may send more). A missing value
    (absent from a tf.Example, '' or NaN in a raw tensor) becomes an empty value list, as
    CsvExampleGen writes an empty CSV cell, so presence matches the training statistics.
    """
    import pyarrow as pa
    from tensorflow_data_validation.statistics import stats_impl, stats_options

    from models import features as model_features

    # Declared column types (as ExampleGen encodes them), so that a feature missing from every
    # request is still an (empty) column of its type, as it is in the training data.
    kinds = {"string": (pa.binary(), lambda v: v if isinstance(v, bytes) else str(v).encode()),
             "float": (pa.float32(), float), "int": (pa.int64(), int)}
    arrays, fields = [], []
    for name in model_features.MODEL_FEATURES:
        kind, convert = kinds[model_features.COLUMN_TYPES[name]]
        values = [row.get(name) for row in rows]
        arrays.append(pa.array([[] if v is None else [convert(v)] for v in values], type=pa.list_(kind)))
        fields.append(name)
    batch = pa.RecordBatch.from_arrays(arrays, fields)
    return stats_impl.generate_statistics_in_memory(batch, stats_options.StatsOptions())


# ---------------------------------------------------------------------------------------------
# The training side: statistics and schema of the data a pushed version was trained on.


@dataclasses.dataclass
class TrainingData:
    version: int
    statistics: Any  # DatasetFeatureStatisticsList of the train split
    schema: Any  # schema_pb2.Schema the Trainer used
    statistics_uri: str
    schema_uri: str
    span: int


def training_data(snap: registry.Snapshot, version: int) -> TrainingData:
    """Lineage of `version` in MLMD to the train-split statistics and the schema of its training data.

    With a span window the Trainer read several spans; the newest span's statistics are used.
    """
    import tensorflow_data_validation as tfdv

    versions = {v.version: v for v in registry.pushed_versions(snap)}
    if str(version) not in versions:
        known = ", ".join(versions) or "none"
        raise MonitorError(
            f"the logs are of model version {version}, which MLMD has no push of (known versions: {known}); "
            "pass --version for a known one or check the workspace"
        )
    source = versions[registry.original_version(versions, str(version))]
    model = source.model
    trainer = snap.producing_execution(model) if model is not None else None
    examples = sorted(registry.example_artifacts_of_model(snap, model),
                      key=lambda a: int(metadata.prop(a, "span", 0) or 0))
    stats_artifact = None
    for artifact in reversed(examples):
        for execution in snap.consumers.get(artifact.id, []):
            if snap.node(execution) == "StatisticsGen":
                outputs = snap.output_artifacts(execution, "statistics")
                if outputs:
                    stats_artifact = outputs[0]
                    break
        if stats_artifact is not None:
            break
    schemas = snap.input_artifacts(trainer, "schema") if trainer is not None else []
    if stats_artifact is None or not schemas:
        raise MonitorError(f"MLMD has no training statistics or schema for version {version}; cannot compare", 1)
    stats_path = Path(stats_artifact.uri) / "Split-train" / "FeatureStats.pb"
    schema_path = Path(schemas[0].uri) / "schema.pbtxt"
    for path in (stats_path, schema_path):
        if not path.is_file():
            raise MonitorError(f"{path} (training data of version {version}) is missing; was the workspace moved?", 1)
    return TrainingData(
        version=version,
        statistics=tfdv.load_stats_binary(str(stats_path)),
        schema=tfdv.load_schema_text(str(schema_path)),
        statistics_uri=str(stats_path),
        schema_uri=str(schema_path),
        span=int(metadata.prop(examples[-1], "span", 0) or 0) if examples else 0,
    )


# ---------------------------------------------------------------------------------------------
# Comparison through TFDV.


def _feature_kinds(*stats_lists) -> dict[str, str]:
    """{feature: 'categorical' | 'numeric'} from the statistics (string stats = categorical)."""
    kinds = {}
    for stats in stats_lists:
        if stats is None:
            continue
        for dataset in stats.datasets:
            for feature in dataset.features:
                name = feature.path.step[0] if feature.path.step else feature.name
                stats_kind = feature.WhichOneof("stats")
                if stats_kind == "string_stats":
                    kinds[name] = "categorical"
                elif stats_kind == "num_stats":
                    kinds.setdefault(name, "numeric")
    return kinds


def threshold_for(config: Config, check: str, feature: str, kind: str) -> float:
    m = config.monitoring
    if feature in m.feature_thresholds:
        return m.feature_thresholds[feature]
    return getattr(m, f"{check}_{kind}")


def monitoring_schema(schema, config: Config, kinds: dict[str, str], check: str | None):
    """A copy of `schema` with TRAINING/SERVING environments and, for `check` ('skew'/'drift'), comparators."""
    from models import features as model_features
    from tensorflow_metadata.proto.v0 import schema_pb2

    copy = schema_pb2.Schema()
    copy.CopyFrom(schema)
    del copy.default_environment[:]
    copy.default_environment.extend([TRAINING, SERVING])
    for feature in copy.feature:
        # What the model does not read (the label, the timestamp) is not summarised at serving.
        if feature.name not in model_features.MODEL_FEATURES and SERVING not in feature.not_in_environment:
            feature.not_in_environment.append(SERVING)
        kind = kinds.get(feature.name)
        if check is None or kind is None:
            continue
        comparator = feature.skew_comparator if check == "skew" else feature.drift_comparator
        threshold = threshold_for(config, check, feature.name, kind)
        if kind == "categorical":
            comparator.infinity_norm.threshold = threshold
        else:
            comparator.jensen_shannon_divergence.threshold = threshold
            if feature.name in model_features.NUMERIC_FEATURES:
                # Heavy-tailed continuous values: equal-mass (quantile) buckets, so a few outliers do not
                # squeeze all mass into the first of TFDV's equal-width buckets. Codes and coordinates
                # (few distinct values) keep the equal-width histogram.
                comparator.jensen_shannon_divergence.source.type = schema_pb2.HistogramSelection.QUANTILES
    return copy


def _measurements(anomalies, check: str, version: int | None) -> list[dict]:
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    names = anomalies_pb2.DriftSkewInfo.Measurement.Type.Name
    rows = []
    for info in anomalies.drift_skew_info:
        feature = ".".join(info.path.step)
        for m in info.skew_measurements if check == "skew" else info.drift_measurements:
            rows.append({
                "check": check, "version": version, "feature": feature, "statistic": names(m.type),
                "distance": round(float(m.value), 6), "threshold": float(m.threshold),
                "alert": float(m.value) > float(m.threshold),
            })
    return rows


def _schema_anomalies(anomalies, version: int | None) -> list[dict]:
    """Anomalies other than the comparators' (those are reported as skew/drift checks)."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    type_name = anomalies_pb2.AnomalyInfo.Type.Name
    found = []
    for feature, info in sorted(anomalies.anomaly_info.items()):
        reasons = [r for r in info.reason if not type_name(r.type).startswith("COMPARATOR_")]
        if reasons:
            found.append({
                "version": version, "feature": feature,
                "types": [type_name(r.type) for r in reasons],
                "description": " ".join(r.description for r in reasons) or info.description,
            })
    if anomalies.HasField("dataset_anomaly_info") and anomalies.dataset_anomaly_info.reason:
        info = anomalies.dataset_anomaly_info
        found.append({"version": version, "feature": "(dataset)", "types": [type_name(r.type) for r in info.reason],
                      "description": " ".join(r.description for r in info.reason)})
    return found


@dataclasses.dataclass
class Report:
    data: dict  # the --json document
    distributions: dict  # (check, version, feature) -> (baseline stats, serving stats) for the HTML page

    @property
    def alert(self) -> bool:
        return self.data["alert"]


def _dataset_feature(stats, feature: str):
    if stats is None or not stats.datasets:
        return None
    for f in stats.datasets[0].features:
        if (".".join(f.path.step) if f.path.step else f.name) == feature:
            return f
    return None


def monitor(config: Config, since: float, until: float, log_dir: Path, version: int | None = None) -> Report:
    """Skew, drift and anomalies of the traffic logged in [since, until); raises MonitorError for bad input."""
    import tensorflow_data_validation as tfdv

    if until <= since:
        raise MonitorError(f"empty window: --since {iso_seconds(since)} is not before --until {iso_seconds(until)}")
    if not log_dir.is_dir():
        raise MonitorError(f"no request logs at {log_dir}: start `mlpipe serve --request_log_sampling_rate R` first")
    traffic = read_traffic(log_dir, since, until)
    if version is not None:
        traffic.rows = {v: r for v, r in traffic.rows.items() if v == version}
        traffic.requests = {v: n for v, n in traffic.requests.items() if v == version}
    if not traffic.total_requests:
        skipped = f" ({len(traffic.skipped)} unreadable file(s) skipped)" if traffic.skipped else ""
        raise MonitorError(
            f"no logged requests{'' if version is None else f' of version {version}'} between "
            f"{iso_seconds(since)} and {iso_seconds(until)} under {log_dir}{skipped}; widen --since"
        )
    snap = registry.open_snapshot(config)
    if snap is None:
        raise MonitorError(f"no pipeline has run in {config.workspace_path}: no training statistics to compare with")
    unknown = []
    trained: dict[int, TrainingData] = {}
    for v in sorted(traffic.rows):
        try:
            trained[v] = training_data(snap, v)
        except MonitorError as e:
            if e.code != 2:
                raise
            unknown.append((v, str(e)))
    if not trained:
        raise MonitorError(unknown[0][1])
    checks: list[dict] = []
    notes: list[str] = []
    minimum = config.monitoring.min_examples
    anomalies: list[dict] = []
    distributions: dict = {}
    versions_out = []
    for v, data in trained.items():
        serving_stats = statistics_of(traffic.rows[v])
        kinds = _feature_kinds(data.statistics, serving_stats)
        # Skew: training statistics against this version's serving statistics.
        if len(traffic.rows[v]) >= minimum:
            skew = tfdv.validate_statistics(
                data.statistics, monitoring_schema(data.schema, config, kinds, "skew"),
                environment=TRAINING, serving_statistics=serving_stats)
            checks += _measurements(skew, "skew", v)
        else:
            notes.append(f"version {v}: {len(traffic.rows[v])} example(s) < monitoring.min_examples "
                         f"{minimum}: skew not checked")
        # Anomalies: the serving statistics against the schema in the SERVING environment.
        served = tfdv.validate_statistics(serving_stats, monitoring_schema(data.schema, config, kinds, None),
                                          environment=SERVING)
        anomalies += _schema_anomalies(served, v)
        for row in checks:
            if row["version"] == v and row["check"] == "skew":
                distributions[("skew", v, row["feature"])] = (
                    _dataset_feature(data.statistics, row["feature"]), _dataset_feature(serving_stats, row["feature"]))
        versions_out.append({
            "version": v, "requests": traffic.requests[v], "examples": len(traffic.rows[v]),
            "training_statistics": data.statistics_uri, "schema": data.schema_uri, "training_span": data.span,
        })
    # Drift: the previous window of the same length against this one (all versions' traffic).
    length = until - since
    previous = read_traffic(log_dir, since - length, since)
    if version is not None:
        previous.rows = {v: r for v, r in previous.rows.items() if v == version}
        previous.requests = {v: n for v, n in previous.requests.items() if v == version}
    current_rows = [row for v in trained for row in traffic.rows[v]]
    previous_rows = previous.all_rows()
    if min(len(previous_rows), len(current_rows)) >= minimum:
        newest = trained[max(trained)]
        current_stats = statistics_of(current_rows)
        previous_stats = statistics_of(previous_rows)
        kinds = _feature_kinds(previous_stats, current_stats)
        drift = tfdv.validate_statistics(
            current_stats, monitoring_schema(newest.schema, config, kinds, "drift"),
            environment=SERVING, previous_statistics=previous_stats)
        drift_rows = _measurements(drift, "drift", None)
        checks += drift_rows
        for row in drift_rows:
            distributions[("drift", None, row["feature"])] = (
                _dataset_feature(previous_stats, row["feature"]), _dataset_feature(current_stats, row["feature"]))
    else:
        notes.append(f"{len(previous_rows)} example(s) in the previous window, {len(current_rows)} in this one "
                     f"(monitoring.min_examples {minimum}): drift not checked")
    alerts = [c for c in checks if c["alert"]]
    data = {
        "workspace": str(config.workspace_path),
        "model": config.model_name,
        "log_dir": str(log_dir),
        "window": {"since": iso_seconds(since), "until": iso_seconds(until)},
        "previous_window": {"since": iso_seconds(since - length), "until": iso_seconds(since),
                            "requests": previous.total_requests, "examples": len(previous_rows)},
        "requests": sum(traffic.requests[v] for v in trained),
        "versions": versions_out,
        "unknown_versions": [{"version": v, "requests": traffic.requests[v], "reason": reason} for v, reason in unknown],
        "skipped_logs": traffic.skipped + [s for s in previous.skipped if s not in traffic.skipped],
        "checks": sorted(checks, key=lambda c: (c["check"], c["version"] or 0, c["feature"])),
        "anomalies": anomalies,
        "notes": notes,
        "alerts": sorted({f"{c['check']}:{c['feature']}" for c in alerts}
                         | {f"anomaly:{a['feature']}" for a in anomalies}),
        "alert": bool(alerts or anomalies),
        "retrain_wanted": bool(alerts),
    }
    return Report(data, distributions)


# ---------------------------------------------------------------------------------------------
# Output.


def table(report: Report, show_all: bool = False) -> list[str]:
    d = report.data
    lines = [f"mlpipe monitor: {d['requests']} request(s) of model '{d['model']}' from {d['window']['since']} "
             f"to {d['window']['until']}; previous window {d['previous_window']['requests']} request(s)"]
    for v in d["versions"]:
        lines.append(f"  version {v['version']}: {v['requests']} request(s), {v['examples']} example(s); "
                     f"training statistics of span {v['training_span']}")
    for u in d["unknown_versions"]:
        lines.append(f"  version {u['version']}: {u['requests']} request(s) NOT CHECKED: {u['reason']}")
    for s in d["skipped_logs"]:
        lines.append(f"  skipped {s['path']}: {s['reason']}")
    rows = [c for c in d["checks"] if show_all or c["alert"]]
    if rows:
        lines.append(f"{'CHECK':<6} {'VERSION':<11} {'FEATURE':<24} {'STATISTIC':<26} {'DISTANCE':>9} "
                     f"{'THRESHOLD':>9}  VERDICT")
        for c in rows:
            lines.append(f"{c['check']:<6} {c['version'] if c['version'] is not None else 'all':<11} "
                         f"{c['feature']:<24} {c['statistic']:<26} {c['distance']:>9.4f} {c['threshold']:>9.4f}  "
                         f"{'ALERT' if c['alert'] else 'ok'}")
    if not show_all:
        lines.append(f"{len(d['checks']) - len(rows)} other check(s) within their thresholds (--all lists them)")
    lines += d["notes"]
    for a in d["anomalies"]:
        lines.append(f"anomaly (version {a['version']}) {a['feature']}: {a['description']}")
    lines.append(f"ALERT: {', '.join(d['alerts'])}" if d["alert"] else "no alert")
    return lines


def _bars(title: str, items: list[tuple[str, float]], color: str) -> str:
    """An inline SVG bar chart of (label, fraction) pairs."""
    width, row, label_w = 420, 16, 150
    top = max((f for _, f in items), default=0) or 1.0
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{row * len(items) + 24}">',
             f'<text x="0" y="14" font-weight="bold">{html.escape(title)}</text>']
    for i, (label, fraction) in enumerate(items):
        y = 22 + i * row
        bar = (width - label_w - 50) * fraction / top
        parts.append(f'<text x="0" y="{y + 11}" font-size="11">{html.escape(label[:24])}</text>'
                     f'<rect x="{label_w}" y="{y}" width="{bar:.1f}" height="{row - 3}" fill="{color}"/>'
                     f'<text x="{label_w + bar + 4:.1f}" y="{y + 11}" font-size="11">{fraction:.3f}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _distribution(feature_stats) -> list[tuple[str, float]]:
    """(bucket or value, fraction) pairs from one feature's statistics."""
    if feature_stats is None:
        return []
    kind = feature_stats.WhichOneof("stats")
    if kind == "string_stats":
        s = feature_stats.string_stats
        total = s.common_stats.num_non_missing or 1
        if s.top_values:
            return [(v.value, v.frequency / total) for v in list(s.top_values)[:20]]
        return [(b.label, b.sample_count / total) for b in list(s.rank_histogram.buckets)[:20]]
    if kind == "num_stats":
        for histogram in feature_stats.num_stats.histograms:
            if histogram.type == histogram.STANDARD:
                total = sum(b.sample_count for b in histogram.buckets) or 1
                return [(f"{b.low_value:.4g}..{b.high_value:.4g}", b.sample_count / total) for b in histogram.buckets]
    return []


def _summary(feature_stats) -> str:
    """Mean, spread and range of a numeric feature (the histograms alone hide heavy tails)."""
    if feature_stats is None or feature_stats.WhichOneof("stats") != "num_stats":
        return ""
    n = feature_stats.num_stats
    return (f"<p style='font-size:12px'>mean {n.mean:.4g}, std {n.std_dev:.4g}, min {n.min:.4g}, "
            f"median {n.median:.4g}, max {n.max:.4g}</p>")


def write_html(report: Report, path: Path) -> int:
    """An HTML page with, per alerting skew/drift check, the two distributions side by side. Returns the count."""
    d = report.data
    sections = []
    for c in d["checks"]:
        if not c["alert"]:
            continue
        baseline, serving = report.distributions.get((c["check"], c["version"], c["feature"]), (None, None))
        left = "training data" if c["check"] == "skew" else "previous window"
        served_by = "" if c["version"] is None else f" (version {c['version']})"
        sections.append(
            f"<h2>{html.escape(c['check'])}: {html.escape(c['feature'])}{served_by}</h2>"
            f"<p>{html.escape(c['statistic'])} = {c['distance']:.4f} &gt; threshold {c['threshold']:.4f}</p>"
            f"<div style='display:flex;gap:24px'>"
            f"<div>{_bars(left, _distribution(baseline), '#4c78a8')}{_summary(baseline)}</div>"
            f"<div>{_bars('serving window', _distribution(serving), '#e45756')}{_summary(serving)}</div></div>")
    if d["anomalies"]:
        items = "".join(f"<li><b>{html.escape(a['feature'])}</b> (version {a['version']}): "
                        f"{html.escape(a['description'])}</li>" for a in d["anomalies"])
        sections.append(f"<h2>Schema anomalies of the serving data</h2><ul>{items}</ul>")
    body = "".join(sections) or "<p>No alert: every feature is within its thresholds.</p>"
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>mlpipe monitor</title></head>"
            f"<body style='font-family:sans-serif'><h1>mlpipe monitor: {html.escape(d['model'])}</h1>"
            f"<p>{d['requests']} request(s), {html.escape(d['window']['since'])} to {html.escape(d['window']['until'])}"
            f"</p>{body}</body></html>")
    path.write_text(page)
    return sum(1 for c in d["checks"] if c["alert"])


# ---------------------------------------------------------------------------------------------
# Alerts and retraining.


def notify(config: Config, document: dict, timeout: float = 30.0) -> dict:
    """Runs the alert command (JSON on stdin) and POSTs the JSON to the webhook; returns what happened."""
    body = json.dumps(document, default=str).encode()
    result: dict[str, Any] = {"command": None, "webhook": None}
    m = config.monitoring
    if m.alert_command:
        try:
            done = subprocess.run(m.alert_command, shell=True, input=body, capture_output=True, timeout=timeout)
            result["command"] = {"exit_code": done.returncode, "ok": done.returncode == 0,
                                 "stderr": done.stderr.decode(errors="replace")[-500:]}
        except subprocess.TimeoutExpired:
            result["command"] = {"exit_code": None, "ok": False, "stderr": f"timed out after {timeout:.0f} s"}
    if m.webhook_url:
        request = urllib.request.Request(m.webhook_url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                result["webhook"] = {"status": response.status, "ok": 200 <= response.status < 300}
        except urllib.error.HTTPError as e:
            result["webhook"] = {"status": e.code, "ok": False, "error": str(e)}
        except (urllib.error.URLError, OSError) as e:
            result["webhook"] = {"status": None, "ok": False, "error": str(getattr(e, "reason", e))}
    return result


def start_retrain(config: Config, config_file: str | None, extra_args: list[str] | None = None) -> dict:
    """Runs `mlpipe retrain` on the same workspace and config as a subprocess; its output goes to stderr."""
    argv = [sys.executable, "-m", "pipeline", "retrain", "--workspace", str(config.workspace_path)]
    if config_file:
        argv += ["--config", str(config_file)]
    argv += extra_args or []
    started = time.time()
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    done = subprocess.run(argv, capture_output=True, env=env)
    for stream in (done.stdout, done.stderr):  # on our stderr, so --json output stays one document
        logs.terminal().write(stream.decode(errors="replace"))
    return {"command": argv[1:], "exit_code": done.returncode, "seconds": round(time.time() - started, 1)}


# ---------------------------------------------------------------------------------------------
# Continuous evaluation: the served model scored by TFMA on newly labelled data.


def _csv_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(path.glob("*.csv"))
    return []


def _csv_to_examples(files: list[Path], schema, destination: Path) -> int:
    """CSV rows as tf.Examples typed by `schema` (an empty cell is an empty value list, as CsvExampleGen writes)."""
    import csv

    import tensorflow as tf
    from tensorflow.core.example import example_pb2
    from tensorflow_metadata.proto.v0 import schema_pb2

    kinds = {f.name: {schema_pb2.INT: "int64_list", schema_pb2.FLOAT: "float_list"}.get(f.type, "bytes_list")
             for f in schema.feature}
    count = 0
    with tf.io.TFRecordWriter(str(destination)) as writer:
        for path in files:
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                missing = sorted(set(kinds) - set(reader.fieldnames or []))
                if missing:
                    raise MonitorError(f"{path} lacks the column(s) {', '.join(missing)} the model's schema has")
                for line, row in enumerate(reader, start=2):
                    example = example_pb2.Example()
                    for name, kind in kinds.items():
                        values = getattr(example.features.feature[name], kind)
                        cell = (row.get(name) or "").strip()
                        try:
                            if not cell:
                                values.SetInParent()
                            elif kind == "int64_list":
                                values.value.append(int(float(cell)))
                            elif kind == "float_list":
                                values.value.append(float(cell))
                            else:
                                values.value.append(cell.encode())
                        except ValueError:
                            raise MonitorError(f"{path}:{line}: {name} = {cell!r} is not a number") from None
                    writer.write(example.SerializeToString())
                    count += 1
    return count


def evaluate(config: Config, data: Path, version: int | None, workdir: Path) -> dict:
    """Scores the served version with TFMA on labelled CSV data; the value threshold of [evaluation] decides."""
    serving = registry.serving_versions(config)
    if version is None:
        if not serving:
            raise MonitorError(f"no model version in {config.serving_model_dir}: nothing to evaluate")
        version = serving[-1]
    model_dir = config.serving_model_dir / str(version)
    if not (model_dir / "saved_model.pb").is_file():
        raise MonitorError(f"no saved model at {model_dir} (versions on disk: {serving or 'none'})")
    files = _csv_files(data)
    if not files:
        raise MonitorError(f"no CSV data at {data}: give a CSV file or a directory (a span) of *.csv files")
    snap = registry.open_snapshot(config)
    if snap is None:
        raise MonitorError(f"no pipeline has run in {config.workspace_path}: no schema to read the CSV with")
    trained = training_data(snap, version)
    workdir.mkdir(parents=True, exist_ok=True)
    examples = workdir / "examples.tfrecord"
    count = _csv_to_examples(files, trained.schema, examples)
    if not count:
        raise MonitorError(f"{data} has no data rows")

    import tensorflow_model_analysis as tfma

    from pipeline import evaluation
    from pipeline.pipeline import eval_config

    eval_cfg = eval_config(config)
    for spec in eval_cfg.metrics_specs:  # no baseline here: only the value threshold applies
        for metric in spec.metrics:
            for threshold in metric.per_slice_thresholds:
                threshold.threshold.ClearField("change_threshold")
    shared = tfma.default_eval_shared_model(eval_saved_model_path=str(model_dir), eval_config=eval_cfg)
    output = workdir / "evaluation"
    tfma.run_model_analysis(eval_shared_model=shared, eval_config=eval_cfg, data_location=str(examples),
                            output_path=str(output), file_format="tfrecords")
    values = evaluation.overall_metrics(str(output))
    metrics = {name: round(value, 6) for (name, model, is_diff), value in sorted(values.items()) if not is_diff}
    ev = config.evaluation
    value = metrics.get(ev.value_metric)
    passed = value is not None and value >= ev.value_lower_bound
    return {
        "workspace": str(config.workspace_path), "model": config.model_name, "version": version,
        "data": [str(f) for f in files], "examples": count, "metrics": metrics,
        "threshold": {"metric": ev.value_metric, "lower_bound": ev.value_lower_bound, "value": value,
                      "passed": passed},
        "alerts": [] if passed else [f"evaluation:{ev.value_metric}"],
        "alert": not passed, "retrain_wanted": not passed,
    }
