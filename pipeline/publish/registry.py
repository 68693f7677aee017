"""The model registry view over ML Metadata: runs, pushed versions, lineage, rollback, labels.

Everything here is derived from MLMD (through pipeline/metadata/queries.py) and the serving model
directory; nothing is cached elsewhere. Queries open MLMD read-only so they can run while a
pipeline run is writing; only `rollback` opens it read-write, to record its audit execution.
"""

from __future__ import annotations

import dataclasses
import datetime
import getpass
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from ml_metadata.proto import metadata_store_pb2

from pipeline.config import THRESHOLD_METRICS, Config
from pipeline.metadata import queries as metadata
from pipeline.ops.lock import pid_alive

Event = metadata_store_pb2.Event
INPUT_EVENTS = (Event.INPUT, Event.DECLARED_INPUT)
OUTPUT_EVENTS = (Event.OUTPUT, Event.DECLARED_OUTPUT)
MODELS_CONFIG_NAME = "models.config"  # under <workspace>/serving_model/


class RegistryError(Exception):
    """A user-facing refusal (unknown version, nothing to roll back to, ...): one line.

    `code` is the exit code: 1 (refused/failed) or 2 (bad input: an unknown version or label).
    """

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def iso(ms: int | None) -> str | None:
    if not ms:
        return None
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).isoformat(timespec="seconds")


def _json_prop(item, name: str) -> Any:
    """An execution property TFX stores as JSON text (custom_config, train_args, eval_config)."""
    raw = metadata.prop(item, name)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except (TypeError, ValueError):
        return raw


def _version_str(value) -> str | None:
    return None if value in (None, "") else str(value)


# ---------------------------------------------------------------------------------------------
# One in-memory snapshot of the pipeline's MLMD graph.


class Snapshot:
    """The pipeline's executions, events and artifacts, read from MLMD once."""

    def __init__(self, store, config: Config):
        self.store = store
        self.config = config
        name = config.pipeline_name
        self.node_of = metadata.node_ids_by_execution(store, name)
        self.run_of = metadata.run_names_by_execution(store, name)
        self.runs = metadata.pipeline_runs(store, name)
        rollbacks = metadata.executions_of_type(store, metadata.ROLLBACK_EXECUTION_TYPE)
        forced = metadata.executions_of_type(store, metadata.FORCED_BLESSING_EXECUTION_TYPE)
        ids = sorted(set(self.node_of) | {e.id for e in rollbacks} | {e.id for e in forced})
        self.executions = {e.id: e for e in store.get_executions_by_id(ids)} if ids else {}
        self.rollback_ids = {e.id for e in rollbacks}
        self.forced_ids = {e.id for e in forced}  # `mlpipe bless --force` pushes
        self.inputs: dict[int, dict[str, list[int]]] = {}
        self.outputs: dict[int, dict[str, list[int]]] = {}
        self.consumers: dict[int, list[int]] = {}
        self.producer: dict[int, int] = {}  # artifact id -> first execution that output it
        for event in sorted(metadata.events_of(self.store, ids), key=lambda e: e.execution_id):
            key = event.path.steps[0].key if event.path.steps else ""
            if event.type in INPUT_EVENTS:
                self.inputs.setdefault(event.execution_id, {}).setdefault(key, []).append(event.artifact_id)
                self.consumers.setdefault(event.artifact_id, []).append(event.execution_id)
            elif event.type in OUTPUT_EVENTS:
                self.outputs.setdefault(event.execution_id, {}).setdefault(key, []).append(event.artifact_id)
                self.producer.setdefault(event.artifact_id, event.execution_id)
        all_ids = [a for d in (*self.inputs.values(), *self.outputs.values()) for ids_ in d.values() for a in ids_]
        self.artifacts = metadata.artifacts_by_id(store, all_ids)

    def node(self, execution_id: int) -> str:
        if execution_id in self.rollback_ids:
            return "rollback"
        if execution_id in self.forced_ids:
            return "forced_blessing"
        return self.node_of.get(execution_id, "?")

    def state(self, execution_id: int) -> str:
        return metadata.STATE_NAMES.get(self.executions[execution_id].last_known_state, "unknown")

    def input_artifacts(self, execution_id: int, key: str) -> list:
        return [self.artifacts[a] for a in self.inputs.get(execution_id, {}).get(key, []) if a in self.artifacts]

    def output_artifacts(self, execution_id: int, key: str) -> list:
        return [self.artifacts[a] for a in self.outputs.get(execution_id, {}).get(key, []) if a in self.artifacts]

    def producing_execution(self, artifact) -> int | None:
        return self.producer.get(artifact.id)

    def executions_by_node(self, node_id: str) -> list[int]:
        return sorted(i for i, n in self.node_of.items() if n == node_id)

    def execution_summary(self, execution_id: int | None) -> dict | None:
        if execution_id is None:
            return None
        e = self.executions[execution_id]
        return {
            "id": execution_id,
            "node": self.node(execution_id),
            "run_id": self.run_of.get(execution_id),
            "state": self.state(execution_id),
            "started": iso(e.create_time_since_epoch),
            "seconds": max(0, e.last_update_time_since_epoch - e.create_time_since_epoch) / 1000.0,
        }


