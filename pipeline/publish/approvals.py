"""Release approvals: `release.mode = auto | canary | manual` and `mlpipe approve | reject`.

- auto: a blessed push is served at once (the highest version directory), as always.
- canary: the Pusher writes the version into the serving directory as usual; after the run it gets
  the `canary` label (models.config, moved through promotion.move_label like every label) and
  `release.canary_weight` % of unlabelled requests (traffic.json's split, serving/traffic.py), the
  rest going to `stable` (the version served before, labelled so if no label was set yet).
  `approve` moves `stable` to it and ends the split; `reject` ends the split and takes the version
  out of the serving directory.
- manual: the Pusher writes the version to `config.release_hold_dir/<version>/`, outside the
  serving directory, so no server loads it whatever its version policy (TF Serving and `mlpipe serve`
  load only integer directories under their base path). `approve` renames it into the serving
  directory (atomic, same filesystem) and points `stable` at it; `reject` leaves it held.

Every decision (pending, canary, approved, rejected, superseded) is an `mlpipe.ReleaseDecision`
execution in ML Metadata: version, decision, mode, user, time, reason, linked to the version's
PushedModel; release_states() reads them back for `mlpipe models` and `mlpipe lineage`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from pipeline.config import Config
from pipeline.metadata import connection as metadata_connection
from pipeline.metadata import queries as metadata
from pipeline.metadata.connection import retry_on_lock
from pipeline.metadata.releases import (  # noqa: F401 (the read side, used as approvals.X too)
    RELEASE_DECISION_EXECUTION_TYPE,
    decisions,
    release_states,
    status_of,
)
from pipeline.metadata.snapshot import RegistryError, iso, open_snapshot
from pipeline.metadata.versions import pushed_versions
from pipeline.publish.versions import read_labels, serving_versions, write_models_config

HOLD_DIR_KEY = "hold_dir"  # the Pusher's custom_config: push there instead (pipeline/publish/pusher.py)
RELEASE_MODE_KEY = "release_mode"
CANARY, STABLE = "canary", "stable"


def release_settings(config: Config) -> dict:
    """What the Pusher's custom_config carries for a release mode other than auto (auto: nothing,
    so an auto pipeline's Pusher keeps its cache key)."""
    mode = config.release.mode
    if mode == "auto":
        return {}
    settings = {RELEASE_MODE_KEY: mode}
    if mode == "manual":
        settings[HOLD_DIR_KEY] = str(config.release_hold_dir)
    return settings


# --- recorded decisions -------------------------------------------------------------------------


def _record(config: Config, version: int, decision: str, reason: str, **extra) -> dict:
    from pipeline.publish.rollback import user_name

    record = {
        "model": config.model_name,
        "version": str(version),
        "decision": decision,
        "mode": config.release.mode,
        "user": user_name(),
        "time": iso(int(time.time() * 1000)),
        "reason": reason.strip() or "(no reason given)",
        **{k: str(v) for k, v in extra.items()},
    }
    snap = open_snapshot(config)
    pushed = {v.version: v.pushed_model for v in pushed_versions(snap)} if snap is not None else {}
    inputs = [("pushed_model", pushed[str(version)])] if str(version) in pushed else []

    def put():
        store = metadata.open_store(config, read_only=False)
        return metadata.put_registry_execution(
            store, RELEASE_DECISION_EXECUTION_TYPE, config.pipeline_name, record, inputs, []
        )

    try:
        execution_id = retry_on_lock(put)
    except Exception as e:
        raise RegistryError(
            f"version {version}: the {decision} decision was carried out but recording it in ML Metadata failed "
            f"({e}); check {metadata_connection.describe(config)}"
        ) from None
    return {"execution_id": execution_id, **record, "version": int(version)}


# --- traffic.json (serving/traffic.py reads it) ---------------------------------------------------


def set_split(config: Config, split: dict[str, int] | None) -> Path:
    """Sets (None: removes) this model's weighted split in traffic.json, keeping everything else in it."""

    path = config.traffic_config_path
    doc: dict = {}
    if path.is_file():
        try:
            doc = json.loads(path.read_text())
        except ValueError as e:
            raise RegistryError(f"{path} is not valid JSON ({e}); fix or delete it (docs/serving.md)") from None
    models = doc.setdefault("models", {})
    spec = models.setdefault(config.model_name, {})
    if split:
        spec["split"] = split
    else:
        spec.pop("split", None)
        if not spec:
            models.pop(config.model_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)  # atomic: a polling server never reads half a file
    return path


# --- after a run's push -------------------------------------------------------------------------


