"""Continuous training end to end: three spans replayed through `mlpipe retrain`, a concurrent retrain,
a SIGKILLed retrain and the clean one after it. Expensive: every pipeline run is shared by the module.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.config import retrain_lock_path
from pipeline.metadata import queries as metadata
from pipeline.ops import lock as lock_lib
from tests.conftest import RETRAIN_FLAGS, ingest_next, run_cli

REPO = Path(__file__).resolve().parent.parent
PIPELINE = "mlpipe-taxi"
# Every run is blessed (value bound 0, any drop allowed), so baselines and pushes are deterministic.
FLAGS = RETRAIN_FLAGS


def completed_runs(workspace: Path) -> list[dict]:
    """Per completed run, oldest first: trained spans and the ids of the models involved."""
    store = metadata.open_store(workspace / "metadata.sqlite")
    result = []
    for run in reversed(metadata.pipeline_runs(store, PIPELINE)):
        execs = {e.node_id: e for e in metadata.run_executions(store, PIPELINE, run)}
        if "Pusher" not in execs or any(e.state not in ("ran", "cached") for e in execs.values()):
            continue
        trainer = execs["Trainer"].execution.id
        trainer_in = metadata.inputs(store, trainer)
        evaluator_in = metadata.inputs(store, execs["Evaluator"].execution.id)
        pushed = metadata.outputs(store, execs["Pusher"].execution.id)["pushed_model"][0]
        result.append(
            {
                "run": run.name,
                "spans": metadata.trainer_spans(store, trainer),
                "model": metadata.outputs(store, trainer)["model"][0].id,
                "base_model": [a.id for a in trainer_in.get("base_model", [])],
                "baseline": [a.id for a in evaluator_in.get("baseline_model", [])],
                "pushed_version": metadata.custom_property(pushed, "pushed_version"),
            }
        )
    return result


def serving_versions(workspace: Path) -> list[str]:
    base = workspace / "serving_model" / "taxi"
    return sorted(p.name for p in base.iterdir() if not p.name.startswith(".")) if base.is_dir() else []


def run_count(workspace: Path) -> int:
    return len(metadata.pipeline_runs(metadata.open_store(workspace / "metadata.sqlite"), PIPELINE))


def trainer_dirs(workspace: Path) -> int:
    model_dir = workspace / "pipeline_root" / "Trainer" / "model"
    return len(list(model_dir.iterdir())) if model_dir.is_dir() else 0


STOP_MESSAGE = "full analysis only: stopped after the Transform"


def stop_after_transform(fn_args):
    """The full-analysis run's run_fn ([model] run_fn): what it is compared on is its Transform, so its
    Trainer stops the run there instead of training, evaluating and pushing a model nobody reads."""
    raise RuntimeError(STOP_MESSAGE)


@pytest.fixture(scope="module")
def replay(span_retrains):
    """Runs: retrain on span 1; again with no new span; span 2 (those three are tests/conftest.py's
    span_retrains, shared with tests/test_metadata_mysql_e2e.py); span 3 killed at the Trainer (with a
    concurrent retrain tried meanwhile); span 3 again. Returns what each step saw."""
    base, root, workspace, source = (span_retrains[k] for k in ("base", "root", "workspace", "source"))
    common = ["--workspace", str(workspace), "--data-root", str(root), *FLAGS]
    seen = {k: span_retrains[k] for k in ("workspace", "root", "run1", "idle", "idle_new_runs", "run2")}
    seen["versions_before_kill"] = serving_versions(workspace)
    # The same window analysed in full (data.analyzer_cache = false), in a copy of the metadata after run2.
    # Only its Transform is compared: its Trainer's run_fn (stop_after_transform) ends the run there.
    copy = base / "copy"
    copy.mkdir()
    shutil.copyfile(workspace / "metadata.sqlite", copy / "metadata.sqlite")
    no_cache = copy / "no-analyzer-cache.toml"  # and FLAGS' retrain-only settings
    no_cache.write_text(
        "[data]\nwindow_spans = 2\nanalyzer_cache = false\n[training]\nwarm_start = true\n"
        f'[model]\nrun_fn = "{__name__}.{stop_after_transform.__name__}"\n'
    )
    assert FLAGS[4:7] == ["--window-spans", "2", "--warm-start"]
    in_copy = ["--workspace", str(copy), "--data-root", str(root), *FLAGS[:4], *FLAGS[7:]]
    seen["full_analysis"] = run_cli("run", "--config", str(no_cache), *in_copy)
    seen["copy"] = copy

    ingest_next(source, root)
    trainers_before = trainer_dirs(workspace)
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
    with open(base / "killed-retrain.out", "w") as console:  # a file, so a full pipe never stalls it
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "retrain", *common],
            cwd=REPO,
            env=env,
            stdout=console,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        lock_path = retrain_lock_path(workspace)
        deadline = time.monotonic() + 300
        while lock_lib.read_holder(lock_path).get("pid") != proc.pid:
            assert proc.poll() is None and time.monotonic() < deadline, "the subprocess retrain never took the lock"
            time.sleep(0.2)
        runs_before = run_count(workspace)
        seen["busy"] = run_cli("retrain", *common)  # concurrent: must not run the pipeline
        seen["busy_new_runs"] = run_count(workspace) - runs_before
        while trainer_dirs(workspace) == trainers_before:  # the Trainer of the span-3 run has started
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its Trainer was seen"
            time.sleep(0.2)
        time.sleep(2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    seen["killed_code"] = proc.returncode
    seen["versions_after_kill"] = serving_versions(workspace)
    seen["lock_after_kill"] = lock_lib.read_holder(retrain_lock_path(workspace))
    seen["run3"] = run_cli("retrain", *common)
    seen["runs"] = completed_runs(workspace)
    return seen


def test_first_retrain_trains_on_span_one_and_pushes(replay):
    code, out, err = replay["run1"]
    assert code == 0, out + err
    assert "new data: newest span 1" in out and "Result: BLESSED and pushed as version" in out
    first = replay["runs"][0]
    assert first["spans"] == [1] and first["baseline"] == [] and first["base_model"] == []


def test_retrain_without_new_span_does_not_run(replay):
    code, out, err = replay["idle"]
    assert code == 0, out + err
    assert out.strip().splitlines() == [out.strip()] and "no new data: newest span 1" in out
    assert replay["idle_new_runs"] == 0


def test_rolling_window_baseline_and_warm_start(replay):
    for key in ("run2", "run3"):
        code, out, err = replay[key]
        assert code == 0, f"{key}: {out}{err}"
    runs = replay["runs"]
    assert [r["spans"] for r in runs] == [[1], [1, 2], [2, 3]]  # window of 2 spans
    for previous, current in zip(runs, runs[1:]):
        assert current["baseline"] == [previous["model"]]  # compared against the last blessed model
        assert current["base_model"] == [previous["model"]]  # and warm-started from it
    assert [r["pushed_version"] for r in runs] == serving_versions(replay["workspace"])


def test_warm_start_carries_every_weight_across_real_span_windows(replay):
    """Vocabularies differ between the windows (e.g. company), yet every weight is carried over, and
    the warm-started model starts where the previous one ended, far below a cold start."""
    code, out, err = replay["run1"]
    assert "Warm start:" not in out  # the first run has nothing to start from
    for key in ("run2", "run3"):
        code, out, err = replay[key]
        assert code == 0, out + err
        head = re.search(r"Warm start: (\d+) weights carried over from (\S+), all of them", out)
        assert head, out
        assert "not carried over" not in out
        warm, cold, base_final = (
            float(x)
            for x in re.search(
                r"loss before training ([\d.]+) \(cold start ([\d.]+); the base model's final loss ([\d.]+)\)", out
            ).groups()
        )
        assert cold - base_final > 0.05, out  # the base model learned something
        assert abs(warm - base_final) < 0.25 * (cold - base_final), out  # starts near where it ended
        assert cold - warm > 0.75 * (cold - base_final), out  # far below a cold start


def test_concurrent_retrain_is_turned_away(replay):
    code, out, err = replay["busy"]
    assert code == 75 and "busy" in err and out == ""
    assert replay["busy_new_runs"] == 0


def test_killed_retrain_leaves_no_partial_version_and_next_one_completes(replay):
    assert replay["killed_code"] == -signal.SIGKILL
    # Killed in the Trainer, before the Pusher: nothing pushed (a kill during the Pusher's copy is
    # tests/test_pipeline_e2e.py::test_sigkill_during_the_push_copy_leaves_no_partial_version).
    assert replay["versions_after_kill"] == replay["versions_before_kill"]
    assert replay["lock_after_kill"].get("pid")  # the dead holder's info was left behind ...
    code, out, err = replay["run3"]
    assert "recovered a stale lock" in err  # ... and reported by the next retrain
    assert "Result: BLESSED and pushed as version" in out
    base = replay["workspace"] / "serving_model" / "taxi"
    versions = serving_versions(replay["workspace"])
    assert len(versions) == 3 and all((base / v / "saved_model.pb").is_file() for v in versions)
    assert not [p for p in base.iterdir() if p.name.startswith(".tmp-")]
    # The killed run's Trainer stays RUNNING in MLMD and did not block the next run.
    store = metadata.open_store(replay["workspace"] / "metadata.sqlite")
    states = [metadata.STATE_NAMES[e.last_known_state] for e in store.get_executions()]
    assert "running" in states


def transform_outputs(workspace: Path, nth_run: int) -> dict:
    """The Transform execution behind the nth run's Trainer (0 = oldest run): its inputs and outputs."""
    store = metadata.open_store(workspace / "metadata.sqlite")
    run = list(reversed(metadata.pipeline_runs(store, PIPELINE)))[nth_run]
    execs = {e.node_id: e for e in metadata.run_executions(store, PIPELINE, run)}
    graph = metadata.inputs(store, execs["Trainer"].execution.id)["transform_graph"][0]
    transform = metadata.producer_execution_id(store, graph.id)
    return {
        "id": transform,
        "inputs": metadata.inputs(store, transform),
        "outputs": metadata.outputs(store, transform),
        "state": store.get_executions_by_id([transform])[0].last_known_state,
        "store": store,
    }


