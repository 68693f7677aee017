"""Pipeline runs as ML Metadata recorded them, with their outcome and, for a failed run, the error from
TFX's record or the run's log (`mlpipe runs`)."""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.metadata import queries as metadata
from pipeline.metadata.snapshot import Snapshot, iso, version_str
from pipeline.metadata.thresholds import threshold_checks
from pipeline.metadata.versions import baseline_version, gate_fields, pushed_versions

_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)\w*)(?::\s?(.*))?$")


def run_log(config: Config, run_id: str) -> Path | None:
    """The `mlpipe run` log (<workspace>/logs/*-YYYYmmdd-HHMMSS.log) that recorded this run id."""
    try:
        started = datetime.datetime.fromisoformat(run_id).strftime("%Y%m%d-%H%M%S")
    except ValueError:
        started = "99999999-999999"
    candidates = []
    for path in config.log_dir.glob("*.log") if config.log_dir.is_dir() else []:
        stamp = re.search(r"(\d{8}-\d{6})", path.name)
        if stamp and stamp.group(1) <= started:
            candidates.append((stamp.group(1), path))
    needle = f"pipeline_run_id='{run_id}'"
    for _, path in sorted(candidates, reverse=True)[:5]:  # the run started after its log was opened
        try:
            if needle in path.read_text(errors="replace"):
                return path
        except OSError:
            continue
    return None


def _error_in_log(log: Path, execution_id: int) -> str | None:
    """The exception that failed `execution_id`, as the run's log recorded it (one line)."""
    lines = log.read_text(errors="replace").splitlines()
    marker = f"Execution {execution_id} failed."
    begin = next((i for i, line in enumerate(lines) if line.endswith(marker)), None)
    if begin is None:
        return None
    for i in range(begin, len(lines)):
        match = _EXCEPTION_LINE.match(lines[i])
        if match and not lines[i].startswith(("INFO", "WARNING", "ERROR", "DEBUG")):
            name = match.group(1).rsplit(".", 1)[-1]
            more = []
            for line in lines[i + 1 : i + 6]:
                if not line.startswith((" ", "\t")):
                    break
                more.append(line.strip())
            text = f"{name}: {match.group(2) or ''}".rstrip(": ")
            return " ".join([text, *more])
    return None


def _failure(snap: Snapshot, execution_id: int, run_id: str) -> tuple[str, str | None]:
    """(error message, log path) of a failed execution: TFX's recorded result, else the run's log."""
    log = run_log(snap.config, run_id)
    result = metadata.prop(snap.executions[execution_id], "__execution_result__")
    if result:
        try:
            message = json.loads(result).get("resultMessage", "")
        except ValueError:
            message = result
        if message.strip():
            return message.strip().splitlines()[-1], str(log) if log else None
    found = _error_in_log(log, execution_id) if log else None
    if found:
        return found, str(log)
    where = f"see {log}" if log else f"see the run's log in {snap.config.log_dir}"
    return f"the component failed ({where})", str(log) if log else None


