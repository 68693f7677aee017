"""Production feedback: live quality from late labels (`mlpipe monitor --labels`).

Labels joined to logged predictions (labels.py) are scored with TFMA and the blessing's eval config
(evaluate.py value_only_eval_config: the same metrics, slices and value threshold), one TFMA run per
model version, sliced by window (`monitoring.quality_window`, aligned to the epoch) and by each of the
Evaluator's slice features within a window. Each (window, version) becomes a line of
<workspace>/monitoring/quality.jsonl (recomputing a window replaces its line), the time series
`monitor --history` shows beside the drift scores, and one of the checks of the automatic rollback
(auto_rollback.py).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pipeline.config import Config
from pipeline.metadata.snapshot import open_snapshot
from pipeline.monitoring import labels
from pipeline.monitoring.records import read_jsonl, write_jsonl
from pipeline.monitoring.window import MonitorError, config_duration, iso_seconds, window_lines

WINDOW_FEATURE = "__mlpipe_window__"  # the slice feature that carries an example's window into TFMA


def load_series(config: Config) -> list[dict]:
    """The live quality series: one entry per (window, version), oldest window first."""
    entries = read_jsonl(config.monitoring_quality_path)
    return sorted(entries, key=lambda e: (e["window"]["since"], e["version"]))


def _record_series(config: Config, new: list[dict]) -> None:
    fresh = {(e["window"]["since"], e["version"]) for e in new}
    kept = [e for e in load_series(config) if (e["window"]["since"], e["version"]) not in fresh]
    entries = sorted(kept + new, key=lambda e: (e["window"]["since"], e["version"]))
    write_jsonl(config.monitoring_quality_path, entries)


def _examples(config: Config, schema, pairs, window_seconds: float, destination: Path) -> int:
    """The joined (prediction, label) pairs as tf.Examples typed by the version's schema, with their window."""
    import tensorflow as tf
    from tensorflow.core.example import example_pb2
    from tensorflow_metadata.proto.v0 import schema_pb2

    kinds = {
        f.name: {schema_pb2.INT: "int64_list", schema_pb2.FLOAT: "float_list"}.get(f.type, "bytes_list")
        for f in schema.feature
    }
    label_col = labels.label_column(config)
    with tf.io.TFRecordWriter(str(destination)) as writer:
        for prediction, label in pairs:
            example = example_pb2.Example()
            values = dict(prediction.row, **{label_col: label})
            for name, kind in kinds.items():
                value = values.get(name)
                field = getattr(example.features.feature[name], kind)
                if value is None or value == "":
                    field.SetInParent()
                    continue
                try:
                    if kind == "int64_list":
                        field.value.append(int(float(value)))
                    elif kind == "float_list":
                        field.value.append(float(value))
                    else:
                        field.value.append(value if isinstance(value, bytes) else str(value).encode())
                except ValueError:
                    raise MonitorError(
                        f"label {label!r} of key {prediction.key!r} is not a number ({label_col} is numeric)"
                    ) from None
            start = prediction.timestamp // window_seconds * window_seconds
            example.features.feature[WINDOW_FEATURE].bytes_list.value.append(iso_seconds(start).encode())
            writer.write(example.SerializeToString())
    return len(pairs)


def _slice_value(key) -> str:
    if key.HasField("bytes_value"):
        return key.bytes_value.decode(errors="replace")
    if key.HasField("int64_value"):
        return str(key.int64_value)
    return f"{key.float_value:g}"


