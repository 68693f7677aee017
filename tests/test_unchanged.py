"""The inputs key of an unchanged run (pipeline/ops/unchanged.py): what it sees change and what it does not."""

from __future__ import annotations

import os

from pipeline import config as config_lib
from pipeline.ops import unchanged


def _config(tmp_path, **overrides):
    return config_lib.load(
        overrides={"workspace": str(tmp_path / "ws"), "data": {"root": str(tmp_path / "data")}, **overrides}
    )


def test_the_inputs_key_follows_the_data_the_settings_and_the_schema(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.csv").write_text("x,y\n1,2\n")
    config = _config(tmp_path)
    key = unchanged.inputs_key(config)
    assert unchanged.inputs_key(_config(tmp_path)) == key  # the same inputs, the same key
    # What the run reads besides its data and settings does not count: request logs, reports.
    (tmp_path / "ws" / "request_logs").mkdir(parents=True)
    (tmp_path / "ws" / "request_logs" / "log.jsonl").write_text("{}\n")
    assert unchanged.inputs_key(config) == key

    (data / "a.csv").write_text("x,y\n1,3\n")  # same size, new content and modification time
    stat = os.stat(data / "a.csv")
    os.utime(data / "a.csv", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    changed = unchanged.inputs_key(config)
    assert changed != key
    (data / "span-2").mkdir()
    (data / "span-2" / "b.csv").write_text("x,y\n")
    assert unchanged.inputs_key(config) not in (key, changed)
    key = unchanged.inputs_key(config)
    assert unchanged.inputs_key(_config(tmp_path, training={"train_steps": 7})) != key

    schema = tmp_path / "schema.pbtxt"
    schema.write_text('feature { name: "x" type: INT }\n')
    pinned = _config(tmp_path, data={"root": str(data), "schema": str(schema)})
    pinned_key = unchanged.inputs_key(pinned)
    assert pinned_key != key
    schema.write_text('feature { name: "x" type: FLOAT }\n')
    assert unchanged.inputs_key(pinned) != pinned_key


def test_without_a_fully_cached_run_on_record_nothing_is_copied(tmp_path):
    (tmp_path / "data").mkdir()
    config = _config(tmp_path)
    key = unchanged.inputs_key(config)
    assert unchanged.copy_last_run(config, key) is None  # no store, no record
    unchanged.remember(config, key, "2026-01-01T00:00:00", fully_cached=False)
    assert not config.unchanged_run_path.exists()
