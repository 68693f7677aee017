"""`mlpipe rollback`: an earlier blessed version re-published as the new highest version, recorded in
ML Metadata (read-write: the audit execution)."""

from __future__ import annotations

import dataclasses
import getpass
import os
import time
from pathlib import Path

from ml_metadata.proto import metadata_store_pb2

from pipeline.config import Config
from pipeline.metadata import queries as metadata
from pipeline.metadata.connection import retry_on_lock
from pipeline.metadata.snapshot import RegistryError, Snapshot, iso, open_snapshot
from pipeline.metadata.versions import original_version, pushed_versions
from pipeline.publish.atomic import atomic_push, withdraw
from pipeline.publish.versions import models_config_path, read_labels, serving_versions, write_models_config


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
        "user": user_name(),
        "execution_id": None,
        "models_config": None,
    }
    if dry_run:
        return result
    try:  # the same atomic publish as the Pusher's: a hidden copy, then one rename into place
        atomic_push(plan.source_dir, config.serving_model_dir, version=str(plan.new_version))
    except FileExistsError:
        raise RegistryError(
            f"{plan.new_dir} appeared while copying (a push raced this rollback); run it again"
        ) from None
    try:
        result["execution_id"] = retry_on_lock(lambda: _record_rollback(snap, plan, reason, result["user"]))
    except Exception as e:  # no audit record, no rollback: take the directory back out
        withdraw(config.serving_model_dir, str(plan.new_version))
        raise RegistryError(f"could not record the rollback in MLMD ({e}); nothing was changed, try again") from None
    if models_config_path(config).is_file():  # keep the labels config loading the new latest
        result["models_config"] = str(write_models_config(config, read_labels(config)))
    return result


def user_name() -> str:
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