def _score(config: Config, version: int, trained, examples: Path, output: Path) -> dict[str, dict]:
    """TFMA on one version's joined examples: {window start: {"metrics": {...}, "slices": [...]}}."""
    import tensorflow_model_analysis as tfma

    from pipeline.monitoring.evaluate import run_tfma, value_only_eval_config

    eval_cfg = value_only_eval_config(config)
    for spec in eval_cfg.metrics_specs:  # the value threshold is applied per window below
        for metric in spec.metrics:
            del metric.per_slice_thresholds[:]
    del eval_cfg.slicing_specs[:]
    eval_cfg.slicing_specs.append(tfma.SlicingSpec(feature_keys=[WINDOW_FEATURE]))
    for feature in config.model.slice_features:
        eval_cfg.slicing_specs.append(tfma.SlicingSpec(feature_keys=[WINDOW_FEATURE, feature]))
    model_dir = config.serving_model_dir / str(version)
    if not (model_dir / "saved_model.pb").is_file():
        model_dir = Path(trained.model_dir)
    run_tfma(model_dir, eval_cfg, examples, output)
    windows: dict[str, dict] = {}
    for per_slice in tfma.load_metrics(str(output)):
        keys = {k.column: _slice_value(k) for k in per_slice.slice_key.single_slice_keys}
        window = keys.pop(WINDOW_FEATURE, None)
        if window is None:
            continue
        metrics = {
            e.key.name: round(e.value.double_value.value, 6)
            for e in per_slice.metric_keys_and_values
            if e.value.HasField("double_value") and not e.key.is_diff
        }
        slot = windows.setdefault(window, {"metrics": {}, "slices": []})
        if keys:
            name = ", ".join(f"{k}={v}" for k, v in sorted(keys.items()))
            slot["slices"].append({"slice": name, "examples": int(metrics.get("example_count", 0)), "metrics": metrics})
        else:
            slot["metrics"] = metrics
    return windows


def live_quality(config: Config, labels_path: Path, log_dir: Path, now: float, workdir: Path) -> dict:
    """Joins the labels to the logged predictions, scores each (window, version) with TFMA, records the series."""
    window_seconds = config_duration(config, "quality_window")
    oldest_kept = now - config_duration(config, "labels_lookback")
    found = labels.read_labels(config, labels_path)
    predictions, logged = labels.keyed_predictions(config, log_dir)
    matched, joined = labels.join(found, predictions, oldest_kept, logged.pop("oldest_record"))
    ev, m = config.evaluation, config.monitoring
    by_version: dict[int, list] = {}
    for prediction, label in matched:
        by_version.setdefault(prediction.version, []).append((prediction, label))
    series, notes = [], []
    snap = open_snapshot(config) if by_version else None
    workdir.mkdir(parents=True, exist_ok=True)
    for version, pairs in sorted(by_version.items()):
        from pipeline.monitoring.baseline import training_data

        try:
            trained = training_data(snap, version, config) if snap is not None else None
        except MonitorError as e:
            notes.append(f"{len(pairs)} labelled example(s) of version {version} not scored: {e}")
            continue
        if trained is None:
            raise MonitorError(f"no pipeline has run in {config.workspace_path}: no schema to read the labels with")
        examples = workdir / f"labelled-{version}.tfrecord"
        _examples(config, trained.schema, pairs, window_seconds, examples)
        run_at = iso_seconds(now)
        for window, scored in sorted(_score(config, version, trained, examples, workdir / f"tfma-{version}").items()):
            since = dt.datetime.fromisoformat(window).timestamp()
            count = int(scored["metrics"].get("example_count", 0))
            value = scored["metrics"].get(ev.value_metric)
            judged = count >= m.min_examples and value is not None and value == value  # NaN: undefined
            series.append(
                {
                    "window": {"since": window, "until": iso_seconds(since + window_seconds)},
                    "version": version,
                    "examples": count,
                    "metrics": scored["metrics"],
                    "slices": sorted(scored["slices"], key=lambda s: s["slice"]),
                    "metric": ev.value_metric,
                    "lower_bound": ev.value_lower_bound,
                    "value": value,
                    "judged": judged,
                    "passed": (value >= ev.value_lower_bound) if judged else None,
                    "run_at": run_at,
                }
            )
    _record_series(config, series)
    failing = [e for e in series if e["passed"] is False]
    alerts = sorted({f"quality:{ev.value_metric}"} if failing else set())
    return {
        "workspace": str(config.workspace_path),
        "model": config.model_name,
        "labels": {"files": found.files, **found.counts, **joined},
        "logs": {"log_dir": str(log_dir), **logged},
        "window_seconds": window_seconds,
        "threshold": {"metric": ev.value_metric, "lower_bound": ev.value_lower_bound, "min_examples": m.min_examples},
        "series": series,
        "notes": notes,
        "alerts": alerts,
        "alert": bool(alerts),
        "retrain_wanted": bool(alerts),
    }


def series_lines(entries: list[dict]) -> list[str]:
    """`monitor --history`'s live quality table: one line per (window, version)."""
    columns = [
        ("EXAMPLES", ">8", "examples", False),
        ("METRIC", "<16", "metric", False),
        ("VALUE", ">8", "value", True),
    ]
    return window_lines("QUALITY", columns, entries, lambda e: f"< {e['lower_bound']:.4f}")
