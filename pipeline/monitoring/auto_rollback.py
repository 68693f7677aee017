"""The automatic rollback (off unless `monitoring.rollback_after_windows` K >= 1) and the error-rate series.

A version that serves (the highest version directory, or one a label points at) whose last K judged
windows all failed one check, live quality (feedback.py: value metric below
`evaluation.value_lower_bound`), prediction skew (`skew:prediction` of `mlpipe monitor`) or error rate
(the server's outcome files: more than `monitoring.max_error_rate` failed), is rolled back through
publish.rollback.rollback + promotion.after_rollback (the path of `mlpipe rollback`) when it is the
highest version, or loses its label (promotion.move_label, the path of `mlpipe label remove`) otherwise.
Each action is kept in <workspace>/monitoring/rollbacks.jsonl: one action per failing version, at most
`monitoring.max_rollbacks_per_day` in 24 h, never back to a version that failed the same check. This module
decides and acts; the CLI prints and notifies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.metadata.snapshot import open_snapshot
from pipeline.metadata.versions import original_version, pushed_versions
from pipeline.monitoring import feedback, history
from pipeline.monitoring.records import read_jsonl, write_jsonl
from pipeline.monitoring.window import config_duration, iso_seconds, window_lines
from pipeline.publish.versions import read_labels, serving_versions


def load_actions(config: Config) -> list[dict]:
    return read_jsonl(config.auto_rollbacks_path)


def _quality_windows(config: Config, version: int, log_dir: Path | None = None) -> list[tuple[str, bool]]:
    return [
        (e["window"]["since"], e["passed"])
        for e in feedback.load_series(config)
        if e["version"] == version and e["judged"]
    ]


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
    window_seconds = config_duration(config, "quality_window")
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
        for e in error_rate_series(config, log_dir)
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
    write_jsonl(config.auto_rollbacks_path, load_actions(config) + [entry])
    return {**entry, "result": result}


def error_rate_lines(entries: list[dict]) -> list[str]:
    """`monitor --history`'s error-rate table: one line per (window, version)."""
    columns = [
        ("REQUESTS", ">8", "requests", False),
        ("FAILED", ">8", "failed", False),
        ("RATE", ">8", "error_rate", True),
    ]
    return window_lines("ERROR RATE", columns, entries, lambda e: f"> {e['max_error_rate']:.4f}")
