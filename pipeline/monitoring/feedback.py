"""Production feedback: live quality from late labels (`mlpipe monitor --labels`) and the automatic rollback.

Labels joined to logged predictions (labels.py) are scored with TFMA and the blessing's eval config
(evaluate.py value_only_eval_config: the same metrics, slices and value threshold), one TFMA run per
model version, sliced by window (`monitoring.quality_window`, aligned to the epoch) and by each of the
Evaluator's slice features within a window. Each (window, version) becomes a line of
<workspace>/monitoring/quality.jsonl (recomputing a window replaces its line), the time series
`monitor --history` shows beside the drift scores.

The rollback rule (off unless `monitoring.rollback_after_windows` K >= 1): a version that serves (the
highest version directory, or one a label points at) whose last K judged windows all failed one check,
live quality (value metric below `evaluation.value_lower_bound`) or prediction skew (`skew:prediction`
of `mlpipe monitor`), is rolled back through publish.rollback.rollback + promotion.after_rollback (the path of
`mlpipe rollback`) when it is the highest version, or loses its label (promotion.move_label, the path
of `mlpipe label remove`) otherwise. Each action is kept in <workspace>/monitoring/rollbacks.jsonl:
one action per failing version, at most `monitoring.max_rollbacks_per_day` in 24 h, never back to a
version that failed the same check. This module decides and acts; the CLI prints and notifies.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.metadata.snapshot import open_snapshot
from pipeline.metadata.versions import original_version, pushed_versions
from pipeline.monitoring import history, labels
from pipeline.monitoring.window import MonitorError, iso_seconds, parse_duration
from pipeline.publish.versions import read_labels, serving_versions

WINDOW_FEATURE = "__mlpipe_window__"  # the slice feature that carries an example's window into TFMA


def _duration(config: Config, key: str) -> float:
    try:
        return parse_duration(getattr(config.monitoring, key))
    except MonitorError as e:
        raise MonitorError(f"config error: monitoring.{key}: {e}") from None


# ---- the quality series ------------------------------------------------------------------------


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _write_jsonl(path: Path, entries: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))
    tmp.replace(path)


def load_series(config: Config) -> list[dict]:
    """The live quality series: one entry per (window, version), oldest window first."""
    entries = _read_jsonl(config.monitoring_quality_path)
    return sorted(entries, key=lambda e: (e["window"]["since"], e["version"]))


def _record_series(config: Config, new: list[dict]) -> None:
    fresh = {(e["window"]["since"], e["version"]) for e in new}
    kept = [e for e in load_series(config) if (e["window"]["since"], e["version"]) not in fresh]
    entries = sorted(kept + new, key=lambda e: (e["window"]["since"], e["version"]))
    _write_jsonl(config.monitoring_quality_path, entries)


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

    from pipeline.monitoring.evaluate import value_only_eval_config

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
    shared = tfma.default_eval_shared_model(eval_saved_model_path=str(model_dir), eval_config=eval_cfg)
    tfma.run_model_analysis(
        eval_shared_model=shared,
        eval_config=eval_cfg,
        data_location=str(examples),
        output_path=str(output),
        file_format="tfrecords",
    )
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
    window_seconds = _duration(config, "quality_window")
    oldest_kept = now - _duration(config, "labels_lookback")
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


# ---- the automatic rollback --------------------------------------------------------------------


def load_actions(config: Config) -> list[dict]:
    return _read_jsonl(config.auto_rollbacks_path)


def _quality_windows(config: Config, version: int, log_dir: Path | None = None) -> list[tuple[str, bool]]:
    return [(e["window"]["since"], e["passed"]) for e in load_series(config) if e["version"] == version and e["judged"]]


def _drift_windows(config: Config, version: int, log_dir: Path | None = None) -> list[tuple[str, bool]]:
    out = []
    for entry in history.load(config):
        for score in entry["scores"]:
            if score["check"] == "skew" and score["feature"] == "prediction" and score["version"] == version:
                if score["slice"] is None:
                    out.append((entry["window"]["since"], not score["alert"]))
    return out


def error_rate_series(config: Config, log_dir: Path | None = None) -> list[dict]:
    """The served versions' error rate per `monitoring.quality_window` window, from the server's outcome files.

    One entry per (window, version), oldest first: requests, failed, error_rate, judged (at least
    `monitoring.min_error_requests` requests) and passed (error_rate <= `monitoring.max_error_rate`).
    """
    from serving.outcomes import read_outcomes

    m = config.monitoring
    window_seconds = _duration(config, "quality_window")
    sums: dict[tuple[float, int], list[int]] = {}
    for line in read_outcomes(str(log_dir or config.request_log_dir)):
        if line.get("model") not in (None, config.model_name):
            continue
        start = float(line["time"]) // window_seconds * window_seconds
        slot = sums.setdefault((start, int(line["version"])), [0, 0])
        slot[0] += int(line.get("ok", 0))
        slot[1] += int(line.get("failed", 0))
    out = []
    for (start, version), (ok, failed) in sorted(sums.items()):
        requests = ok + failed
        rate = failed / requests if requests else None
        judged = requests >= m.min_error_requests
        out.append(
            {
                "window": {"since": iso_seconds(start), "until": iso_seconds(start + window_seconds)},
                "version": version,
                "requests": requests,
                "failed": failed,
                "error_rate": None if rate is None else round(rate, 6),
                "max_error_rate": m.max_error_rate,
                "judged": judged,
                "passed": (rate <= m.max_error_rate) if judged else None,
            }
        )
    return out


def _error_windows(config: Config, version: int, log_dir: Path | None = None) -> list[tuple[str, bool]]:
    return [
        (e["window"]["since"], e["passed"])
        for e in error_rate_series(config)
        if e["version"] == version and e["judged"]
    ]


CHECKS = {"quality": _quality_windows, "prediction_drift": _drift_windows, "error_rate": _error_windows}


def rollback_decision(config: Config, now: float, log_dir: Path | None = None) -> dict:
    """What the automatic rollback does now: {"action": "rollback" | "drop_label" | None, "reason", ...}.

    `log_dir`: the model's request log directory holding the server's outcome files (default
    config.request_log_dir), for the error-rate check.
    """
    m = config.monitoring
    k = m.rollback_after_windows
    decision: dict[str, Any] = {"enabled": k > 0, "action": None, "windows": k, "failing": []}
    if k == 0:
        return dict(decision, reason="off (monitoring.rollback_after_windows = 0)")
    on_disk = serving_versions(config)
    if not on_disk:
        return dict(decision, reason=f"nothing is published in {config.serving_model_dir}")
    served = [(on_disk[-1], None)] + [(v, name) for name, v in sorted(read_labels(config).items()) if v != on_disk[-1]]
    actions = load_actions(config)
    for version, label in served:
        for check, windows_of in CHECKS.items():
            last = windows_of(config, version, log_dir)[-k:]
            if len(last) == k and not any(ok for _, ok in last):
                decision["failing"].append(
                    {"version": version, "label": label, "check": check, "windows": [w for w, _ in last]}
                )
    if not decision["failing"]:
        return dict(decision, reason=f"no served version failed a check in its last {k} judged window(s)")
    acted = {a["failed_version"] for a in actions}
    open_failures = [f for f in decision["failing"] if f["version"] not in acted]
    if not open_failures:
        return dict(decision, reason="already acted on every failing version (one action per version)")
    day_ago = iso_seconds(now - 86400)
    recent = sum(1 for a in actions if a["time"] >= day_ago)
    failure = open_failures[0]
    decision.update(failure=failure, rollbacks_last_24h=recent, max_rollbacks_per_day=m.max_rollbacks_per_day)
    why = (
        f"version {failure['version']} failed {failure['check']} in {k} consecutive window(s) "
        f"({', '.join(failure['windows'])})"
    )
    if recent >= m.max_rollbacks_per_day:
        return dict(
            decision,
            reason=f"{why}; but {recent} automatic rollback(s) in the last 24 h "
            f"(monitoring.max_rollbacks_per_day {m.max_rollbacks_per_day})",
        )
    if failure["label"] is not None:
        return dict(
            decision, action="drop_label", label=failure["label"], reason=f"{why}: drop label {failure['label']}"
        )
    target = _target(config, failure["version"], failure["check"], actions)
    if target is None:
        return dict(
            decision, reason=f"{why}; but no earlier blessed version on disk that has not failed {failure['check']}"
        )
    return dict(decision, action="rollback", to_version=target, reason=f"{why}: roll back to version {target}")


def _target(config: Config, current: int, check: str, actions: list[dict]) -> int | None:
    """The newest blessed, never-rolled-back-from original version older than `current`'s origin."""
    from pipeline.metadata import queries as metadata

    snap = open_snapshot(config)
    if snap is None:
        return None
    versions = pushed_versions(snap)
    by_version = {v.version: v for v in versions}
    origin = int(original_version(by_version, str(current)))
    failed = {a["failed_origin"] for a in actions if a["check"] == check}
    for v in sorted(versions, key=lambda v: int(v.version), reverse=True):
        if v.is_rollback or int(v.version) >= origin or int(v.version) in failed:
            continue
        if v.blessing is None or metadata.prop(v.blessing, "blessed") != 1:
            continue
        if (config.serving_model_dir / v.version / "saved_model.pb").is_file():
            return int(v.version)
    return None


