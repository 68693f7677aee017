"""Read-only questions to ML Metadata, in TFX's terms: the one module every CLI command asks.

TFX records per run: a `pipeline_run` context (named by the run id, an ISO timestamp), a `node`
context per component (`<pipeline>.<node id>`), executions linked to both, and artifacts linked to
executions by INPUT/OUTPUT events keyed by the component's channel names.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterable

import ml_metadata as mlmd
from ml_metadata.proto import metadata_store_pb2

from pipeline.config import Config
from pipeline.metadata.connection import (  # noqa: F401 (the connection API, used as metadata.X)
    MetadataConnectionError,
    check_connection,
    connection_config,
    mysql_connect,
    redacting,
    sqlite_connection_config,
)

State = metadata_store_pb2.Execution.State
STATE_NAMES = {
    State.NEW: "new",
    State.RUNNING: "running",
    State.COMPLETE: "ran",
    State.FAILED: "failed",
    State.CACHED: "cached",
    State.CANCELED: "canceled",
    State.UNKNOWN: "unknown",
}


@dataclasses.dataclass
class NodeExecution:
    node_id: str
    state: str  # one of STATE_NAMES' values
    start_ms: int
    end_ms: int
    execution: metadata_store_pb2.Execution

    @property
    def seconds(self) -> float:
        return max(0, self.end_ms - self.start_ms) / 1000.0


def open_store(target: "Config | str | Path", read_only: bool = True) -> mlmd.MetadataStore | None:
    """The store of a Config (or of a SQLite file path), or None if a SQLite store does not exist yet.

    A MySQL store is always there once the settings work (MLMD creates its tables on first use).
    """
    if isinstance(target, Config):
        if target.metadata.backend == "sqlite":
            return open_store(target.metadata_path, read_only)
        check_connection(target)
        try:
            return mlmd.MetadataStore(connection_config(target))
        except RuntimeError as e:  # MLMD's connect errors carry no cause; the check above passed
            raise MetadataConnectionError(
                "metadata.host",
                f"MLMD cannot use MySQL at {target.metadata.host}:" f"{target.metadata.port}: {str(e)[:200]}",
            ) from None
    if read_only and not Path(target).is_file():
        return None
    return mlmd.MetadataStore(sqlite_connection_config(target, read_only))


def pipeline_runs(store: mlmd.MetadataStore, pipeline_name: str) -> list[metadata_store_pb2.Context]:
    """The pipeline's run contexts, newest first."""
    pipeline = store.get_context_by_type_and_name("pipeline", pipeline_name)
    if pipeline is None:
        return []
    runs = [c for c in store.get_children_contexts_by_context(pipeline.id) if c.type == "pipeline_run"]
    return sorted(runs, key=lambda c: (c.create_time_since_epoch, c.id), reverse=True)


def node_ids_by_execution(store: mlmd.MetadataStore, pipeline_name: str) -> dict[int, str]:
    prefix = f"{pipeline_name}."
    result = {}
    for node in store.get_contexts_by_type("node"):
        if node.name.startswith(prefix):
            for execution in store.get_executions_by_context(node.id):
                result[execution.id] = node.name[len(prefix) :]
    return result


def run_executions(
    store: mlmd.MetadataStore, pipeline_name: str, run: metadata_store_pb2.Context
) -> list[NodeExecution]:
    """The run's executions in the order they started."""
    node_ids = node_ids_by_execution(store, pipeline_name)
    executions = sorted(store.get_executions_by_context(run.id), key=lambda e: e.id)
    return [
        NodeExecution(
            node_id=node_ids.get(e.id, e.type.rsplit(".", 1)[-1]),
            state=STATE_NAMES.get(e.last_known_state, "unknown"),
            start_ms=e.create_time_since_epoch,
            end_ms=e.last_update_time_since_epoch,
            execution=e,
        )
        for e in executions
    ]


# --- The one walk over MLMD events: the registry's Snapshot and the live-store queries below both use it.

Event = metadata_store_pb2.Event
INPUT_EVENTS = (Event.INPUT, Event.DECLARED_INPUT)
OUTPUT_EVENTS = (Event.OUTPUT, Event.DECLARED_OUTPUT)


def event_key(event: metadata_store_pb2.Event) -> str:
    """The channel key (e.g. "examples", "model") an event connects its artifact through."""
    return event.path.steps[0].key if event.path.steps else ""


