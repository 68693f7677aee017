"""Records a fully cached run again the way TFX records one, without TFX (pipeline/ops/unchanged.py decides when).

What TFX's launcher writes for a component it finds cached (tfx/orchestration/portable/launcher.py, steps 5-8;
execution_publish_utils.publish_cached_executions; execution_lib.put_executions): one execution of the
component's type, its exec properties as custom properties, state CACHED, INPUT events to the resolved inputs and
OUTPUT events to the cached outputs, associated with the pipeline, the run, the node and the execution_cache
contexts; a resolver node gets a COMPLETE execution with its INTERNAL_OUTPUT events. The run itself is a
`pipeline_run` context (named by the run's start time, as LocalDagRunner names it) whose parent is the pipeline's.

`copy_run` writes exactly that for every execution of a run that was itself fully cached, under a new run
context; `watermark` is what tells that nothing was written to the store since, and `outputs_present` that
the cached outputs are still there.
"""

from __future__ import annotations

import datetime
import os
import uuid

import ml_metadata as mlmd
from ml_metadata.proto import metadata_store_pb2

PIPELINE_RUN = "pipeline_run"
_OUTPUT = metadata_store_pb2.Event.OUTPUT


def watermark(store: mlmd.MetadataStore) -> list[int]:
    """The newest id and the newest update time of the store's executions, artifacts and contexts.

    Any write (a new run, a blessing, a label or promotion, a rollback record) moves at least one of them.
    """
    marks = []
    for get in (store.get_executions, store.get_artifacts, store.get_contexts):
        newest = get(list_options=mlmd.ListOptions(limit=1, order_by=mlmd.OrderByField.ID, is_asc=False))
        updated = get(list_options=mlmd.ListOptions(limit=1, order_by=mlmd.OrderByField.UPDATE_TIME, is_asc=False))
        marks += [newest[0].id if newest else 0, updated[0].last_update_time_since_epoch if updated else 0]
    return marks


def outputs_present(store: mlmd.MetadataStore, run: metadata_store_pb2.Context) -> bool:
    """Whether every output of the run's executions is still on the local disk: TFX re-uses cached outputs only
    then (tfx/orchestration/portable/cache_utils.py get_cached_outputs: artifact_utils.verify_artifacts)."""
    executions = [e.id for e in store.get_executions_by_context(run.id)]
    outputs = {e.artifact_id for e in store.get_events_by_execution_ids(executions) if e.type == _OUTPUT}
    for artifact in store.get_artifacts_by_id(sorted(outputs)):
        if "://" in artifact.uri or not os.path.exists(artifact.uri):
            return False
    return True


def copy_run(store: mlmd.MetadataStore, pipeline_name: str, source: metadata_store_pb2.Context) -> str:
    """Records a new run of `pipeline_name` with the executions of `source` (a fully cached run); returns its name."""
    pipeline = store.get_context_by_type_and_name("pipeline", pipeline_name)
    run_type = store.get_context_type(PIPELINE_RUN)
    name = datetime.datetime.now().isoformat()  # LocalDagRunner's pipeline_run_id
    [run_id] = store.put_contexts([metadata_store_pb2.Context(type_id=run_type.id, name=name)])
    store.put_parent_contexts([metadata_store_pb2.ParentContext(child_id=run_id, parent_id=pipeline.id)])
    [run] = store.get_contexts_by_id([run_id])
    for old in sorted(store.get_executions_by_context(source.id), key=lambda e: e.id):
        new = metadata_store_pb2.Execution(
            type_id=old.type_id, name=str(uuid.uuid4()), last_known_state=old.last_known_state
        )
        for key, value in old.properties.items():
            new.properties[key].CopyFrom(value)
        for key, value in old.custom_properties.items():
            new.custom_properties[key].CopyFrom(value)
        contexts = [c for c in store.get_contexts_by_execution(old.id) if c.id != source.id] + [run]
        events = store.get_events_by_execution_ids([old.id])
        artifacts = {a.id: a for a in store.get_artifacts_by_id(sorted({e.artifact_id for e in events}))}
        pairs = [
            (artifacts[e.artifact_id], metadata_store_pb2.Event(artifact_id=e.artifact_id, type=e.type, path=e.path))
            for e in events
        ]
        store.put_execution(new, pairs, contexts, reuse_context_if_already_exist=True)
    return name