def apply(config: Config, decision: dict, now: float) -> dict:
    """Carries out a rollback decision through the audited paths of `mlpipe rollback` / `mlpipe label remove`."""
    from pipeline.publish import promotion
    from pipeline.publish.rollback import rollback

    failure = decision["failure"]
    reason = f"automatic: {decision['reason']}"
    if decision["action"] == "rollback":
        result = rollback(config, decision["to_version"], reason)
        result["label_moves"] = promotion.after_rollback(config, result)
    else:
        result = promotion.move_label(config, decision["label"], None, reason)
    snap = open_snapshot(config)
    by_version = {v.version: v for v in pushed_versions(snap)} if snap is not None else {}
    origin = original_version(by_version, str(failure["version"])) if by_version else failure["version"]
    entry = {
        "time": iso_seconds(now),
        "action": decision["action"],
        "failed_version": failure["version"],
        "failed_origin": int(origin),
        "check": failure["check"],
        "windows": failure["windows"],
        "to_version": decision.get("to_version"),
        "new_version": result.get("new_version"),
        "label": decision.get("label"),
        "reason": reason,
    }
    _write_jsonl(config.auto_rollbacks_path, load_actions(config) + [entry])
    return {**entry, "result": result}


def error_rate_lines(entries: list[dict]) -> list[str]:
    """`monitor --history`'s error-rate table: one line per (window, version)."""
    if not entries:
        return []
    out = [f"{'ERROR RATE WINDOW SINCE':<26} {'VERSION':<11} {'REQUESTS':>8} {'FAILED':>8} {'RATE':>8}  VERDICT"]
    for e in entries:
        rate = "n/a" if e["error_rate"] is None else f"{e['error_rate']:.4f}"
        verdict = "not judged" if not e["judged"] else ("ok" if e["passed"] else f"FAIL (> {e['max_error_rate']:.4f})")
        out.append(
            f"{e['window']['since']:<26} {e['version']:<11} {e['requests']:>8} {e['failed']:>8} {rate:>8}  {verdict}"
        )
    return out


def series_lines(entries: list[dict]) -> list[str]:
    """`monitor --history`'s live quality table: one line per (window, version)."""
    if not entries:
        return []
    out = [f"{'QUALITY WINDOW SINCE':<26} {'VERSION':<11} {'EXAMPLES':>8} {'METRIC':<16} {'VALUE':>8}  VERDICT"]
    for e in entries:
        value = "n/a" if e["value"] is None else f"{e['value']:.4f}"
        verdict = "not judged" if not e["judged"] else ("ok" if e["passed"] else f"FAIL (< {e['lower_bound']:.4f})")
        out.append(
            f"{e['window']['since']:<26} {e['version']:<11} {e['examples']:>8} {e['metric']:<16} {value:>8}  {verdict}"
        )
    return out
