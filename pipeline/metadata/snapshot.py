"""One in-memory snapshot of the pipeline's ML Metadata graph: executions, events and artifacts, read once.

Everything the registry commands show (runs, versions, lineage) is derived from this snapshot and the
serving model directory; nothing is cached elsewhere. Queries open MLMD read-only so they can run while
a pipeline run is writing.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

from pipeline.config import Config
from pipeline.metadata import queries as metadata
from pipeline.metadata.connection import retry_on_lock


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


def json_prop(item, name: str) -> Any:
    """An execution property TFX stores as JSON text (custom_config, train_args, eval_config)."""
    raw = metadata.prop(item, name)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except (TypeError, ValueError):
        return raw


def version_str(value) -> str | None:
    return None if value in (None, "") else str(value)


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
        self.consumers: dict[int, list[int]] = {}
        self.producer: dict[int, int] = {}  # artifact id -> first execution that output it
        events = sorted(metadata.events_of(self.store, ids), key=lambda e: e.execution_id)
        self.inputs = metadata.group_events(events, metadata.INPUT_EVENTS)
        self.outputs = metadata.group_events(events, metadata.OUTPUT_EVENTS)
        for event in events:
            if event.type in metadata.INPUT_EVENTS:
                self.consumers.setdefault(event.artifact_id, []).append(event.execution_id)
            elif event.type in metadata.OUTPUT_EVENTS:
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

    def read() -> Snapshot | None:
        if not metadata.store_initialized(config):
            return None
        store = metadata.open_store(config)
        return None if store is None else Snapshot(store, config)

    return retry_on_lock(read, attempts, delay=0.5)