def transformed(graph_uri: str, raw_examples: list[bytes]) -> dict:
    import tensorflow as tf
    import tensorflow_transform as tft

    output = tft.TFTransformOutput(graph_uri)
    parsed = tf.io.parse_example(tf.constant(raw_examples), output.raw_feature_spec())
    features = output.transform_raw_features(parsed, drop_unused_features=True)
    return {
        k: tf.sparse.to_dense(v).numpy() if isinstance(v, tf.SparseTensor) else v.numpy() for k, v in features.items()
    }


def materialised_rows(artifacts, split: str) -> int:
    import tensorflow as tf

    files = [str(f) for a in artifacts for f in sorted(Path(a.uri, f"Split-{split}").glob("*.gz"))]
    return sum(1 for _ in tf.data.TFRecordDataset(files, compression_type="GZIP"))


def test_retrain_analyses_only_the_new_span_and_matches_a_full_analysis(replay):
    """run2 (window 1-2) re-used run1's analyzer cache (span 1 analysed then, not again); its transform
    graph, vocabularies and statistics equal those of the same window analysed in full."""
    import numpy as np
    import tensorflow as tf

    code, out, err = replay["run2"]
    assert code == 0, f"run2: {out}{err}"
    code, out, err = replay["full_analysis"]  # ran to its Trainer, which stop_after_transform ends
    assert code == 1 and "Result: FAILED at Trainer" in out and STOP_MESSAGE in out + err, out + err
    incremental = transform_outputs(replay["workspace"], 1)
    first = transform_outputs(replay["workspace"], 0)
    (cache,) = incremental["inputs"]["analyzer_cache"]
    assert metadata.producer_execution_id(incremental["store"], cache.id) == first["id"]
    # The full analysis (data.analyzer_cache = false) read no cache.
    full = transform_outputs(replay["copy"], -1)
    assert metadata.STATE_NAMES[full["state"]] == "ran", full["state"]
    assert "analyzer_cache" not in full["inputs"] and full["id"] != incremental["id"]
    assert [a.id for a in full["inputs"]["examples"]] == [a.id for a in incremental["inputs"]["examples"]]

    inc_graph, full_graph = (Path(t["outputs"]["transform_graph"][0].uri) for t in (incremental, full))
    assets = sorted(p.name for p in (inc_graph / "transform_fn" / "assets").iterdir())
    assert assets  # the vocabularies
    for name in assets:
        assert (inc_graph / "transform_fn" / "assets" / name).read_bytes() == (
            full_graph / "transform_fn" / "assets" / name
        ).read_bytes(), name
    raw = []
    for examples in incremental["inputs"]["examples"]:  # rows of both spans
        files = sorted(Path(examples.uri, "Split-train").glob("*.gz"))
        raw += [r.numpy() for r in tf.data.TFRecordDataset([str(f) for f in files], compression_type="GZIP")]
    a, b = transformed(str(inc_graph), raw), transformed(str(full_graph), raw)
    assert sorted(a) == sorted(b)
    for key in a:
        if a[key].dtype.kind == "f":
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)
        else:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # Transform runs with disable_statistics (docs/performance.md): instead of its pre/post-transform
    # statistics, the materialised transformed examples: as many rows per split, from both analyses.
    assert "post_transform_stats" not in incremental["outputs"]
    for split in ("train", "eval"):
        counts = [materialised_rows(t["outputs"]["transformed_examples"], split) for t in (incremental, full)]
        assert counts[0] == counts[1] and counts[0] > 0, (split, counts)


def test_window_after_a_killed_run_uses_a_cache_from_before_its_newest_span(replay):
    """The killed span-3 run's Transform completed (with run2's cache) and wrote a cache that has seen
    span 3; run3 must resolve run2's cache again, so its Transform is the killed run's, cached: the
    cache input is a function of the window, not of the latest run."""
    store = metadata.open_store(replay["workspace"] / "metadata.sqlite")
    newest = metadata.pipeline_runs(store, PIPELINE)[0]
    states = {e.node_id: e.state for e in metadata.run_executions(store, PIPELINE, newest)}
    assert states["Transform"] == "cached", states
    run3 = transform_outputs(replay["workspace"], -1)
    (cache,) = run3["inputs"]["analyzer_cache"]
    producer = metadata.producer_execution_id(run3["store"], cache.id)
    assert metadata.examples_spans(metadata.inputs(run3["store"], producer)["examples"]) == [1, 2]
