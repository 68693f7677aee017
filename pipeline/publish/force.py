"""`mlpipe bless --force RUN --reason TEXT`: the audited override of a refused candidate.

The candidate of run RUN (refused by TFMA's thresholds, UNVALIDATED, or blocked by the replay gate)
is pushed through the Pusher's own atomic publish (pipeline/publish/atomic.py atomic_push, with the same
assets.extra files) and recorded as an `mlpipe.ForcedBlessing` execution in ML Metadata: who,
when, why, what it overrode; inputs the model and its blessings, output the PushedModel, so
`models` and `lineage` list the version like any push. A candidate that failed infra validation
(it cannot load or answer) is never pushed, forced or not.
"""

from __future__ import annotations

import os
import time

from ml_metadata.proto import metadata_store_pb2

from pipeline.config import Config
from pipeline.metadata import queries as metadata
from pipeline.metadata import verdicts
from pipeline.metadata.connection import retry_on_lock
from pipeline.metadata.snapshot import RegistryError, Snapshot, iso, open_snapshot
from pipeline.metadata.versions import pushed_versions
from pipeline.publish import serving_assets
from pipeline.publish.atomic import atomic_push, withdraw
from pipeline.publish.rollback import user_name
from pipeline.publish.versions import models_config_path, read_labels, write_models_config


def _run_executions(snap: Snapshot, run_id: str) -> dict[str, int]:
    return {snap.node(i): i for i, r in snap.run_of.items() if r == run_id and i in snap.executions}


def force_bless(config: Config, run_id: str, reason: str) -> dict:
    """Pushes run `run_id`'s candidate despite its verdict; returns what was done (version, path, execution)."""
    if not reason.strip():
        raise RegistryError("--reason must say why the verdict is overridden (it is kept in MLMD)", code=2)
    snap = open_snapshot(config)
    if snap is None:
        raise RegistryError(f"no pipeline has run in {config.workspace_path} yet: nothing to bless", code=2)
    nodes = _run_executions(snap, run_id)
    if not nodes:
        known = ", ".join(r.name for r in snap.runs[:5]) or "none yet"
        raise RegistryError(f"unknown run {run_id!r} (latest runs: {known}); see `mlpipe runs`", code=2)
    evaluator = nodes.get("Evaluator")
    models = snap.input_artifacts(evaluator, "model") if evaluator is not None else []
    if not models:
        raise RegistryError(f"run {run_id} has no evaluated candidate (its Evaluator did not run)")
    model = models[0]
    gates = verdicts.gate_results(snap.store, run_id)
    infra = next((g for g in gates if g["gate"] == verdicts.INFRA), None)
    if infra is not None and infra["verdict"] != "PASSED":
        raise RegistryError(
            f"run {run_id}'s candidate failed infra validation ({'; '.join(infra['reasons'])}): "
            "a model that cannot load or answer is never pushed, forced or not"
        )
    for v in pushed_versions(snap):
        if v.model is not None and v.model.id == model.id and not v.is_rollback:
            raise RegistryError(f"run {run_id}'s candidate is already pushed as version {v.version}")
    overridden = [
        f"{g['gate']} {g['verdict']}" for g in gates if g["verdict"] in ("NOT_BLESSED", "UNVALIDATED", "FAILED")
    ]
    if not overridden:
        raise RegistryError(f"run {run_id}'s candidate was refused by no gate: nothing to override")
    blessings = snap.output_artifacts(evaluator, "blessing")
    model_path = os.path.join(model.uri, "Format-Serving")
    uuid = serving_assets.new_mlmd_uuid()
    log_dir = str(config.request_log_dir)
    extra = serving_assets.extra_files(uuid, {serving_assets.REQUEST_LOG_DIR_KEY: log_dir}, model_path)
    version, path = atomic_push(model_path, str(config.serving_model_dir), extra)
    record = {
        "run_id": run_id,
        "version": int(version),
        "path": path,
        "user": user_name(),
        "time": iso(int(time.time() * 1000)),
        "reason": reason.strip(),
        "overridden": ", ".join(overridden),
        "execution_id": None,
        "models_config": None,
    }
    try:
        record["execution_id"] = retry_on_lock(lambda: _record(snap, model, blessings, record, uuid))
    except Exception as e:  # no audit record, no push: take the version back out
        withdraw(config.serving_model_dir, version)
        raise RegistryError(
            f"could not record the forced blessing in MLMD ({e}); nothing was pushed, try again"
        ) from None
    if models_config_path(config).is_file():  # keep a labels config loading the new latest
        record["models_config"] = str(write_models_config(config, read_labels(config)))
    return record


def _record(snap: Snapshot, model, blessings: list, record: dict, uuid: str) -> int:
    store = metadata.open_store(snap.config, read_only=False)
    pushed = metadata_store_pb2.Artifact(
        type_id=store.get_artifact_type("PushedModel").id, uri=record["path"], state=metadata_store_pb2.Artifact.LIVE
    )
    pushed.custom_properties["pushed"].int_value = 1
    pushed.custom_properties["pushed_version"].string_value = str(record["version"])
    pushed.custom_properties["pushed_destination"].string_value = record["path"]
    pushed.custom_properties[serving_assets.MLMD_UUID_PROPERTY].string_value = uuid
    pushed.custom_properties["forced"].int_value = 1
    inputs = [("model", model)] + [("model_blessing", b) for b in blessings[:1]]
    props = {k: str(record[k]) for k in ("run_id", "version", "user", "time", "reason", "overridden")}
    return metadata.put_registry_execution(
        store,
        metadata.FORCED_BLESSING_EXECUTION_TYPE,
        snap.config.pipeline_name,
        props,
        inputs,
        [("pushed_model", pushed)],
    )