def group_events(
    events: Iterable[metadata_store_pb2.Event], event_types: Iterable[int]
) -> dict[int, dict[str, list[int]]]:
    """{execution id: {channel key: [artifact ids]}} of the events of the given types, in event order."""
    wanted = set(event_types)
    grouped: dict[int, dict[str, list[int]]] = {}
    for event in events:
        if event.type in wanted:
            grouped.setdefault(event.execution_id, {}).setdefault(event_key(event), []).append(event.artifact_id)
    return grouped


def training_examples(trainer: int | None, inputs_of, producer_of, node_of) -> list:
    """The Examples a Trainer execution's input was derived from (through Transform), or its direct input.

    `inputs_of(execution, key)` -> artifacts, `producer_of(artifact)` -> execution or None and
    `node_of(execution)` -> node id read either a Snapshot or the live store."""
    if trainer is None:
        return []
    found = []
    for transformed in inputs_of(trainer, "examples"):
        transform = producer_of(transformed)
        if transform is not None and node_of(transform) == "Transform":
            found += inputs_of(transform, "examples")
        else:
            found.append(transformed)
    return list({a.id: a for a in found}.values())


def artifacts_by_key(
    store: mlmd.MetadataStore, execution_id: int, event_types: Iterable[int]
) -> dict[str, list[metadata_store_pb2.Artifact]]:
    """{channel key: artifacts} of one execution's events of the given types (INPUT, OUTPUT)."""
    ids = group_events(store.get_events_by_execution_ids([execution_id]), event_types).get(execution_id, {})
    artifacts = artifacts_by_id(store, [a for found in ids.values() for a in found])
    return {key: [artifacts[a] for a in found if a in artifacts] for key, found in ids.items()}


def outputs(store: mlmd.MetadataStore, execution_id: int) -> dict[str, list[metadata_store_pb2.Artifact]]:
    return artifacts_by_key(store, execution_id, OUTPUT_EVENTS)


def inputs(store: mlmd.MetadataStore, execution_id: int) -> dict[str, list[metadata_store_pb2.Artifact]]:
    return artifacts_by_key(store, execution_id, INPUT_EVENTS)


def custom_property(item, name: str, default=None):
    """A custom property's value (int, double or string), or `default` if it is not set."""
    if name not in item.custom_properties:
        return default
    value = item.custom_properties[name]
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else default


# --- Registry queries (mlpipe runs/models/lineage/rollback); see pipeline/metadata/ (snapshot, runs, versions, lineage). ---

ROLLBACK_EXECUTION_TYPE = "mlpipe.Rollback"
FORCED_BLESSING_EXECUTION_TYPE = "mlpipe.ForcedBlessing"  # `mlpipe bless --force` (pipeline/publish/force.py)
REGISTRY_CONTEXT_TYPE = "mlpipe.Registry"


def prop(item, name: str, default=None):
    """A property's value, looked up in `properties` then `custom_properties`; `default` if unset."""
    for props in (item.properties, item.custom_properties):
        if name in props:
            value = props[name]
            kind = value.WhichOneof("value")
            if kind in ("int_value", "double_value", "string_value", "bool_value"):
                return getattr(value, kind)
    return default


def executions_of_type(store: mlmd.MetadataStore, type_name: str) -> list[metadata_store_pb2.Execution]:
    """Executions of a type that may not be registered yet (then: none)."""
    try:
        return list(store.get_executions_by_type(type_name))
    except mlmd.errors.NotFoundError:
        return []


def events_of(store: mlmd.MetadataStore, execution_ids: list[int]) -> list[metadata_store_pb2.Event]:
    return list(store.get_events_by_execution_ids(execution_ids)) if execution_ids else []


def artifacts_by_id(store: mlmd.MetadataStore, ids: Iterable[int]) -> dict[int, metadata_store_pb2.Artifact]:
    ids = sorted(set(ids))
    return {a.id: a for a in store.get_artifacts_by_id(ids)} if ids else {}


def run_names_by_execution(store: mlmd.MetadataStore, pipeline_name: str) -> dict[int, str]:
    """{execution id: the pipeline_run context name (run id) it belongs to}."""
    result = {}
    for run in pipeline_runs(store, pipeline_name):
        for execution in store.get_executions_by_context(run.id):
            result[execution.id] = run.name
    return result