def after_push(config: Config, version: int) -> dict:
    """Carries out release.mode for a version the Pusher has just pushed; returns the decision record
    (auto: {"status": "auto"}, nothing recorded)."""
    from pipeline.publish import promotion  # (imports rollback, which the Pusher's module must not load first)

    mode = config.release.mode
    if mode == "auto":
        return {"status": "auto", "version": version}
    if mode == "manual":
        return _record(config, version, "pending", "release.mode = manual: held until `mlpipe approve`")
    weight = config.release.canary_weight
    labels = read_labels(config)
    earlier = [v for v in serving_versions(config) if v < version]
    if STABLE not in labels:
        if not earlier:  # nothing served before: nothing to compare a canary with
            promotion.move_label(config, STABLE, version, "release.mode = canary: the first version")
            return _record(config, version, "approved", "release.mode = canary: the first version, nothing to compare")
        promotion.move_label(config, STABLE, earlier[-1], f"release.mode = canary: served before version {version}")
    previous = labels.get(CANARY)
    if previous is not None and previous != version and status_of(release_states(config), previous)["status"] == CANARY:
        _record(config, previous, "superseded", f"version {version} became the canary")
    promotion.move_label(config, CANARY, version, f"release.mode = canary: {weight}% of unlabelled traffic")
    set_split(config, {STABLE: 100 - weight, CANARY: weight})
    return _record(
        config, version, CANARY, f"release.mode = canary: {weight}% of unlabelled traffic", canary_weight=weight
    )


# --- mlpipe approve / reject ----------------------------------------------------------------------


def _pending(config: Config, version: int, action: str) -> str:
    """The version's status, which must be pending or canary; else RegistryError (exit 2)."""

    states = release_states(config)
    status = status_of(states, version)["status"]
    snap = open_snapshot(config)
    known = {int(v.version) for v in pushed_versions(snap)} if snap is not None else set()
    if version not in known and version not in states:
        raise RegistryError(f"version {version} was never pushed (see `mlpipe models`); nothing to {action}", code=2)
    if status not in ("pending", CANARY):
        last = states.get(version, {}).get("decisions") or []
        by = f" by {last[-1]['user']} at {last[-1]['time']}" if last else ""
        raise RegistryError(
            f"version {version} is not pending (status: {status}{by}); only pending or canary versions can be "
            f"{action}d (see `mlpipe models`)",
            code=2,
        )
    return status


def approve(config: Config, version: int, reason: str) -> dict:
    """Releases a pending (manual) or canary version: it becomes `stable` and is served."""
    from pipeline.publish import promotion  # (imports rollback, which the Pusher's module must not load first)

    if not reason.strip():
        raise RegistryError("--reason must say why (it is kept in ML Metadata as the audit trail)", code=2)
    status = _pending(config, version, "approve")
    moves = []
    if status == "pending":
        held = config.release_hold_dir / str(version)
        target = config.serving_model_dir / str(version)
        if not (held / "saved_model.pb").is_file():
            raise RegistryError(f"{held} is missing (no saved_model.pb); cannot release version {version}")
        if target.exists():
            raise RegistryError(f"{target} already exists; cannot release version {version} there")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(held, target)  # atomic: a server sees the whole version or none of it
    moves.append(promotion.move_label(config, STABLE, version, f"approved: {reason}"))
    if status == CANARY:
        set_split(config, None)  # after stable points at it: unlabelled traffic stays on this version
    if status == CANARY and read_labels(config).get(CANARY) == version:
        moves.append(promotion.move_label(config, CANARY, None, f"approved as stable: {reason}"))
    record = _record(config, version, "approved", reason, was=status)
    return {**record, "was": status, "label_moves": moves, "path": str(config.serving_model_dir / str(version))}


def reject(config: Config, version: int, reason: str) -> dict:
    """Refuses a pending or canary version: it is not (or no longer) served; it stays on disk, held."""
    from pipeline.publish import promotion  # (imports rollback, which the Pusher's module must not load first)

    if not reason.strip():
        raise RegistryError("--reason must say why (it is kept in ML Metadata as the audit trail)", code=2)
    status = _pending(config, version, "reject")
    moves = []
    held = config.release_hold_dir / str(version)
    if status == CANARY:
        set_split(config, None)
        if read_labels(config).get(CANARY) == version:
            moves.append(promotion.move_label(config, CANARY, None, f"rejected: {reason}"))
        served = config.serving_model_dir / str(version)
        if served.is_dir():
            held.parent.mkdir(parents=True, exist_ok=True)
            os.rename(served, held)  # out of the serving directory: servers unload it
            write_models_config(config, read_labels(config))  # the policy no longer names it
    record = _record(config, version, "rejected", reason, was=status)
    return {**record, "was": status, "label_moves": moves, "path": str(held)}