def open_snapshot(config: Config, attempts: int = 5) -> Snapshot | None:
    """The snapshot of the workspace's MLMD, or None if nothing has run there yet.

    Read-only; a run writing at the same moment can hold SQLite's lock briefly, so retry then.
    """
    for attempt in range(attempts):
        try:
            if not metadata.store_initialized(config):
                return None
            store = metadata.open_store(config)
            return None if store is None else Snapshot(store, config)
        except Exception as e:  # MLMD raises its own error types for SQLite's "database is locked"
            if "lock" not in str(e).lower() and "busy" not in str(e).lower() or attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    return None


# ---------------------------------------------------------------------------------------------
# Evaluation: the thresholds the Evaluator applied (from its recorded eval_config) and the values.


def _metric_name(class_name: str, config_json: str | None) -> str:
    if config_json:
        try:
            name = json.loads(config_json).get("name")
            if name:
                return name
        except ValueError:
            pass
    for metric in THRESHOLD_METRICS:
        if metric.replace("_", "") == class_name.lower():
            return metric
    return class_name


def _get(d: dict, snake: str):
    """A field of proto JSON, written with either proto names (TFX does) or camelCase."""
    camel = re.sub(r"_([a-z])", lambda m: m.group(1).upper(), snake)
    return d.get(snake, d.get(camel))


def recorded_thresholds(evaluator_execution) -> list[dict]:
    """The thresholds in the Evaluator's recorded eval_config, one dict per rule."""
    eval_config = _json_prop(evaluator_execution, "eval_config") or {}
    rules = []
    for spec in _get(eval_config, "metrics_specs") or []:
        for metric in spec.get("metrics", []):
            name = _metric_name(_get(metric, "class_name") or "", metric.get("config"))
            thresholds = [metric["threshold"]] if "threshold" in metric else []
            thresholds += [t.get("threshold", {}) for t in _get(metric, "per_slice_thresholds") or []]
            for threshold in thresholds:
                value = _get(threshold, "value_threshold")
                if value is not None:
                    rules.append(
                        {
                            "metric": name,
                            "kind": "value",
                            "lower_bound": _get(value, "lower_bound"),
                            "upper_bound": _get(value, "upper_bound"),
                        }
                    )
                change = _get(threshold, "change_threshold")
                if change is not None:
                    rules.append(
                        {
                            "metric": name,
                            "kind": "change",
                            "absolute": change.get("absolute"),
                            "relative": change.get("relative"),
                            "direction": change.get("direction"),
                        }
                    )
    return rules


def _metric_values(eval_uri: str) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TF's import chatter is not our output
    import logging

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    from pipeline.metadata import evaluation  # imports TFMA (slow): only when metrics are wanted

    try:
        return evaluation.overall_metrics(eval_uri)
    except Exception:  # a run that failed while writing its evaluation
        return {}


def threshold_checks(evaluator_execution, eval_uri: str | None) -> list[dict]:
    """Each recorded threshold with the candidate's (and baseline's) value and the verdict."""
    values = _metric_values(eval_uri) if eval_uri else {}
    has_baseline = any(model == "baseline" for _, model, _ in values)
    candidate = "candidate" if has_baseline else ""
    checks = []
    for rule in recorded_thresholds(evaluator_execution):
        value = values.get((rule["metric"], candidate, False))
        check = {
            "metric": rule["metric"],
            "kind": rule["kind"],
            "value": value,
            "bound": None,
            "baseline_value": None,
            "passed": None,
        }
        if rule["kind"] == "value":
            lower, upper = rule.get("lower_bound"), rule.get("upper_bound")
            check["bound"] = lower if lower is not None else upper
            if value is not None:
                check["passed"] = (lower is None or value >= lower) and (upper is None or value <= upper)
        else:
            baseline = values.get((rule["metric"], "baseline", False)) if has_baseline else None
            check["baseline_value"] = baseline
            absolute = rule.get("absolute")
            if baseline is not None and absolute is not None:
                higher = rule.get("direction", "HIGHER_IS_BETTER") != "LOWER_IS_BETTER"
                check["bound"] = baseline + absolute
                if value is not None:
                    check["passed"] = value >= check["bound"] if higher else value <= check["bound"]
        checks.append(check)
    return checks


