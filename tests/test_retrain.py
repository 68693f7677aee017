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

from data import taxi_sample
from pipeline.config import retrain_lock_path
from pipeline.metadata import queries as metadata
from pipeline.ops import lock as lock_lib
from tests.conftest import run_cli

REPO = Path(__file__).resolve().parent.parent
PIPELINE = "mlpipe-taxi"
# Every run is blessed (value bound 0, any drop allowed), so baselines and pushes are deterministic.
FLAGS = [
    "--train-steps",
    "50",
    "--eval-steps",
    "10",
    "--window-spans",
    "2",
    "--warm-start",
    "--value-threshold",
    "0",
    "--change-tolerance",
    "1",
]


def stable_source(dest: Path) -> Path:
    """The taxi sample as it is. Its `pickup_census_tract` has one value, in 2013 Q3 (span 3 here), and is
    empty in spans 1-2: the rolling window over them only parses because ExampleGen encodes every span
    with the declared column types (see docs/continuous-training.md, "Column types across spans")."""
    shutil.copyfile(taxi_sample.source_csv(), dest)
    return dest


def ingest_next(source: Path, root: Path) -> None:
    """Adds the next quarter of the source as a new span (~900 rows)."""
    code, out, err = run_cli("ingest", str(source), "--data-root", str(root), "--by", "quarter", "--next", "1")
    assert code == 0, out + err


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


@pytest.fixture(scope="module")
def replay(tmp_path_factory):
    """Runs: retrain on span 1; again with no new span; span 2; span 3 killed at the Trainer (with a
    concurrent retrain tried meanwhile); span 3 again. Returns what each step saw."""
    base = tmp_path_factory.mktemp("retrain")
    root, workspace = base / "spans", base / "workspace"
    common = ["--workspace", str(workspace), "--data-root", str(root), *FLAGS]
    seen = {"workspace": workspace, "root": root}
    source = stable_source(base / "taxi.csv")

    ingest_next(source, root)
    seen["run1"] = run_cli("retrain", *common)
    runs_before = run_count(workspace)
    seen["idle"] = run_cli("retrain", *common)
    seen["idle_new_runs"] = run_count(workspace) - runs_before
    ingest_next(source, root)
    seen["run2"] = run_cli("retrain", *common)
    seen["versions_before_kill"] = serving_versions(workspace)

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
