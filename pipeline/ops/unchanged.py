"""A `mlpipe run` in which nothing changed, recorded without starting TFX.

TFX decides for each component whether its cached outputs can be reused (tfx/orchestration/portable/launcher.py:
the node's cache context from its executor, inputs and exec properties; cache_utils.get_cached_outputs). Starting
TFX's LocalDagRunner imports TensorFlow, TFMA and Beam: about 5 s before its first component, nearly all of a run
in which nothing changed. mlpipe does not re-implement that decision; it re-uses the one TFX made:

- after a run in which TFX found every component cached, the run's *inputs key* (below) and the metadata
  store's *watermark* (pipeline/metadata/replay.py: its newest ids and update times) are kept in
  `Config.unchanged_run_path`;
- a later run with the same inputs key, on a store nothing has been written to since, would get the same
  decision from TFX: the same pipeline, the same data, the same metadata for its resolvers to read, the
  cached outputs still on disk (TFX checks that they exist before re-using them). It is
  recorded as TFX records a fully cached run (`replay.copy_run`), without importing TFX;
- anything else (another key; any write to the store: a run, a bless, a label, a rollback; `--no-cache`; a run
  that was not fully cached) runs TFX, which decides as always.

The inputs key covers what the pipeline's definition and TFX's cache decisions are made of: every setting of
the Config, mlpipe's own code, the user's model code, the installed TFX stack and Python, the data files (name,
size, modification time: what ExampleGen's driver fingerprints) and a pinned schema.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sys
from importlib import metadata as dists
from pathlib import Path

from pipeline.config import Config
from pipeline.metadata import queries as metadata

# The installed distributions whose code builds the pipeline or runs (and caches) its components.
STACK = (
    "tfx",
    "tensorflow",
    "tensorflow-transform",
    "tensorflow-model-analysis",
    "tensorflow-data-validation",
    "tfx-bsl",
    "apache-beam",
    "ml-metadata",
    "tf-keras",
)


def inputs_key(config: Config) -> str:
    """SHA-256 over everything a run's pipeline and TFX's cache decisions depend on, besides the metadata store."""
    from pipeline.dag import user_code

    digest = hashlib.sha256()

    def add(*parts) -> None:
        for part in parts:
            digest.update(str(part).encode() + b"\0")

    add(json.dumps(dataclasses.asdict(config), sort_keys=True, default=str), sys.version)
    for name in STACK:
        try:
            add(name, dists.version(name))
        except dists.PackageNotFoundError:
            add(name, None)
    root = Path(user_code.MODELS_DIR).parent  # mlpipe's own packages
    for package in user_code.MLPIPE_PACKAGES:
        add(package, user_code.models_fingerprint(root / package))
    add(user_code.code_fingerprint(config.model))
    data_root = Path(config.data.root).resolve()
    for directory, subdirs, files in sorted(os.walk(data_root)):
        subdirs.sort()
        for name in sorted(files):
            stat = os.stat(os.path.join(directory, name))
            add(os.path.relpath(os.path.join(directory, name), data_root), stat.st_size, stat.st_mtime_ns)
    if config.data.schema:
        add(Path(config.data.schema).read_bytes())
    return digest.hexdigest()


def _saved(config: Config) -> dict:
    try:
        return json.loads(config.unchanged_run_path.read_text())
    except (OSError, ValueError):
        return {}


def copy_last_run(config: Config, key: str) -> str | None:
    """Records this run as a copy of the last one when that one was fully cached and nothing changed since.

    Returns the new run's name, or None: then TFX must run (and decide) as usual.
    """
    saved = _saved(config)
    if not key or saved.get("key") != key or not metadata.store_initialized(config):
        return None
    from pipeline.metadata import replay

    store = metadata.open_store(config, read_only=False)
    runs = metadata.pipeline_runs(store, config.pipeline_name) if store else []
    if not runs or runs[0].name != saved.get("run") or replay.watermark(store) != saved.get("watermark"):
        return None
    if not replay.outputs_present(store, runs[0]):  # TFX would re-run what lost its outputs
        return None
    name = replay.copy_run(store, config.pipeline_name, runs[0])
    logging.getLogger(__name__).info(
        "nothing changed since run %s, which TFX found fully cached: recorded run %s as its copy", runs[0].name, name
    )
    return name


def remember(config: Config, key: str | None, run_id: str | None, fully_cached: bool) -> None:
    """After a run (by TFX or copied): keeps the key of a fully cached run, which the next identical run can copy,
    with the store's watermark as the run left it; forgets it after any other run."""
    if not (key and run_id and fully_cached):
        forget(config)
        return
    from pipeline.metadata import replay

    store = metadata.open_store(config)
    _save(config, key, run_id, replay.watermark(store))


def forget(config: Config) -> None:
    config.unchanged_run_path.unlink(missing_ok=True)


def _save(config: Config, key: str, run_id: str, watermark: list[int]) -> None:
    path = config.unchanged_run_path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "run": run_id, "watermark": watermark}))
    os.replace(tmp, path)
