"""Fast tests of the continuous-training pieces that need no pipeline run: spans, ingest, lock, pusher."""

from __future__ import annotations

import csv
import datetime
import json
import multiprocessing
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from data import spans
from models import features
from pipeline.config import retrain_lock_path
from pipeline.ops import lock as lock_lib
from tests.conftest import run_cli


def ts(year: int, month: int, day: int = 15) -> int:
    return int(datetime.datetime(year, month, day, 12, tzinfo=datetime.timezone.utc).timestamp())


def write_csv(path: Path, timestamps: list[int]) -> Path:
    """A CSV with the taxi columns; row i has trip_miles = i so rows can be traced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(features.CSV_COLUMNS)
        for i, stamp in enumerate(timestamps):
            row = {c: "1" for c in features.CSV_COLUMNS}
            row[features.TIMESTAMP_COLUMN] = str(stamp)
            row["trip_miles"] = str(i)
            writer.writerow([row[c] for c in features.CSV_COLUMNS])
    return path


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# Out of order on purpose: spans must come out chronological.
STAMPS = [ts(2014, 5), ts(2013, 1), ts(2013, 2), ts(2014, 5, 20), ts(2013, 12), ts(2013, 1, 3)]


def test_split_by_month_numbers_periods_chronologically(tmp_path):
    source = write_csv(tmp_path / "all.csv", STAMPS)
    plan = spans.split_csv(
        source,
        tmp_path / "root",
        by="month",
        timestamp_column=features.TIMESTAMP_COLUMN,
        expected_columns=features.CSV_COLUMNS,
    )
    assert [(p.span, p.period, p.rows) for p in plan] == [
        (1, "2013-01", 2),
        (2, "2013-02", 1),
        (3, "2013-12", 1),
        (4, "2014-05", 2),
    ]
    assert spans.list_spans(tmp_path / "root") == [1, 2, 3, 4]
    assert spans.uses_spans(tmp_path / "root")
    rows = read_rows(tmp_path / "root" / "span-1" / "data.csv")
    assert sorted(r["trip_miles"] for r in rows) == ["1", "5"]  # every row kept, in its own period
    assert list(rows[0]) == list(features.CSV_COLUMNS)
    assert not [p for p in (tmp_path / "root").iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_split_by_quarter_and_first_span(tmp_path):
    source = write_csv(tmp_path / "all.csv", STAMPS)
    plan = spans.split_csv(
        source,
        tmp_path / "root",
        by="quarter",
        timestamp_column=features.TIMESTAMP_COLUMN,
        expected_columns=features.CSV_COLUMNS,
        first_span=10,
    )
    assert [(p.span, p.period, p.rows) for p in plan] == [(10, "2013-Q1", 3), (11, "2013-Q4", 1), (12, "2014-Q2", 2)]


def test_limit_next_and_refusal_to_overwrite(tmp_path):
    source = write_csv(tmp_path / "all.csv", STAMPS)
    root = tmp_path / "root"
    kw = dict(by="month", timestamp_column=features.TIMESTAMP_COLUMN, expected_columns=features.CSV_COLUMNS)
    assert [p.span for p in spans.split_csv(source, root, limit=2, **kw)] == [1, 2]
    assert spans.list_spans(root) == [1, 2]
    with pytest.raises(spans.SpanError, match="already exist.*--force"):
        spans.split_csv(source, root, **kw)
    assert spans.list_spans(root) == [1, 2]  # the refusal wrote nothing
    assert [p.span for p in spans.split_csv(source, root, next_spans=1, **kw)] == [3]
    assert [p.span for p in spans.split_csv(source, root, next_spans=5, **kw)] == [4]
    assert spans.split_csv(source, root, next_spans=1, **kw) == []
    (root / "span-1" / "data.csv").write_text("garbage\n")
    plan = spans.split_csv(source, root, force=True, limit=1, **kw)
    assert [(p.span, p.action) for p in plan] == [(1, "overwrite")]
    assert len(read_rows(root / "span-1" / "data.csv")) == 2


def test_flat_layout_is_not_spans(tmp_path, taxi_slice):
    assert not spans.uses_spans(taxi_slice)
    both = tmp_path / "both"
    write_csv(both / "span-1" / "data.csv", STAMPS)
    assert spans.uses_spans(both)
    shutil.copy(both / "span-1" / "data.csv", both / "flat.csv")
    assert not spans.uses_spans(both)  # flat files win
    (tmp_path / "odd" / "span-01").mkdir(parents=True)
    (tmp_path / "odd" / "span-x").mkdir()
    assert spans.list_spans(tmp_path / "odd") == []


def test_bad_inputs_fail_with_one_line(tmp_path):
    kw = dict(by="month", timestamp_column=features.TIMESTAMP_COLUMN, expected_columns=features.CSV_COLUMNS)
    bad_header = tmp_path / "bad.csv"
    bad_header.write_text("a,b\n1,2\n")
    code, _, err = run_cli("ingest", str(bad_header), "--data-root", str(tmp_path / "r"))
    assert code == 2 and "missing column(s)" in err and len(err.strip().splitlines()) == 1
    bad_stamp = write_csv(tmp_path / "stamp.csv", STAMPS)
    text = bad_stamp.read_text().replace(str(STAMPS[2]), "yesterday")
    bad_stamp.write_text(text)
    with pytest.raises(spans.SpanError, match="line 4: trip_start_timestamp must be unix seconds"):
        spans.split_csv(bad_stamp, tmp_path / "r", **kw)
    assert not (tmp_path / "r").exists()


def test_ingest_cli_json_and_dry_run(tmp_path):
    source = write_csv(tmp_path / "all.csv", STAMPS)
    root = tmp_path / "root"
    code, out, _ = run_cli("ingest", str(source), "--data-root", str(root), "--by", "quarter", "--dry-run", "--json")
    assert code == 0 and not root.exists()
    data = json.loads(out)
    assert data["dry_run"] and [s["span"] for s in data["spans"]] == [1, 2, 3]
    code, out, _ = run_cli("ingest", str(source), "--data-root", str(root), "--by", "quarter", "--next", "1")
    assert code == 0 and "wrote 1 span(s)" in out and spans.list_spans(root) == [1]
    code, _, err = run_cli("ingest", str(source), "--data-root", str(root), "--by", "quarter")
    assert code == 2 and "already exist" in err


def test_retrain_refuses_flat_layout(tmp_path, taxi_slice):
    code, _, err = run_cli("retrain", "--workspace", str(tmp_path / "ws"), "--data-root", str(taxi_slice))
    assert code == 2 and "span layout" in err and "mlpipe ingest" in err
    assert not (tmp_path / "ws" / "metadata.sqlite").exists()


# --- lock ---


def _hold_lock(workspace: str, ready, seconds: float) -> None:
    with lock_lib.workspace_lock(workspace):
        ready.set()
        time.sleep(seconds)


def test_lock_is_exclusive_and_bounded_wait(tmp_path):
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(tmp_path), ready, 2.0))
    holder.start()
    try:
        assert ready.wait(20)
        with pytest.raises(lock_lib.LockBusy) as busy:
            lock_lib.acquire(tmp_path, wait_seconds=0)
        assert busy.value.holder["pid"] == holder.pid
        started = time.monotonic()
        with lock_lib.workspace_lock(tmp_path, wait_seconds=30) as held:  # waits for the holder to finish
            assert time.monotonic() - started > 0.5
            assert held.stale == {}  # it released cleanly
            assert lock_lib.read_holder(held.path)["pid"] == os.getpid()
        assert lock_lib.read_holder(retrain_lock_path(tmp_path)) == {}
    finally:
        holder.join(10)


def test_lock_of_killed_holder_is_recovered(tmp_path):
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(tmp_path), ready, 60.0))
    holder.start()
    assert ready.wait(20)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(10)
    from pipeline.publish.atomic import pid_alive

    held = lock_lib.acquire(tmp_path, wait_seconds=5)
    try:
        assert held.stale["pid"] == holder.pid and not pid_alive(holder.pid)
    finally:
        lock_lib.release(held)


def test_retrain_busy_exit_code(tmp_path):
    root = tmp_path / "root"
    write_csv(root / "span-1" / "data.csv", STAMPS)
    held = lock_lib.acquire(tmp_path / "ws")
    try:
        code, out, err = run_cli("retrain", "--workspace", str(tmp_path / "ws"), "--data-root", str(root))
    finally:
        lock_lib.release(held)
    assert code == 75 and "busy" in err and f"pid {os.getpid()}" in err and out == ""


# --- atomic pusher ---


def make_model_dir(path: Path, files: int = 5) -> Path:
    (path / "variables").mkdir(parents=True)
    for i in range(files):
        (path / "variables" / f"part-{i}").write_bytes(os.urandom(1000))
    (path / "saved_model.pb").write_bytes(b"model")
    return path


def test_atomic_push_never_exposes_a_partial_version(tmp_path, monkeypatch):
    from pipeline.publish import atomic

    model = make_model_dir(tmp_path / "model")
    base = tmp_path / "serving"
    copied = []
    real_copy = shutil.copy2

    def dying_copy(src, dst, **kw):  # the process "dies" after two files
        if len(copied) == 2:
            raise KeyboardInterrupt("killed")
        copied.append(src)
        return real_copy(src, dst, **kw)

    monkeypatch.setattr(shutil, "copy2", dying_copy)
    with pytest.raises(KeyboardInterrupt):
        atomic.atomic_push(str(model), str(base))
    monkeypatch.setattr(shutil, "copy2", real_copy)
    assert [p.name for p in base.iterdir() if not p.name.startswith(".")] == []  # no version visible
    assert [p.name for p in base.iterdir() if p.name.startswith(".tmp-")]  # the partial copy is hidden

    version, path = atomic.atomic_push(str(model), str(base))
    assert sorted(p.name for p in base.iterdir()) == [version]  # stale temp dir cleaned
    assert (Path(path) / "saved_model.pb").read_bytes() == b"model"
    assert len(list((Path(path) / "variables").iterdir())) == 5
    version2, _ = atomic.atomic_push(str(model), str(base))
    assert int(version2) > int(version)  # same second: still a new, higher version


def test_push_leaves_a_live_process_temp_dir_alone(tmp_path):
    from pipeline.publish import atomic

    base = tmp_path / "serving"
    live = base / f".tmp-123-{os.getppid()}"  # our parent is alive: a push in progress elsewhere
    dead = base / ".tmp-124-999999999"
    live.mkdir(parents=True)
    dead.mkdir()
    assert atomic.clean_stale_tmp_dirs(str(base)) == [dead.name]
    assert live.is_dir() and not dead.exists()


# --- warm start (models/model.py) ---


def _tiny_model(units: int, seed: int):
    import tf_keras as keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(3,), name="x")
    hidden = keras.layers.Dense(units, name="hidden_0")(inputs)
    return keras.Model(inputs, keras.layers.Dense(1, name="output")(hidden))


def test_warm_start_copies_matching_weights_and_names_the_others(tmp_path):
    import numpy as np
    import tensorflow as tf

    from models.model import warm_start

    base = _tiny_model(4, seed=1)
    tf.saved_model.save(base, str(tmp_path / "base"))
    same = _tiny_model(4, seed=2)
    assert not np.allclose(same.trainable_weights[0].numpy(), base.trainable_weights[0].numpy())
    report = warm_start(same, str(tmp_path / "base"))
    assert report["not_carried"] == [] and len(report["carried"]) == 4
    for mine, theirs in zip(same.trainable_weights, base.trainable_weights):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    other = _tiny_model(5, seed=2)
    before = [w.numpy().copy() for w in other.trainable_weights]
    report = warm_start(other, str(tmp_path / "base"))
    # hidden_0 has 5 units now: its weights and the output kernel cannot be carried; the output bias can.
    assert [(n["weight"], n["reason"]) for n in report["not_carried"]] == [
        ("hidden_0/kernel:0", "shape [3, 4] in the base model, [3, 5] now"),
        ("hidden_0/bias:0", "shape [4] in the base model, [5] now"),
        ("output/kernel:0", "shape [4, 1] in the base model, [5, 1] now"),
    ]
    assert report["carried"] == ["output/bias:0"]
    for w, b in zip(other.trainable_weights[:3], before[:3]):
        np.testing.assert_array_equal(w.numpy(), b)


def test_warm_start_reads_an_export_without_keras_layer_traces(tmp_path):
    """export_serving_model saves with save_traces=False: the loaded object has no trainable_variables."""
    import numpy as np

    from models.model import warm_start

    base = _tiny_model(4, seed=1)
    base.save(str(tmp_path / "base"), save_format="tf", save_traces=False)
    same = _tiny_model(4, seed=2)
    report = warm_start(same, str(tmp_path / "base"))
    assert report["not_carried"] == [] and len(report["carried"]) == 4
    for mine, theirs in zip(same.trainable_weights, base.trainable_weights):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())


def test_warm_start_maps_vocabulary_rows_token_by_token(tmp_path):
    """Between windows a token changes rank (or is new): its embedding row and its one-hot weight follow it."""
    import numpy as np
    import tensorflow as tf

    from models import features
    from models.model import CATEGORICAL_IDS, build_model, embedding_layer_name, warm_start

    old = {k: [b"x", b"y"] for k in features.CATEGORICAL_FEATURES}
    old["company"] = [b"A", b"B", b"C"]
    new = {k: [b"x", b"y"] for k in features.CATEGORICAL_FEATURES}
    new["company"] = [b"C", b"A", b"D"]  # C moved up, B gone, D new
    base = build_model(None, [4], 0.01)
    tf.saved_model.save(base, str(tmp_path / "base"))
    (tmp_path / "base" / "assets").mkdir(exist_ok=True)
    for key, tokens in old.items():
        (tmp_path / "base" / "assets" / key).write_bytes(b"".join(t + b"\n" for t in tokens))
    tf.keras.utils.set_random_seed(7)
    model = build_model(None, [4], 0.01)
    fresh = {w.name: w.numpy().copy() for w in model.trainable_weights}
    report = warm_start(model, str(tmp_path / "base"), new)
    assert report["not_carried"] == []
    assert report["vocabularies"]["company"] == {"kept": 2, "new": 1}
    assert report["vocabularies"]["payment_type"] == {"kept": 2, "new": 0}

    def weights(m):
        return {w.name: w.numpy() for w in m.trainable_weights}

    before, after = weights(base), weights(model)
    emb = f"{embedding_layer_name('company')}/embeddings:0"
    np.testing.assert_array_equal(after[emb][0], before[emb][2])  # C
    np.testing.assert_array_equal(after[emb][1], before[emb][0])  # A
    np.testing.assert_array_equal(after[emb][2], fresh[emb][2])  # D: new, keeps its initialization
    for b in range(features.OOV_BUCKETS):
        np.testing.assert_array_equal(after[emb][3 + b], before[emb][3 + b])
    kernel = "output/kernel:0"
    company = features.CATEGORICAL_FEATURES.index("company")
    first = before[kernel].shape[0] - len(features.CATEGORICAL_FEATURES) * CATEGORICAL_IDS
    block = first + company * CATEGORICAL_IDS
    np.testing.assert_array_equal(after[kernel][block + 0], before[kernel][block + 2])
    np.testing.assert_array_equal(after[kernel][block + 1], before[kernel][block + 0])
    np.testing.assert_array_equal(after[kernel][block + 2], fresh[kernel][block + 2])
    np.testing.assert_array_equal(after[kernel][:first], before[kernel][:first])  # deep part and buckets: as is
    np.testing.assert_array_equal(after["hidden_0/kernel:0"], before["hidden_0/kernel:0"])