def describe_check(check: dict) -> str:
    value = "n/a" if check["value"] is None else f"{check['value']:.4f}"
    if check["bound"] is None:
        rule = "no baseline: not applied" if check["kind"] == "change" else "no bound"
    elif check["kind"] == "change":
        rule = f">= {check['bound']:.4f} (baseline {check['baseline_value']:.4f} + change threshold)"
    else:
        rule = f">= {check['bound']:.4f}"
    verdict = {True: "pass", False: "FAIL", None: "skipped"}[check["passed"]]
    return f"{check['metric']} {value} {rule} {verdict}"


# ---------------------------------------------------------------------------------------------
# Pushed versions.


@dataclasses.dataclass
class Version:
    version: str
    pushed_ms: int
    destination: str  # where the pusher wrote it (as recorded)
    pushed_model: metadata_store_pb2.Artifact
    execution_id: int  # the Pusher or rollback execution that published it
    model: metadata_store_pb2.Artifact | None
    blessing: metadata_store_pb2.Artifact | None
    rollback_of: str | None = None  # for a rollback: the version it re-published

    @property
    def is_rollback(self) -> bool:
        return self.rollback_of is not None


def pushed_versions(snap: Snapshot) -> list[Version]:
    """Every version that was published, oldest first: Pusher pushes and rollbacks."""
    versions: dict[str, Version] = {}
    for execution_id in sorted(snap.executions_by_node("Pusher") + sorted(snap.forced_ids)):
        for artifact in snap.output_artifacts(execution_id, "pushed_model"):
            version = _version_str(metadata.prop(artifact, "pushed_version"))
            if metadata.prop(artifact, "pushed") != 1 or version is None or version in versions:
                continue  # not pushed, or a cached execution re-announcing an earlier push
            models = snap.input_artifacts(execution_id, "model")
            blessings = snap.input_artifacts(execution_id, "model_blessing")
            versions[version] = Version(
                version=version,
                pushed_ms=snap.executions[execution_id].last_update_time_since_epoch,
                destination=metadata.prop(artifact, "pushed_destination", artifact.uri),
                pushed_model=artifact,
                execution_id=execution_id,
                model=models[0] if models else None,
                blessing=blessings[0] if blessings else None,
            )
    for execution_id in sorted(snap.rollback_ids):
        for artifact in snap.output_artifacts(execution_id, "pushed_model"):
            version = _version_str(metadata.prop(artifact, "pushed_version"))
            source = versions.get(_version_str(metadata.prop(snap.executions[execution_id], "to_version")))
            if version is None or version in versions or source is None:
                continue
            versions[version] = dataclasses.replace(
                source,
                version=version,
                pushed_ms=snap.executions[execution_id].create_time_since_epoch,
                destination=metadata.prop(artifact, "pushed_destination", artifact.uri),
                pushed_model=artifact,
                execution_id=execution_id,
                rollback_of=source.version,
            )
    return sorted(versions.values(), key=lambda v: int(v.version))


def original_version(versions: dict[str, Version], version: str) -> str:
    """The Pusher version a (chain of) rollback(s) re-published."""
    seen = set()
    while version in versions and versions[version].rollback_of and version not in seen:
        seen.add(version)
        version = versions[version].rollback_of
    return version


def baseline_version(snap: Snapshot, versions: list[Version], blessing) -> dict | None:
    """The baseline model the Evaluator compared against, and the version it was pushed as."""
    if blessing is None:
        return None
    model_id = metadata.prop(blessing, "baseline_model_id")
    if not model_id:
        return None
    pushed = [v.version for v in versions if v.model is not None and v.model.id == model_id and not v.is_rollback]
    return {
        "model_id": model_id,
        "model_uri": metadata.prop(blessing, "baseline_model"),
        "version": int(pushed[0]) if pushed else None,
    }


def example_artifacts_of_model(snap: Snapshot, model) -> list:
    """The Examples the Trainer's input was derived from (through Transform), or its direct input."""
    trainer = snap.producing_execution(model) if model is not None else None
    if trainer is None:
        return []
    found = []
    for transformed in snap.input_artifacts(trainer, "examples"):
        transform = snap.producing_execution(transformed)
        if transform is not None and snap.node(transform) == "Transform":
            found += snap.input_artifacts(transform, "examples")
        else:
            found.append(transformed)
    return list({a.id: a for a in found}.values())