def list_runs(snap: Snapshot, with_metrics: bool = True) -> list[dict]:
    """Each pipeline run, newest first, with its outcome."""
    versions = pushed_versions(snap)
    by_pusher = {v.execution_id: v for v in versions if not v.is_rollback}
    rows = []
    for run in snap.runs:
        ids = sorted(i for i, r in snap.run_of.items() if r == run.name and i in snap.executions)
        states = {i: snap.state(i) for i in ids}
        nodes = {snap.node(i): i for i in ids}
        started = min((snap.executions[i].create_time_since_epoch for i in ids), default=run.create_time_since_epoch)
        ended = max((snap.executions[i].last_update_time_since_epoch for i in ids), default=started)
        row: dict[str, Any] = {
            "run_id": run.name,
            "started": iso(started),
            "seconds": max(0, ended - started) / 1000.0,
            "outcome": None,
            "pushed_version": None,
            "failed_checks": [],
            "failed_component": None,
            "error": None,
            "fully_cached": False,
            "spans": [],
            "components": {snap.node(i): states[i] for i in ids},
            "log": None,  # set for failed runs: the run's log file, when found
            "blocked_by": None,  # the infra or replay gate that kept a blessed candidate back (docs/release.md)
        }
        # Spans used: what Transform read (the span window, when there is one), else what ExampleGen made.
        examples = [a for i in ids if snap.node(i) == "Transform" for a in snap.input_artifacts(i, "examples")]
        if not examples:
            examples = [a for i in ids if snap.node(i) == "CsvExampleGen" for a in snap.output_artifacts(i, "examples")]
        row["spans"] = metadata.examples_spans(examples)
        failed = [i for i in ids if states[i] == "failed"]
        components = [i for i in ids if not snap.node(i).endswith("_resolver")]
        row["fully_cached"] = bool(components) and all(states[i] == "cached" for i in components)
        pusher = nodes.get("Pusher")
        pushed = by_pusher.get(pusher) if pusher is not None else None
        if pusher is not None and pushed is None:  # a cached Pusher re-announces an earlier push
            for artifact in snap.output_artifacts(pusher, "pushed_model"):
                if metadata.prop(artifact, "pushed") == 1:
                    pushed_version = version_str(metadata.prop(artifact, "pushed_version"))
                    pushed = next((v for v in versions if v.version == pushed_version), None)
        if failed:
            row["outcome"] = "failed"
            row["failed_component"] = snap.node(failed[0])
            row["error"], row["log"] = _failure(snap, failed[0], run.name)
        elif any(s in ("new", "running", "unknown") for s in states.values()) or pusher is None:
            row["outcome"] = "incomplete"  # still running, or the process was killed
        elif pushed is not None:
            row["outcome"] = "pushed"
            row["pushed_version"] = pushed.version
        else:
            row["outcome"] = "not_blessed"
            row["blocked_by"] = _blocking_gate(snap, nodes)
            evaluator = nodes.get("Evaluator")
            if evaluator is not None and with_metrics:
                evaluations = snap.output_artifacts(evaluator, "evaluation")
                checks = threshold_checks(snap.executions[evaluator], evaluations[0].uri if evaluations else None)
                row["failed_checks"] = [c for c in checks if c["passed"] is False]
        if row["fully_cached"] and row["outcome"] in ("pushed", "not_blessed"):
            row["outcome_detail"] = "fully cached"
        rows.append(row)
    return rows


def _blocking_gate(snap: Snapshot, nodes: dict) -> dict | None:
    """{gate, verdict, reasons} of the run's infra or replay gate that FAILED, if one did."""
    from pipeline.metadata import verdicts

    results = []
    for node, gate in verdicts.NODE_GATES.items():
        if gate != verdicts.EVALUATION and nodes.get(node) is not None:
            for artifact in snap.output_artifacts(nodes[node], verdicts.GATE_OUTPUT_KEYS[gate]):
                results.append(verdicts.recorded_gate(artifact, nodes[node]))
    blocked = verdicts.blocking(results)
    return {k: blocked[k] for k in ("gate", "verdict", "reasons")} if blocked else None


def describe_run(row: dict) -> str:
    outcome = row["outcome"]
    if outcome == "pushed":
        text = f"pushed version {row['pushed_version']}"
    elif outcome == "not_blessed" and row.get("blocked_by"):
        b = row["blocked_by"]
        text = f"not pushed: {b['gate']} {b['verdict']} ({'; '.join(b['reasons'])})"
    elif outcome == "not_blessed":
        from pipeline.metadata.evaluation import describe_failure

        reasons = "; ".join(
            describe_failure(c["metric"], c["value"], c["bound"], c["baseline_value"]) for c in row["failed_checks"]
        )
        text = f"not blessed ({reasons or 'thresholds not met'})"
    elif outcome == "failed":
        text = f"FAILED at {row['failed_component']}: {row['error']}"
    else:
        text = "incomplete (still running, or interrupted)"
    if row["fully_cached"] and outcome == "pushed":
        text = f"fully cached (nothing changed: version {row['pushed_version']} was pushed before)"
    elif row["fully_cached"] and outcome != "failed":
        text = f"fully cached, {text}"
    return text


def refused_candidates(snap: Snapshot) -> list[dict]:
    """Runs whose Evaluator refused the candidate, newest first: the failed checks and the baseline."""
    versions = pushed_versions(snap)
    refused = []
    for row in list_runs(snap):
        if row["outcome"] != "not_blessed":
            continue
        evaluator = next(
            (
                i
                for i, r in snap.run_of.items()
                if r == row["run_id"] and i in snap.executions and snap.node(i) == "Evaluator"
            ),
            None,
        )
        blessings = snap.output_artifacts(evaluator, "blessing") if evaluator is not None else []
        refused.append(
            {
                "run_id": row["run_id"],
                "started": row["started"],
                "failed_checks": row["failed_checks"],
                "baseline": baseline_version(snap, versions, blessings[0] if blessings else None),
                **gate_fields(snap, evaluator, row["failed_checks"]),
            }
        )
    return refused