def put_registry_execution(
    store: mlmd.MetadataStore,
    type_name: str,
    pipeline_name: str,
    properties: dict,
    inputs: list[tuple[str, metadata_store_pb2.Artifact]],
    outputs: list[tuple[str, metadata_store_pb2.Artifact]],
) -> int:
    """Records one completed execution of mlpipe's own `type_name` (store opened READWRITE).

    It is linked to existing artifacts by INPUT events and to new or existing ones by OUTPUT
    events, each keyed like TFX channels, and associated with an `mlpipe.Registry` context named
    after the pipeline (not TFX's pipeline context, so TFX's own resolution never sees it).
    Returns the execution id.
    """
    exec_type = metadata_store_pb2.ExecutionType(name=type_name)
    type_id = store.put_execution_type(exec_type, can_add_fields=True)
    context_type_id = store.put_context_type(metadata_store_pb2.ContextType(name=REGISTRY_CONTEXT_TYPE))
    context = store.get_context_by_type_and_name(REGISTRY_CONTEXT_TYPE, pipeline_name)
    if context is None:
        context = metadata_store_pb2.Context(type_id=context_type_id, name=pipeline_name)
    execution = metadata_store_pb2.Execution(type_id=type_id, last_known_state=State.COMPLETE)
    for key, value in properties.items():
        target = execution.custom_properties[key]
        if isinstance(value, bool) or isinstance(value, int):
            target.int_value = int(value)
        elif isinstance(value, float):
            target.double_value = value
        else:
            target.string_value = str(value)
    Event = metadata_store_pb2.Event
    pairs = []
    for event_type, items in ((Event.INPUT, inputs), (Event.OUTPUT, outputs)):
        for key, artifact in items:
            event = Event(type=event_type)
            event.path.steps.add().key = key
            event.path.steps.add().index = 0
            pairs.append((artifact, event))
    execution_id, _, _ = store.put_execution(execution, pairs, [context], reuse_context_if_already_exist=True)
    return execution_id


def store_initialized(target: "Config | str | Path") -> bool:
    """Whether the store holds an MLMD schema yet (a first run may have just created it).

    A read-only MLMD connection cannot create the schema, so opening an empty SQLite file fails.
    A MySQL store: always (opening it creates the schema).
    """
    import sqlite3

    if isinstance(target, Config):
        if target.metadata.backend != "sqlite":
            return True
        target = target.metadata_path
    path = target
    if not Path(path).is_file():
        return False
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
            row = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='MLMDEnv'").fetchone()
        return row is not None
    except sqlite3.Error:
        return False


# --- Spans and continuous training (pipeline/cli/retrain.py) ---


def producer_execution_id(store: mlmd.MetadataStore, artifact_id: int) -> int | None:
    """The id of the execution that output the artifact, or None."""
    for event in store.get_events_by_artifact_ids([artifact_id]):
        if event.type in OUTPUT_EVENTS:
            return event.execution_id
    return None


def span_of(artifact: metadata_store_pb2.Artifact) -> int:
    """The span of an Examples artifact (its `span` property, which ExampleGen sets), 0 when unset."""
    return int(prop(artifact, "span", 0) or 0)


def examples_spans(artifacts: Iterable[metadata_store_pb2.Artifact]) -> list[int]:
    """The distinct spans of Examples artifacts, ascending."""
    return sorted({span_of(a) for a in artifacts})


def trainer_spans(store: mlmd.MetadataStore, trainer_execution_id: int) -> list[int]:
    """Spans a Trainer execution trained on: the raw Examples behind its transformed examples."""
    raw = training_examples(
        trainer_execution_id,
        lambda execution, key: inputs(store, execution).get(key, []),
        lambda artifact: producer_execution_id(store, artifact.id),
        lambda execution: store.get_executions_by_id([execution])[0].type.rsplit(".", 1)[-1],
    )
    return examples_spans(raw)


@dataclasses.dataclass
class TrainedRun:
    run_id: str
    spans: list[int]  # spans the Trainer trained on
    executions: list[NodeExecution]


def last_trained_run(store: mlmd.MetadataStore, pipeline_name: str) -> TrainedRun | None:
    """The newest run whose every execution completed (ran or cached) and that has a Trainer.

    A run killed or failed part-way does not count, so a retrain after it trains and pushes again.
    """
    for run in pipeline_runs(store, pipeline_name):
        executions = run_executions(store, pipeline_name, run)
        trainers = [e for e in executions if e.node_id == "Trainer"]
        if trainers and all(e.state in ("ran", "cached") for e in executions):
            return TrainedRun(run.name, trainer_spans(store, trainers[0].execution.id), executions)
    return None
