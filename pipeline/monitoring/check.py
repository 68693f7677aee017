"""`mlpipe monitor`'s checks of one window of logged traffic (see the package docstring)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from pipeline.config import Config
from pipeline.dag import feature_roles as monitored
from pipeline.dag import tfdv_checks
from pipeline.dag.request_logs import read_traffic
from pipeline.metadata.snapshot import open_snapshot
from pipeline.monitoring import baseline as baseline_lib
from pipeline.monitoring import history, stats
from pipeline.monitoring.window import MonitorError, iso_seconds


@dataclasses.dataclass
class Report:
    data: dict  # the --json document
    samples: dict  # (check, version) -> (baseline rows, window rows), for the HTML page's distributions

    @property
    def alert(self) -> bool:
        return self.data["alert"]


slice_features = monitored.slice_features
seasonal_features = monitored.seasonal_features


def _kinds(config: Config) -> dict[str, str]:
    return stats.feature_kinds(monitored.model_features(config), monitored.categorical_features(config))


def _compare(
    config: Config,
    check: str,
    version: int | None,
    base_rows: list[dict],
    rows: list[dict],
    base_scores: list[float],
    scores: list[float],
    notes: list[str],
    phis: dict[str, float] | None = None,
    score_spans: list[int] | None = None,
) -> tuple[list[dict], dict[str, float]]:
    m = config.monitoring
    found, phis = stats.compare(
        base_rows,
        rows,
        _kinds(config),
        slice_features=slice_features(config),
        seasonal=seasonal_features(config),
        alpha=m.alpha,
        min_distance=m.min_distance,
        feature_floors=dict(m.feature_thresholds),
        min_slice_examples=m.min_slice_examples,
        phis=phis,
    )
    tested = len({(r["feature"], r["slice"]) for r in found})
    out = stats.summarize(found)
    prediction = stats.compare_scores(base_scores, scores, m.alpha, m.min_distance, score_spans)
    if prediction is not None:
        out.append(prediction)
    else:
        label = "the training window's eval split" if check == "skew" else "the previous window"
        notes.append(
            f"{check}{'' if version is None else f' (version {version})'}: prediction drift not checked: "
            f"{len(scores)} logged score(s) in the window, {len(base_scores)} of {label}"
        )
    for row in out:
        row.update(check=check, version=version, tests=tested)
    return out, phis


def monitor(
    config: Config, since: float, until: float, log_dir: Path, version: int | None = None, now: float | None = None
) -> Report:
    """Skew, drift, prediction drift and anomalies of the traffic logged in [since, until); records the
    run in the history. Raises MonitorError for bad input."""
    started = time.perf_counter()
    now = time.time() if now is None else now
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
    snap = open_snapshot(config)
    if snap is None:
        raise MonitorError(f"no pipeline has run in {config.workspace_path}: no training data to compare with")
    unknown = []
    trained: dict[int, baseline_lib.TrainingData] = {}
    for v in sorted(traffic.rows):
        try:
            trained[v] = baseline_lib.training_data(snap, v, config)
        except MonitorError as e:
            if e.code != 2:
                raise
            unknown.append((v, str(e)))
    if not trained:
        raise MonitorError(unknown[0][1])
    read_seconds = time.perf_counter() - started
    checks: list[dict] = []
    notes: list[str] = []
    minimum = config.monitoring.min_examples
    anomalies: list[dict] = []
    samples: dict = {}
    versions_out = []
    baseline_seconds = 0.0
    dispersions: dict[int, dict[str, float]] = {}  # version -> {feature: phi between its training spans}
    seasonal = seasonal_features(config)
    for v, data in trained.items():
        rows = traffic.rows[v]
        t0 = time.perf_counter()
        base = baseline_lib.baseline(config, data)
        baseline_seconds += time.perf_counter() - t0
        if base.get("score_error"):
            notes.append(f"version {v}: its eval-split scores could not be computed ({base['score_error']})")
        # Skew: the whole training window's sample against this version's traffic.
        if len(rows) >= minimum:
            found, dispersions[v] = _compare(
                config,
                "skew",
                v,
                base["rows"],
                rows,
                base["scores"],
                baseline_lib.rows_with_scores(rows),
                notes,
                score_spans=base.get("score_spans"),
            )
            checks += found
            samples[("skew", v)] = (base["rows"], rows)
        else:
            notes.append(f"version {v}: {len(rows)} example(s) < monitoring.min_examples {minimum}: skew not checked")
        # Anomalies: the serving statistics against the tolerant schema in the SERVING environment.
        for anomaly in tfdv_checks.serving_anomalies(config, data.schema, base["rows"], rows, v):
            anomaly["expected"] = anomaly["feature"] in seasonal
            anomalies.append(anomaly)
        versions_out.append(
            {
                "version": v,
                "requests": traffic.requests[v],
                "examples": len(rows),
                "training_spans": data.spans,
                "training_span": data.span,
                "training_examples": data.examples_uris,
                "baseline_rows": len(base["rows"]),
                "training_rows": base["train_rows"],
                "baseline_scores": len(base["scores"]),
                "schema": data.schema_uri,
            }
        )
    # Drift: the previous window of the same length against this one (all versions' traffic).
    length = until - since
    previous = read_traffic(log_dir, since - length, since)
    if version is not None:
        previous.rows = {v: r for v, r in previous.rows.items() if v == version}
        previous.requests = {v: n for v, n in previous.requests.items() if v == version}
    current_rows = [row for v in trained for row in traffic.rows[v]]
    previous_rows = previous.all_rows()
    if min(len(previous_rows), len(current_rows)) >= minimum:
        # The previous window has no spans: the newest version's training dispersion is the normal evolution.
        newest = max(trained)
        phis = dispersions.get(newest) or {}
        found, _ = _compare(
            config,
            "drift",
            None,
            previous_rows,
            current_rows,
            baseline_lib.rows_with_scores(previous_rows),
            baseline_lib.rows_with_scores(current_rows),
            notes,
            phis=phis,
        )
        checks += found
        samples[("drift", None)] = (previous_rows, current_rows)
    else:
        notes.append(
            f"{len(previous_rows)} example(s) in the previous window, {len(current_rows)} in this one "
            f"(monitoring.min_examples {minimum}): drift not checked"
        )
    alerts = [c for c in checks if c["alert"]]
    paging = [a for a in anomalies if not a["expected"]]
    checks.sort(key=lambda c: (c["check"], c["version"] or 0, c["feature"], c["slice"] is not None, c["slice"] or ""))
    data = {
        "workspace": str(config.workspace_path),
        "model": config.model_name,
        "log_dir": str(log_dir),
        "window": {"since": iso_seconds(since), "until": iso_seconds(until)},
        "previous_window": {
            "since": iso_seconds(since - length),
            "until": iso_seconds(since),
            "requests": previous.total_requests,
            "examples": len(previous_rows),
        },
        "requests": sum(traffic.requests[v] for v in trained),
        "versions": versions_out,
        "unknown_versions": [
            {"version": v, "requests": traffic.requests[v], "reason": reason} for v, reason in unknown
        ],
        "skipped_logs": traffic.skipped + [s for s in previous.skipped if s not in traffic.skipped],
        "method": {
            "alpha": config.monitoring.alpha,
            "min_distance": config.monitoring.min_distance,
            "slice_features": list(slice_features(config)),
            "seasonal_features": sorted(seasonal),
        },
        "checks": checks,
        "anomalies": anomalies,
        "notes": notes,
        "alerts": sorted(
            {f"{c['check']}:{c['feature']}" for c in alerts} | {f"anomaly:{a['feature']}" for a in paging}
        ),
        "alert": bool(alerts or paging),
    }
    entries = history.record(config, data, version, now)
    data["retrain_gate"] = history.retrain_gate(config, entries, data, version, now)
    data["retrain_wanted"] = data["retrain_gate"]["wanted"]
    total = time.perf_counter() - started
    data["timing"] = {
        "seconds": round(total, 3),
        "read_seconds": round(read_seconds, 3),
        "baseline_seconds": round(baseline_seconds, 3),
        "compute_seconds": round(total - read_seconds - baseline_seconds, 3),
    }
    return Report(data, samples)
