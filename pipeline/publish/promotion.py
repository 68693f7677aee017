"""Ordered label moves with history: `mlpipe label set|remove` and `rollback` all go through move_label().

A move writes models.config (TF Serving's ModelServerConfig) atomically; a server polling it
(`mlpipe serve`, serving/manager.py `_staged`) loads and warms the target version first, then
moves the label, then unloads what no policy keeps. With `wait_url`, move_label returns only once
the server answers the label with the target version (GET /v1/models/M/labels/L/metadata), so a
script can chain moves safely; this works against stock TF Serving too.

Every move is an `mlpipe.LabelMove` execution in ML Metadata (who, when, label, from, to, why),
linked to the target's PushedModel when MLMD has one; label_history() reads them back.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from pipeline.config import Config
from pipeline.metadata import connection as metadata_connection
from pipeline.metadata import queries as metadata
from pipeline.metadata.connection import retry_on_lock
from pipeline.metadata.snapshot import RegistryError, iso, open_snapshot
from pipeline.metadata.versions import pushed_versions
from pipeline.publish.rollback import user_name
from pipeline.publish.versions import models_config_path, read_labels, remove_label, set_label

LABEL_MOVE_EXECUTION_TYPE = "mlpipe.LabelMove"
LATEST = "(latest)"  # the pseudo-label a rollback moves: the highest version


def move_label(
    config: Config,
    name: str,
    version: int | None,
    reason: str = "",
    *,
    wait_url: str | None = None,
    wait_seconds: float = 120.0,
) -> dict:
    """Points label `name` at `version` (None: removes it), records the move; returns the record."""
    before = read_labels(config).get(name)
    if version is None:
        path = remove_label(config, name)
    else:
        path = set_label(config, name, version)
    record = _record(config, name, before, version, reason)
    record["models_config"] = str(path)
    if wait_url and version is not None:
        record["server_confirmed_seconds"] = wait_for_label(
            wait_url, config.model_name, name, version, wait_seconds, str(models_config_path(config))
        )
    return record


def record_move(config: Config, name: str, before: int | None, after: int | None, reason: str) -> dict:
    """Records a move made elsewhere (a rollback re-publishing the latest version)."""
    return _record(config, name, before, after, reason)


def _record(config: Config, name: str, before, after, reason: str) -> dict:
    record = {
        "label": name,
        "from_version": before,
        "to_version": after,
        "user": user_name(),
        "time": iso(int(time.time() * 1000)),
        "reason": reason.strip() or "(no reason given)",
        "model": config.model_name,
    }
    inputs = []
    snap = open_snapshot(config)  # None when nothing has run yet (SQLite or a shared database)
    if snap is not None and after is not None:
        by_version = {v.version: v for v in pushed_versions(snap)}
        if str(after) in by_version:
            inputs.append(("target_pushed_model", by_version[str(after)].pushed_model))

    def put():
        store = metadata.open_store(config, read_only=False)
        props = {k: ("" if v is None else str(v)) for k, v in record.items()}
        return metadata.put_registry_execution(
            store, LABEL_MOVE_EXECUTION_TYPE, config.pipeline_name, props, inputs, []
        )

    try:
        record["execution_id"] = retry_on_lock(put)
    except Exception as e:
        raise RegistryError(
            f"the label moved but recording it in ML Metadata failed ({e}); "
            f"check {metadata_connection.describe(config)} and run the command again"
        ) from None
    return record


def label_history(config: Config, label: str | None = None) -> list[dict]:
    """Every recorded move, newest first (optionally of one label)."""
    store = metadata.open_store(config) if metadata.store_initialized(config) else None
    if store is None:
        return []
    rows = []
    for e in metadata.executions_of_type(store, LABEL_MOVE_EXECUTION_TYPE):
        p = {k: v.string_value for k, v in e.custom_properties.items()}
        if p.get("model", config.model_name) != config.model_name or (label and p.get("label") != label):
            continue
        rows.append(
            {
                "execution_id": e.id,
                "time": p.get("time"),
                "user": p.get("user"),
                "label": p.get("label"),
                "from_version": int(p["from_version"]) if p.get("from_version") else None,
                "to_version": int(p["to_version"]) if p.get("to_version") else None,
                "reason": p.get("reason"),
            }
        )
    return sorted(rows, key=lambda r: r["execution_id"], reverse=True)


def wait_for_label(url: str, model: str, label: str, version: int, timeout: float, config_path: str = "") -> float:
    """Polls the server until label `label` answers with `version`; returns the seconds waited."""
    start = time.monotonic()
    target = f"{url.rstrip('/')}/v1/models/{model}/labels/{label}/metadata"
    last = "no answer yet"
    while time.monotonic() - start < timeout:
        try:
            with urllib.request.urlopen(target, timeout=5) as response:
                served = json.loads(response.read())["model_spec"]["version"]
            if int(served) == version:
                return round(time.monotonic() - start, 3)
            last = f"label {label} still answers version {served}"
        except (urllib.error.URLError, OSError, ValueError, KeyError) as e:
            last = str(e)
        time.sleep(0.2)
    raise RegistryError(
        f"the server at {url} did not move label {label} to version {version} within {timeout:.0f}s ({last}); "
        f"is it serving {config_path or 'this models.config'} with --model_config_file_poll_wait_seconds set?"
    )


def after_rollback(config: Config, result: dict) -> list[dict]:
    """A rollback's label moves: the latest version (always) and every label that pointed at the
    replaced version, which follows to the re-published one; each recorded like any other move."""
    if result.get("dry_run"):
        return []
    why = f"rollback to version {result['to_version']}: {result['reason']}"
    moves = [record_move(config, LATEST, result["replaced_version"], result["new_version"], why)]
    for label, version in read_labels(config).items():
        if version == result["replaced_version"]:
            moves.append(move_label(config, label, result["new_version"], why))
    return moves
