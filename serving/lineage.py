"""Which pipeline run produced a served version: `GET /v1/models/M/versions/V/lineage`, and `mlmd_uuid`.

The lineage is read live from the workspace's ML Metadata store (so it shows rollbacks and later
label moves), through mlpipe's registry view: ml_metadata only, no TFX orchestration is imported
(tests/serving/test_traffic.py checks that no `tfx` module gets loaded). The store is found beside
the model's base path: `<workspace>/serving_model/<model>` -> `<workspace>/metadata.sqlite`, or, when
`mlpipe serve --config` names shared metadata (`[metadata] backend = "mysql"`), in that database.
Reading MLMD at request time rather than writing a JSON file at push time keeps one home for the
lineage logic (pipeline/metadata/lineage.py) and shows what happened after the push.
"""

from __future__ import annotations

import os
from pathlib import Path

from serving.errors import not_found

MLMD_UUID_FILE = ("assets.extra", "mlmd_uuid")  # read by TF Serving into its /tensorflow/serving/mlmd_map gauge


def mlmd_uuid(version_path: str) -> str | None:
    """The whole content of `<version>/assets.extra/mlmd_uuid`, as TF Serving reads it (no trimming)."""
    path = os.path.join(version_path, *MLMD_UUID_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def find_metadata(base_path: str) -> Path | None:
    """`metadata.sqlite` in the workspace holding `base_path` (up to two levels above it)."""
    from pipeline.config import Config  # the workspace layout: TFX-free

    for parent in list(Path(base_path).resolve().parents)[:2]:
        candidate = Config(workspace=str(parent)).metadata_path
        if candidate.is_file():
            return candidate
    return None


def version_lineage(model_name: str, base_path: str, version: int, shared_metadata=None) -> dict:
    """What `mlpipe lineage VERSION --json` prints for this version.

    `shared_metadata`: the server's config (`mlpipe serve --config`) when its [metadata] section names a
    shared database (docs/metadata.md): the lineage is read there; else from the SQLite store beside
    the model.
    """
    if shared_metadata is not None:
        return _shared_lineage(shared_metadata, model_name, version)
    store_path = find_metadata(base_path)
    if store_path is None:
        raise not_found(
            f"No ML Metadata store for model {model_name}: expected metadata.sqlite in the workspace above "
            f"{base_path} (the lineage endpoint serves models pushed by an mlpipe pipeline)"
        )
    from pipeline.config import Config
    from pipeline.metadata import lineage, snapshot
    from pipeline.metadata import queries as mlmd_view  # ml_metadata only: no TFX orchestration

    store = mlmd_view.open_store(store_path)
    names = [c.name for c in store.get_contexts_by_type("pipeline")] if store is not None else []
    if not names:
        raise not_found(f"{store_path} has no pipeline run yet")
    workspace = store_path.parent
    for name in names:
        config = Config(workspace=str(workspace), pipeline_name=name, model_name=model_name)
        snap = snapshot.open_snapshot(config)
        if snap is None:
            continue
        try:
            return lineage.lineage(snap, version)
        except snapshot.RegistryError:
            continue
    raise not_found(f"version {version} of model {model_name} was never pushed by a pipeline recorded in {store_path}")


def _shared_lineage(config, model_name: str, version: int) -> dict:
    from pipeline.metadata import lineage, snapshot

    snap = snapshot.open_snapshot(config.replace({"model_name": model_name}))
    if snap is None:
        raise not_found(f"the shared ML Metadata database has no run of pipeline {config.pipeline_name} yet")
    try:
        return lineage.lineage(snap, version)
    except snapshot.RegistryError:
        raise not_found(
            f"version {version} of model {model_name} was never pushed by pipeline {config.pipeline_name}"
        ) from None