def spans_of(artifacts) -> list[int]:
    return sorted({int(metadata.prop(a, "span", 0) or 0) for a in artifacts})


# ---------------------------------------------------------------------------------------------
# What serving would load: integer version directories and the labels config.


def serving_versions(config: Config) -> list[int]:
    """Integer version directories (the only ones TF Serving and our server load), ascending."""
    base = config.serving_model_dir
    if not base.is_dir():
        return []
    return sorted(int(p.name) for p in base.iterdir() if p.name.isdigit() and p.is_dir())


def models_config_path(config: Config) -> Path:
    return config.serving_model_dir.parent / MODELS_CONFIG_NAME


def read_labels(config: Config) -> dict[str, int]:
    """{label: version} from the workspace's models.config ({} if there is none)."""
    path = models_config_path(config)
    if not path.is_file():
        return {}
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    try:
        parsed = text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as e:
        raise RegistryError(f"{path} is not a valid ModelServerConfig text proto ({e}); fix or delete it") from None
    for model in parsed.model_config_list.config:
        if model.name == config.model_name:
            return dict(sorted(model.version_labels.items()))
    return {}


def write_models_config(config: Config, labels: dict[str, int]) -> Path:
    """Writes models.config: the model, a specific-versions policy (latest + every labelled one), labels."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    on_disk = serving_versions(config)
    wanted = set(labels.values()) | ({on_disk[-1]} if on_disk else set())
    server = model_server_config_pb2.ModelServerConfig()
    model = server.model_config_list.config.add()
    model.name = config.model_name
    model.base_path = str(config.serving_model_dir)
    model.model_platform = "tensorflow"
    model.model_version_policy.specific.versions.extend(sorted(wanted))
    for label, version in sorted(labels.items()):
        model.version_labels[label] = version
    path = models_config_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text_format.MessageToString(server))
    os.replace(tmp, path)  # atomic: a polling server never reads half a file
    return path


def serving_state(config: Config) -> dict:
    """What a server started on this workspace would load now."""
    on_disk = serving_versions(config)
    labels = read_labels(config)
    latest = on_disk[-1] if on_disk else None
    config_path = models_config_path(config)
    if config_path.is_file():
        loaded = sorted(set(labels.values()) | ({latest} if latest is not None else set()))
    else:
        loaded = [latest] if latest is not None else []
    return {
        "base_path": str(config.serving_model_dir),
        "model_config_file": str(config_path) if config_path.is_file() else None,
        "latest": latest,
        "labels": labels,
        "loaded": [v for v in loaded if v in on_disk],
        "versions_on_disk": on_disk,
    }


# ---------------------------------------------------------------------------------------------
# runs


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
        row["spans"] = spans_of(examples)
        failed = [i for i in ids if states[i] == "failed"]
        components = [i for i in ids if not snap.node(i).endswith("_resolver")]
        row["fully_cached"] = bool(components) and all(states[i] == "cached" for i in components)
        pusher = nodes.get("Pusher")
        pushed = by_pusher.get(pusher) if pusher is not None else None
        if pusher is not None and pushed is None:  # a cached Pusher re-announces an earlier push
            for artifact in snap.output_artifacts(pusher, "pushed_model"):
                if metadata.prop(artifact, "pushed") == 1:
                    pushed_version = _version_str(metadata.prop(artifact, "pushed_version"))
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
    from pipeline.publish import verdicts

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


# ---------------------------------------------------------------------------------------------
# models


def version_record(snap: Snapshot, versions: list[Version], v: Version, with_metrics: bool = True) -> dict:
    evaluator = snap.producing_execution(v.blessing) if v.blessing is not None else None
    checks = []
    if evaluator is not None and with_metrics:
        evaluations = snap.output_artifacts(evaluator, "evaluation")
        checks = threshold_checks(snap.executions[evaluator], evaluations[0].uri if evaluations else None)
    trainer = snap.producing_execution(v.model) if v.model is not None else None
    record = {
        "version": int(v.version),
        "pushed": iso(v.pushed_ms),
        "path": str(snap.config.serving_model_dir / v.version),
        "recorded_destination": v.destination,
        "run_id": snap.run_of.get(snap.producing_execution(v.pushed_model) or v.execution_id),
        "model_id": v.model.id if v.model is not None else None,
        "trainer_run_id": snap.run_of.get(trainer) if trainer is not None else None,
        "checks": checks,
        "baseline": baseline_version(snap, versions, v.blessing),
        "training_spans": spans_of(example_artifacts_of_model(snap, v.model)),
        "rollback": None,
    }
    record.update(gate_fields(snap, evaluator, v.blessing, checks if with_metrics else None))
    if v.execution_id in snap.forced_ids:
        from pipeline.publish import verdicts

        record["forced_blessing"] = verdicts.forced_record(snap.executions[v.execution_id])
    if v.is_rollback:
        e = snap.executions[v.execution_id]
        record["run_id"] = None
        record["rollback"] = {
            "execution_id": v.execution_id,
            "of_version": int(v.rollback_of),
            "replaced_version": metadata.prop(e, "from_version"),
            "reason": metadata.prop(e, "reason"),
            "user": metadata.prop(e, "user"),
        }
    return record


def gate_fields(snap: Snapshot, evaluator: int | None, blessing, checks: list | None) -> dict:
    """verdict (BLESSED / NOT_BLESSED / UNVALIDATED), gates (every gate of the candidate's run) and
    forced_blessing (None); `checks` None: not read (models without metrics)."""
    fields = {"verdict": None, "gates": [], "forced_blessing": None}
    if evaluator is None or checks is None:
        return fields
    from pipeline.publish import verdicts

    fields["gates"] = verdicts.gate_results(snap.store, snap.run_of.get(evaluator), checks=checks)
    evaluation = [g for g in fields["gates"] if g["gate"] == verdicts.EVALUATION]
    fields["verdict"] = evaluation[0]["verdict"] if evaluation else None
    return fields


def list_models(snap: Snapshot, with_metrics: bool = True) -> list[dict]:
    """Every published version, newest first."""
    versions = pushed_versions(snap)
    return [version_record(snap, versions, v, with_metrics) for v in reversed(versions)]


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
                **gate_fields(snap, evaluator, blessings[0] if blessings else None, row["failed_checks"]),
            }
        )
    return refused


# ---------------------------------------------------------------------------------------------
# lineage


def _row_counts(statistics) -> dict[str, int]:
    """{split: examples} from a StatisticsGen artifact (FeatureStats.pb per split)."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    counts = {}
    if statistics is None:
        return counts
    for split in _split_names(statistics):
        path = Path(statistics.uri) / f"Split-{split}" / "FeatureStats.pb"
        if path.is_file():
            stats = statistics_pb2.DatasetFeatureStatisticsList()
            stats.ParseFromString(path.read_bytes())
            if stats.datasets:
                counts[split] = int(stats.datasets[0].num_examples)
    return counts


def _split_names(artifact) -> list[str]:
    try:
        return list(json.loads(metadata.prop(artifact, "split_names", "[]")))
    except ValueError:
        return []


def _anomalies(artifact) -> dict[str, list[str]]:
    """{split: ["feature 'x': description", ...]} from an ExampleAnomalies artifact."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    found = {}
    for split in _split_names(artifact):
        path = Path(artifact.uri) / f"Split-{split}" / "SchemaDiff.pb"
        if not path.is_file():
            continue
        anomalies = anomalies_pb2.Anomalies()
        anomalies.ParseFromString(path.read_bytes())
        found[split] = [
            f"feature '{name}': {info.description or info.short_description}"
            for name, info in sorted(anomalies.anomaly_info.items())
        ]
    return found


def _drift_check(snap: Snapshot, statistics) -> dict | None:
    """The DriftCheck (pipeline/dag/components_drift.py) of these statistics against the previous span's, if any ran."""
    if statistics is None:
        return None
    for execution in sorted(_consumers_of_node(snap, statistics, "DriftCheck"), reverse=True):  # newest first
        if statistics.id not in snap.inputs.get(execution, {}).get("statistics", []):
            continue  # these statistics were that check's previous span
        for artifact in snap.output_artifacts(execution, "drift"):
            try:
                checks = json.loads(metadata.prop(artifact, "checks", "[]"))
            except ValueError:
                checks = []
            previous = metadata.prop(artifact, "previous_span", -1)
            return {
                "uri": artifact.uri,
                "mode": metadata.prop(artifact, "mode"),
                "state": snap.state(execution),
                "previous_span": None if previous in (None, -1) else int(previous),
                "alert": metadata.prop(artifact, "drift_alert") == 1,
                "alerts": [c for c in checks if c.get("alert")],
            }
    return None


def _consumers_of_node(snap: Snapshot, artifact, node_id: str) -> list[int]:
    return [i for i in snap.consumers.get(artifact.id, []) if snap.node(i) == node_id]


def lineage(snap: Snapshot, version: int) -> dict:
    """The provenance chain of one published version, from the pushed directory back to the data."""
    versions = pushed_versions(snap)
    by_version = {v.version: v for v in versions}
    v = by_version.get(str(version))
    if v is None:
        known = ", ".join(by_version) or "none yet"
        raise RegistryError(
            f"version {version} was never pushed (known versions: {known}); see `mlpipe models`", code=2
        )
    config = snap.config
    source = by_version[original_version(by_version, v.version)]
    record = version_record(snap, versions, v)
    pusher = source.execution_id
    chain: dict[str, Any] = {"version": int(v.version), "published": record}
    chain["pushed"] = {
        "path": record["path"],
        "exists": (config.serving_model_dir / v.version).is_dir(),
        "artifact_id": v.pushed_model.id,
        "uri": v.pushed_model.uri,
    }
    chain["pusher"] = snap.execution_summary(pusher)
    chain["rollback"] = record["rollback"]
    # Evaluation.
    evaluator = snap.producing_execution(source.blessing) if source.blessing is not None else None
    chain["evaluation"] = {
        "execution": snap.execution_summary(evaluator),
        "blessed": metadata.prop(source.blessing, "blessed") == 1 if source.blessing is not None else None,
        "blessing_uri": source.blessing.uri if source.blessing is not None else None,
        "checks": record["checks"] if not v.is_rollback else version_record(snap, versions, source)["checks"],
        "thresholds": recorded_thresholds(snap.executions[evaluator]) if evaluator is not None else [],
        "baseline": baseline_version(snap, versions, source.blessing),
        "verdict": record["verdict"],
    }
    chain["gates"] = record["gates"]  # every gate of the candidate's run, then `bless --force` overrides
    chain["forced_blessing"] = record["forced_blessing"]
    # Model and Trainer.
    model = source.model
    trainer = snap.producing_execution(model) if model is not None else None
    trainer_exec = snap.executions.get(trainer) if trainer is not None else None
    custom_config = _json_prop(trainer_exec, "custom_config") if trainer_exec is not None else None
    custom_config = custom_config if isinstance(custom_config, dict) else {}
    chain["model"] = {
        "artifact_id": model.id if model is not None else None,
        "uri": model.uri if model is not None else None,
        "trainer": snap.execution_summary(trainer),
        "train_args": _json_prop(trainer_exec, "train_args") if trainer_exec is not None else None,
        "eval_args": _json_prop(trainer_exec, "eval_args") if trainer_exec is not None else None,
        "hyperparameters": {
            k: v_ for k, v_ in custom_config.items() if k not in ("models_fingerprint", "git_commit", "mlpipe_model")
        },
        "model_settings": custom_config.get("mlpipe_model"),  # [model]: module file or import paths, label, ...
        "models_fingerprint": custom_config.get("models_fingerprint"),
        "git_commit": custom_config.get("git_commit")
        or (metadata.prop(trainer_exec, "git_commit") if trainer_exec is not None else None),
        "run_fn": metadata.prop(trainer_exec, "run_fn") if trainer_exec is not None else None,
        "warm_started_from": None,
    }
    base_models = snap.input_artifacts(trainer, "base_model") if trainer is not None else []
    if base_models:
        pushed = [
            x.version for x in versions if x.model is not None and x.model.id == base_models[0].id and not x.is_rollback
        ]
        chain["model"]["warm_started_from"] = {
            "model_id": base_models[0].id,
            "uri": base_models[0].uri,
            "version": int(pushed[0]) if pushed else None,
        }
    # Transform.
    graphs = snap.input_artifacts(trainer, "transform_graph") if trainer is not None else []
    transform = snap.producing_execution(graphs[0]) if graphs else None
    transform_exec = snap.executions.get(transform) if transform is not None else None
    transform_config = _json_prop(transform_exec, "custom_config") if transform_exec is not None else None
    chain["transform"] = {
        "graph_uri": graphs[0].uri if graphs else None,
        "execution": snap.execution_summary(transform),
        "preprocessing_fn": metadata.prop(transform_exec, "preprocessing_fn") if transform_exec is not None else None,
        "models_fingerprint": transform_config.get("models_fingerprint")
        if isinstance(transform_config, dict)
        else None,
    }
    # Examples, with their statistics, schema and anomalies.
    examples = []
    for artifact in example_artifacts_of_model(snap, model):
        gen = snap.producing_execution(artifact)
        gen_exec = snap.executions.get(gen) if gen is not None else None
        stats_execs = _consumers_of_node(snap, artifact, "StatisticsGen")
        statistics = None
        for i in stats_execs:
            out = snap.output_artifacts(i, "statistics")
            if out:
                statistics = out[0]
                break
        examples.append(
            {
                "artifact_id": artifact.id,
                "uri": artifact.uri,
                "span": int(metadata.prop(artifact, "span", 0) or 0),
                "version": metadata.prop(artifact, "version"),
                "splits": _split_names(artifact),
                "row_counts": _row_counts(statistics),
                "input_base": metadata.prop(gen_exec, "input_base") if gen_exec is not None else None,
                "input_fingerprint": metadata.prop(gen_exec, "input_fingerprint") if gen_exec is not None else None,
                "example_gen": snap.execution_summary(gen),
                "statistics_uri": statistics.uri if statistics is not None else None,
                "drift_check": _drift_check(snap, statistics),
            }
        )
    chain["examples"] = examples
    schemas = snap.input_artifacts(trainer, "schema") if trainer is not None else []
    schema = schemas[0] if schemas else None
    schema_gen = snap.producing_execution(schema) if schema is not None else None
    chain["schema"] = {
        "uri": schema.uri if schema is not None else None,
        "produced_by": snap.execution_summary(schema_gen),
    }
    anomalies_rec = []
    if schema is not None:
        for validator in _consumers_of_node(snap, schema, "ExampleValidator"):
            for artifact in snap.output_artifacts(validator, "anomalies"):
                stats_in = snap.input_artifacts(validator, "statistics")
                if examples and stats_in and stats_in[0].uri not in {e["statistics_uri"] for e in examples}:
                    continue  # validated other data
                anomalies_rec.append({"uri": artifact.uri, "by_split": _anomalies(artifact)})
    chain["anomalies"] = list({a["uri"]: a for a in anomalies_rec}.values())
    return chain


def versions_trained_on_span(snap: Snapshot, span: int) -> list[int]:
    """Published versions whose training Examples include `span`."""
    return [
        int(v.version) for v in pushed_versions(snap) if span in spans_of(example_artifacts_of_model(snap, v.model))
    ]


# ---------------------------------------------------------------------------------------------
# rollback


@dataclasses.dataclass
class RollbackPlan:
    target: int  # the version to serve again
    current: int | None  # what serving loads now (the highest integer directory)
    new_version: int  # the directory it is re-published as
    source_dir: Path
    new_dir: Path


def plan_rollback(snap: Snapshot, to: int | None) -> RollbackPlan:
    config = snap.config
    versions = pushed_versions(snap)
    by_version = {v.version: v for v in versions}
    on_disk = serving_versions(config)
    if not on_disk:
        raise RegistryError(f"nothing is published in {config.serving_model_dir}: there is nothing to roll back")
    current = on_disk[-1]
    current_origin = original_version(by_version, str(current))
    if to is None:
        earlier = [
            v
            for v in versions
            if not v.is_rollback
            and int(v.version) < int(current_origin)
            and v.version != current_origin
            and (config.serving_model_dir / v.version).is_dir()
        ]
        if not earlier:
            raise RegistryError(
                f"no blessed version before the current one ({current}); " "pass --to VERSION (see `mlpipe models`)"
            )
        target = int(earlier[-1].version)
    else:
        target = to
        if str(target) not in by_version:
            if target in on_disk:
                raise RegistryError(
                    f"version {target} is in {config.serving_model_dir} but MLMD has no blessed push of it; "
                    "refusing to serve a never-blessed model"
                )
            known = ", ".join(v.version for v in versions) or "none yet"
            raise RegistryError(f"unknown version {target} (published versions: {known}); see `mlpipe models`", code=2)
        blessing = by_version[str(target)].blessing
        if blessing is None or metadata.prop(blessing, "blessed") != 1:
            raise RegistryError(f"version {target} was never blessed by the Evaluator; refusing to serve it")
    if target == current:
        raise RegistryError(f"version {target} is already the one served (the highest version)")
    source_dir = config.serving_model_dir / str(target)
    if not (source_dir / "saved_model.pb").is_file():
        raise RegistryError(f"{source_dir} is missing (no saved_model.pb); cannot re-publish version {target}")
    new_version = current + 1
    return RollbackPlan(target, current, new_version, source_dir, config.serving_model_dir / str(new_version))


def rollback(config: Config, to: int | None, reason: str, dry_run: bool = False) -> dict:
    """Re-publishes an earlier blessed version as the new highest version and records it in MLMD."""
    if not reason.strip():
        raise RegistryError("--reason must say why (it is kept in MLMD as the audit trail)")
    snap = open_snapshot(config)
    if snap is None:
        raise RegistryError(f"no pipeline has run in {config.workspace_path} yet: nothing to roll back")
    plan = plan_rollback(snap, to)
    result = {
        "dry_run": dry_run,
        "to_version": plan.target,
        "replaced_version": plan.current,
        "new_version": plan.new_version,
        "path": str(plan.new_dir),
        "reason": reason,
        "user": _user(),
        "execution_id": None,
        "models_config": None,
    }
    if dry_run:
        return result
    _clean_stale_rollback_dirs(config.serving_model_dir)
    # Copy under a non-integer name (servers ignore it), then one atomic rename into place.
    tmp = config.serving_model_dir / f"{ROLLBACK_TMP_PREFIX}{os.getpid()}-{plan.target}"
    shutil.copytree(plan.source_dir, tmp)
    try:
        if plan.new_dir.exists():
            raise RegistryError(f"{plan.new_dir} appeared while copying (a push raced this rollback); run it again")
        os.rename(tmp, plan.new_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    try:
        result["execution_id"] = _with_retries(lambda: _record_rollback(snap, plan, reason, result["user"]))
    except Exception as e:  # no audit record, no rollback: take the directory back out
        undo = config.serving_model_dir / f"{ROLLBACK_TMP_PREFIX}{os.getpid()}-undo"
        os.rename(plan.new_dir, undo)
        shutil.rmtree(undo, ignore_errors=True)
        raise RegistryError(f"could not record the rollback in MLMD ({e}); nothing was changed, try again") from None
    if models_config_path(config).is_file():  # keep the labels config loading the new latest
        result["models_config"] = str(write_models_config(config, read_labels(config)))
    return result


def _with_retries(action, attempts: int = 5):
    """Runs `action`, retrying while a pipeline run holds SQLite's write lock."""
    for attempt in range(attempts):
        try:
            return action()
        except Exception as e:
            if "lock" not in str(e).lower() and "busy" not in str(e).lower() or attempt == attempts - 1:
                raise
            time.sleep(1.0 * (attempt + 1))


ROLLBACK_TMP_PREFIX = ".rollback-"  # + "<pid>-<target version>"; not an integer, so never loaded


def _clean_stale_rollback_dirs(base: Path) -> None:
    """Removes temp copies left by rollbacks that were killed (their pid is gone)."""
    for path in base.glob(f"{ROLLBACK_TMP_PREFIX}*"):
        pid = path.name[len(ROLLBACK_TMP_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment
        return os.environ.get("USER", "unknown")


def _record_rollback(snap: Snapshot, plan: RollbackPlan, reason: str, user: str) -> int:
    config = snap.config
    by_version = {v.version: v for v in pushed_versions(snap)}
    target = by_version[str(plan.target)]
    store = metadata.open_store(config, read_only=False)
    inputs = [("target_pushed_model", target.pushed_model)]
    if target.model is not None:
        inputs.append(("model", target.model))
    replaced = by_version.get(str(plan.current))
    if replaced is not None:
        inputs.append(("replaced_pushed_model", replaced.pushed_model))
        if replaced.model is not None and (target.model is None or replaced.model.id != target.model.id):
            inputs.append(("replaced_model", replaced.model))
    pushed_type = store.get_artifact_type("PushedModel")
    new = metadata_store_pb2.Artifact(
        type_id=pushed_type.id, uri=str(plan.new_dir), state=metadata_store_pb2.Artifact.LIVE
    )
    new.custom_properties["pushed"].int_value = 1
    new.custom_properties["pushed_version"].string_value = str(plan.new_version)
    new.custom_properties["pushed_destination"].string_value = str(plan.new_dir)
    new.custom_properties["rollback_of"].string_value = str(plan.target)
    return metadata.put_registry_execution(
        store,
        metadata.ROLLBACK_EXECUTION_TYPE,
        config.pipeline_name,
        {
            "reason": reason,
            "user": user,
            "to_version": str(plan.target),
            "from_version": str(plan.current) if plan.current is not None else "",
            "new_version": str(plan.new_version),
            "timestamp": iso(int(time.time() * 1000)),
        },
        inputs,
        [("pushed_model", new)],
    )


# ---------------------------------------------------------------------------------------------
# labels


def set_label(config: Config, name: str, version: int) -> Path:
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise RegistryError(f"label name must be letters, digits, '-' or '_', got {name!r}", code=2)
    on_disk = serving_versions(config)
    if version not in on_disk:
        available = ", ".join(map(str, on_disk)) or "none yet"
        raise RegistryError(f"version {version} is not in {config.serving_model_dir} (available: {available})", code=2)
    labels = read_labels(config)
    labels[name] = version
    return write_models_config(config, labels)


def remove_label(config: Config, name: str) -> Path:
    labels = read_labels(config)
    if name not in labels:
        raise RegistryError(f"no label {name!r} (labels: {', '.join(labels) or 'none'})", code=2)
    del labels[name]
    return write_models_config(config, labels)
