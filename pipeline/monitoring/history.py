"""Monitor history: every run's per-feature scores, and the persistence gate of `--retrain`.

<workspace>/monitoring/history.jsonl holds one JSON line per monitored window (a re-run of the same
window and version filter replaces its line): when it ran, the window, its alerts, every feature's
score (alerting or not; the all-rows test and the alerting slices) and the retrain it started.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pipeline.config import Config
from pipeline.monitoring.records import read_jsonl, write_jsonl

_KEPT = ("check", "version", "feature", "slice", "statistic", "distance", "band", "p_value", "alert", "expected")


def path(config: Config) -> Path:
    return config.monitoring_history_path


def load(config: Config) -> list[dict]:
    """The recorded runs, oldest window first; unreadable lines are skipped."""
    return sorted(read_jsonl(path(config)), key=lambda e: (e["window"]["until"], e.get("run_at", "")))


def _save(config: Config, entries: list[dict]) -> None:
    write_jsonl(path(config), entries)


def _key(entry: dict) -> tuple:
    return entry["window"]["since"], entry["window"]["until"], entry.get("version_filter")


def record(config: Config, data: dict, version_filter: int | None, now: float) -> list[dict]:
    """Adds this run (the monitor report `data`) to the history; returns the whole history after it."""
    entry = {
        "run_at": dt.datetime.fromtimestamp(now, dt.timezone.utc).isoformat(timespec="seconds"),
        "window": {"since": data["window"]["since"], "until": data["window"]["until"]},
        "version_filter": version_filter,
        "versions": [v["version"] for v in data["versions"]],
        "requests": data["requests"],
        "alerts": data["alerts"],
        "scores": [{k: c.get(k) for k in _KEPT} for c in data["checks"] if c["slice"] is None or c["alert"]],
        "retrain": None,
    }
    entries = [e for e in load(config) if _key(e) != _key(entry)]
    entries.append(entry)
    entries.sort(key=lambda e: (e["window"]["until"], e.get("run_at", "")))
    _save(config, entries)
    return entries


def mark_retrain(config: Config, data: dict, version_filter: int | None, retrain: dict, now: float) -> None:
    """Records on this run's line that it started a retrain (what the daily maximum counts)."""
    entries = load(config)
    key = (data["window"]["since"], data["window"]["until"], version_filter)
    for entry in entries:
        if _key(entry) == key:
            entry["retrain"] = {
                "started": dt.datetime.fromtimestamp(now, dt.timezone.utc).isoformat(timespec="seconds"),
                "exit_code": retrain.get("exit_code"),
            }
    _save(config, entries)


def _alert_keys(entry: dict) -> set[str]:
    """The alerts --retrain acts on: skew and drift (schema anomalies alone do not retrain)."""
    return {a for a in entry["alerts"] if a.split(":", 1)[0] in ("skew", "drift")}


def retrain_gate(config: Config, entries: list[dict], data: dict, version_filter: int | None, now: float) -> dict:
    """Whether --retrain should start a retrain after this run: the same skew/drift alert in the last
    `retrain_after_windows` monitored windows (this one included), and fewer than
    `max_retrains_per_day` retrains started in the last 24 hours."""
    m = config.monitoring
    k = m.retrain_after_windows
    mine = [
        e
        for e in entries
        if e.get("version_filter") == version_filter and e["window"]["until"] <= data["window"]["until"]
    ]
    recent = mine[-k:]
    persisting = set.intersection(*(_alert_keys(e) for e in recent)) if len(recent) == k else set()
    day_ago = dt.datetime.fromtimestamp(now - 86400, dt.timezone.utc).isoformat(timespec="seconds")
    started = sum(1 for e in entries if e.get("retrain") and e["retrain"]["started"] >= day_ago)
    if not _alert_keys(mine[-1]) if mine else True:
        reason = "no skew or drift alert in this window"
    elif not persisting:
        reason = f"no skew or drift alert persisted for {k} consecutive window(s) (monitoring.retrain_after_windows)"
    elif started >= m.max_retrains_per_day:
        reason = (
            f"{started} retrain(s) started in the last 24 h (monitoring.max_retrains_per_day {m.max_retrains_per_day})"
        )
    else:
        reason = f"{', '.join(sorted(persisting))} alerted in {k} consecutive window(s)"
    return {
        "wanted": bool(persisting) and started < m.max_retrains_per_day,
        "persisting": sorted(persisting),
        "windows": k,
        "retrains_last_24h": started,
        "max_retrains_per_day": m.max_retrains_per_day,
        "reason": reason,
    }


def lines(entries: list[dict], feature: str | None) -> list[str]:
    """`mlpipe monitor --history [FEATURE]`: one line per window (and check) with the feature's score."""
    if not entries:
        return ["no monitor runs recorded yet"]
    if feature is None:
        out = [f"{'WINDOW UNTIL':<26} {'REQUESTS':>8}  ALERTS"]
        for e in entries:
            retrain = "  (retrain started)" if e.get("retrain") else ""
            out.append(f"{e['window']['until']:<26} {e['requests']:>8}  {', '.join(e['alerts']) or '-'}{retrain}")
        return out
    out = [
        f"{'WINDOW UNTIL':<26} {'CHECK':<6} {'VERSION':<11} {'STATISTIC':<10} {'DISTANCE':>8} {'BAND':>8} "
        f"{'P-VALUE':>9}  VERDICT"
    ]
    found = False
    for e in entries:
        for s in e["scores"]:
            if s["feature"] != feature:
                continue
            found = True
            where = f"  [{s['slice']}]" if s["slice"] else ""
            verdict = "ALERT" if s["alert"] else ("expected" if s.get("expected") else "ok")
            out.append(
                f"{e['window']['until']:<26} {s['check']:<6} {str(s['version'] or 'all'):<11} "
                f"{s['statistic']:<10} {s['distance']:>8.4f} {s['band']:>8.4f} {s['p_value']:>9.2e}  "
                f"{verdict}{where}"
            )
    if not found:
        return [f"no scores of feature {feature!r} recorded"]
    return out
