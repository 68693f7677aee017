"""End to end on the real stack: one shared pipeline run (conftest `first_run`) and cheap follow-ups,
mostly in copies of its workspace (MLMD keeps absolute URIs, so cached artifacts are read from the
original; the copy's Pusher has its own destination)."""

import contextlib
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from models import features
from models import model as model_lib
from pipeline.config import Config
from pipeline.dag import pipeline as pipeline_lib
from pipeline.dag import user_code
from pipeline.metadata import queries as metadata
from pipeline.publish import atomic
from tests.conftest import FAST_FLAGS, run_cli

PIPELINE = Config().pipeline_name
REPO = str(Path(__file__).resolve().parent.parent)


def versions(workspace):
    base = workspace / "serving_model" / "taxi"
    return sorted(p.name for p in base.iterdir()) if base.is_dir() else []


def copy_workspace(first_run, tmp_path, name):
    dest = tmp_path / name
    shutil.copytree(first_run[0], dest)
    return dest


def latest_run_executions(workspace):
    store = metadata.open_store(workspace / "metadata.sqlite")
    run = metadata.pipeline_runs(store, PIPELINE)[0]
    return metadata.run_executions(store, PIPELINE, run)


def test_first_run_is_blessed_and_pushed_with_one_execution_per_component(first_run):
    workspace, code, out, err = first_run
    assert code == 0, out + err
    assert "Result: BLESSED and pushed as version" in out
    pushed = versions(workspace)
    assert len(pushed) == 1 and pushed[0].isdigit()
    assert f"serving_model/taxi/{pushed[0]}" in out

    executions = latest_run_executions(workspace)
    assert [e.node_id for e in executions] == list(pipeline_lib.COMPONENT_ORDER)
    assert all(e.state == "ran" for e in executions if e.node_id != "latest_blessed_model_resolver")
    store = metadata.open_store(workspace / "metadata.sqlite")
    assert len(store.get_executions()) == len(pipeline_lib.COMPONENT_ORDER)
    assert len(metadata.pipeline_runs(store, PIPELINE)) == 1


def test_summary_reports_each_thresholded_metric(first_run):
    _, _, out, _ = first_run
    assert "binary_accuracy" in out and ">= 0.6000 (value threshold)" in out
    assert "no blessed baseline yet" in out  # first run: the change threshold has nothing to compare


def test_model_code_fingerprint_is_in_transform_and_trainer_config(first_run):
    executions = {e.node_id: e.execution for e in latest_run_executions(first_run[0])}
    fingerprint = user_code.models_fingerprint()
    for node in ("Transform", "Trainer"):
        custom_config = json.loads(metadata.custom_property(executions[node], "custom_config"))
        assert custom_config["models_fingerprint"] == fingerprint


def test_fingerprint_changes_with_model_code(tmp_path):
    shutil.copytree(
        Path(features.__file__).resolve().parent, tmp_path / "models", ignore=shutil.ignore_patterns("__pycache__")
    )
    before = user_code.models_fingerprint(tmp_path / "models")
    assert before == user_code.models_fingerprint()
    with open(tmp_path / "models" / "preprocessing.py", "a") as f:
        f.write("\n# a change\n")
    assert user_code.models_fingerprint(tmp_path / "models") != before


def _slice_rows(taxi_slice, n, specs):
    with open(taxi_slice / "data.csv") as f:
        rows = list(csv.DictReader(f))
    # Integer features cannot say "missing" in the raw signature; strings ("") and floats (NaN) can.
    rows = [r for r in rows if all(r[k] for k, spec in specs.items() if spec.dtype == tf.int64)]
    with_missing = [r for r in rows if any(not r[k] for k in features.MODEL_FEATURES)]
    return (with_missing[:2] + rows)[:n]


def _typed(value, dtype):
    if dtype == tf.float32:
        return float(value) if value else float("nan")
    return int(value) if dtype == tf.int64 else value


def test_pushed_model_signatures_return_probabilities(first_run, taxi_slice):
    workspace = first_run[0]
    loaded = tf.saved_model.load(str(workspace / "serving_model" / "taxi" / versions(workspace)[0]))
    raw = loaded.signatures[model_lib.RAW_SIGNATURE]
    specs = raw.structured_input_signature[1]
    rows = _slice_rows(taxi_slice, 5, specs)
    inputs = {k: tf.constant([_typed(r[k], spec.dtype) for r in rows], spec.dtype) for k, spec in specs.items()}
    scores = raw(**inputs)[model_lib.OUTPUT_KEY].numpy()
    assert scores.shape == (5, 1)
    assert np.all((scores >= 0) & (scores <= 1))

    examples = []
    for r in rows:
        example = tf.train.Example()
        for k, spec in specs.items():
            value = _typed(r[k], spec.dtype)
            if not r[k]:
                continue  # missing: absent from the tf.Example, as ExampleGen writes it
            if spec.dtype == tf.float32:
                example.features.feature[k].float_list.value.append(value)
            elif spec.dtype == tf.int64:
                example.features.feature[k].int64_list.value.append(value)
            else:
                example.features.feature[k].bytes_list.value.append(value.encode())
        examples.append(example.SerializeToString())
    by_example = loaded.signatures[model_lib.SERVING_DEFAULT](inputs=tf.constant(examples))
    np.testing.assert_allclose(by_example[model_lib.OUTPUT_KEY].numpy(), scores, rtol=1e-5)


def test_unreachable_threshold_pushes_nothing_and_says_why(refused_run):
    """conftest `refused_run`: a run with --value-threshold 0.999 after the first run and a second one."""
    workspace, code, out, err, before = refused_run
    assert code == 0, out + err
    assert "Result: NOT BLESSED, nothing pushed (binary_accuracy" in out
    assert "< 0.9990" in out
    assert versions(workspace) == before
    ran = {e.node_id: e.state for e in latest_run_executions(workspace)}
    assert ran["Trainer"] == "cached" and ran["Evaluator"] == "ran" and ran["Pusher"] == "ran"


@contextlib.contextmanager
def borrowed_workspace(first_run, tmp_path):
    """The shared run's workspace itself, restored afterwards. For a re-run that must be truly
    unchanged: a copy elsewhere changes the Pusher's destination, which is part of its cache key."""
    workspace = first_run[0]
    pristine = tmp_path / "pristine"
    shutil.copytree(workspace, pristine)
    try:
        yield workspace
    finally:
        shutil.rmtree(workspace)
        shutil.move(str(pristine), str(workspace))


def test_rerun_with_unchanged_inputs_is_fully_cached(first_run, taxi_slice, tmp_path):
    with borrowed_workspace(first_run, tmp_path) as workspace:
        before = versions(workspace)
        code, out, err = run_cli(
            "run", "--workspace", str(workspace), "--data-root", str(taxi_slice), *FAST_FLAGS, "--json"
        )
        assert code == 0, out + err
        summary = json.loads(out)
        states = {c["node_id"]: c["state"] for c in summary["components"]}
        assert summary["fully_cached"] is True, states
        assert summary["completed"] is True
        # Every component reused its cached execution; the resolver has no cache and just resolves.
        assert {n for n, s in states.items() if s != "cached"} == {"latest_blessed_model_resolver"}
        assert versions(workspace) == before


def test_anomalies_stop_the_run_before_training(first_run, taxi_slice, tmp_path):
    workspace = copy_workspace(first_run, tmp_path, "ws")
    inferred = next((first_run[0] / "pipeline_root" / "SchemaGen" / "schema").rglob("schema.pbtxt"))
    curated = tmp_path / "schema.pbtxt"
    # A curated schema that does not know the payment type "Cash", which the data has.
    curated.write_text(inferred.read_text().replace('  value: "Cash"\n', "", 1))
    code, out, err = run_cli(
        "run",
        "--workspace",
        str(workspace),
        "--data-root",
        str(taxi_slice),
        *FAST_FLAGS,
        "--schema",
        str(curated),
    )
    assert code == 1
    assert "Result: FAILED at AnomaliesGate" in out
    assert "feature 'payment_type'" in out and "Cash" in out
    nodes = {e.node_id: e.state for e in latest_run_executions(workspace)}
    assert nodes["AnomaliesGate"] == "failed"
    assert "Transform" not in nodes and "Trainer" not in nodes
    assert versions(workspace) == versions(first_run[0])


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: None, "does not exist"),
        (lambda d: d.mkdir(), "has no *.csv files"),
        (lambda d: (d.mkdir(), (d / "data.csv").write_text("")), "is empty"),
        (lambda d: (d.mkdir(), (d / "data.csv").write_text("fare,tips\n1.0,2.0\n")), "missing column(s)"),
    ],
)
def test_bad_input_data_fails_with_one_line_and_keeps_state(first_run, tmp_path, setup, message):
    workspace = copy_workspace(first_run, tmp_path, "ws")
    data_dir = tmp_path / "data"
    setup(data_dir)
    code, out, err = run_cli("run", "--workspace", str(workspace), "--data-root", str(data_dir))
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("mlpipe: input data error:")
    assert versions(workspace) == versions(first_run[0])
    store = metadata.open_store(workspace / "metadata.sqlite")
    assert len(metadata.pipeline_runs(store, PIPELINE)) == 1


def test_extra_csv_column_is_rejected(taxi_slice, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with open(taxi_slice / "data.csv") as src, open(data_dir / "data.csv", "w") as out:
        for i, line in enumerate(src):
            out.write(line.rstrip("\n") + (",surge\n" if i == 0 else ",1\n"))
            if i > 5:
                break
    code, _, err = run_cli("run", "--workspace", str(tmp_path / "ws"), "--data-root", str(data_dir))
    assert code == 2
    assert "unexpected column(s) surge" in err
    assert not (tmp_path / "ws" / "serving_model").exists()


def test_bad_config_file_fails_with_one_line_naming_the_key(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[training]\ntrain_steps = 0\n")
    code, _, err = run_cli("run", "--config", str(config), "--workspace", str(tmp_path / "ws"))
    assert code == 2
    assert err.strip() == "mlpipe: config error: training.train_steps: must be positive, got 0"
    assert not (tmp_path / "ws").exists()


def test_a_worse_candidate_is_refused_by_the_change_threshold(first_run, taxi_slice, tmp_path):
    """The first run's model (100 steps) is in production; a candidate trained for 1 step is worse
    on AUC by more than the tolerance, so the Evaluator refuses it, and every report says why."""
    workspace = copy_workspace(first_run, tmp_path, "ws")
    before = versions(workspace)
    code, out, err = run_cli(
        "run",
        "--workspace",
        str(workspace),
        "--data-root",
        str(taxi_slice),
        "--train-steps",
        "1",
        "--eval-steps",
        "20",
        "--value-threshold",
        "0",  # only the change threshold can refuse it
        "--change-tolerance",
        "0.01",
    )
    assert code == 0, out + err
    assert versions(workspace) == before  # nothing pushed
    ran = {e.node_id: e.state for e in latest_run_executions(workspace)}
    assert ran["Trainer"] == "ran" and ran["Evaluator"] == "ran"

    # The run summary: metric, candidate value, baseline value and bound.
    (auc_line,) = [line for line in out.splitlines() if line.strip().startswith("auc ") and "(baseline" in line]
    candidate, bound, baseline = (
        float(x)
        for x in re.search(r"auc\s+([\d.]+)\s+>= ([\d.]+) \(baseline ([\d.]+) - tolerance\)", auc_line).groups()
    )
    assert auc_line.rstrip().endswith("FAIL")
    assert bound == pytest.approx(baseline - 0.01, abs=1e-4) and candidate < bound
    assert (
        f"Result: NOT BLESSED, nothing pushed (auc {candidate:.4f} < {bound:.4f} "
        f"(baseline {baseline:.4f} - tolerance 0.0100))"
    ) in out

    # `mlpipe runs`: the same check, with the baseline, in JSON and in the table.
    runs = json.loads(run_cli("runs", "--workspace", str(workspace), "--json")[1])["runs"]
    assert runs[0]["outcome"] == "not_blessed"
    (failed,) = runs[0]["failed_checks"]
    assert failed["metric"] == "auc" and failed["kind"] == "change" and failed["passed"] is False
    assert failed["value"] == pytest.approx(candidate, abs=1e-4)
    assert failed["baseline_value"] == pytest.approx(baseline, abs=1e-4)
    assert failed["bound"] == pytest.approx(bound, abs=1e-4)
    table = run_cli("runs", "--workspace", str(workspace))[1]
    assert f"not blessed (auc {candidate:.4f} < {bound:.4f} (baseline {baseline:.4f} - tolerance 0.0100))" in table

    # `mlpipe models`: the refused candidate, next to the version it was compared with.
    data = json.loads(run_cli("models", "--workspace", str(workspace), "--json")[1])
    (refused,) = data["refused"]
    assert refused["run_id"] == runs[0]["run_id"]
    assert refused["baseline"]["version"] == int(before[0])
    (check,) = refused["failed_checks"]
    assert (check["metric"], check["value"], check["baseline_value"], check["bound"]) == (
        "auc",
        failed["value"],
        failed["baseline_value"],
        failed["bound"],
    )
    text = run_cli("models", "--workspace", str(workspace))[1]
    assert f"refused: run {refused['run_id']}" in text
    assert f"auc {candidate:.4f} >= {bound:.4f} (baseline {baseline:.4f} + change threshold) FAIL" in text


def test_sigkill_during_the_push_copy_leaves_no_partial_version(first_run, taxi_slice, tmp_path):
    """A real SIGKILL while the Pusher copies (no monkeypatch): no partial integer version appears,
    and the next run cleans the leftover temp dir and pushes."""
    workspace = copy_workspace(first_run, tmp_path, "ws")
    base = workspace / "serving_model" / "taxi"
    before = versions(workspace)
    # A wide model (~70 MB of variables) so that the copy takes long enough to be caught in the act.
    config = tmp_path / "big.toml"
    config.write_text("[training]\nhidden_units = [4096, 4096]\n")
    argv = [
        "-m",
        "pipeline",
        "run",
        "--workspace",
        str(workspace),
        "--data-root",
        str(taxi_slice),
        "--config",
        str(config),
        "--train-steps",
        "5",
        "--eval-steps",
        "5",
        "--value-threshold",
        "0",
        "--change-tolerance",
        "1",
    ]  # blessed whatever its quality
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", PYTHONPATH=REPO)
    with open(tmp_path / "killed-run.out", "w") as console:
        proc = subprocess.Popen(
            [sys.executable, *argv], cwd=REPO, env=env, stdout=console, stderr=subprocess.STDOUT, start_new_session=True
        )
    partial = None
    try:
        deadline = time.monotonic() + 900
        while partial is None:
            assert proc.poll() is None, (tmp_path / "killed-run.out").read_text()
            assert time.monotonic() < deadline, "the Pusher's copy was never seen"
            partial = next((p for p in os.listdir(base) if p.startswith(atomic.TMP_PREFIX)), None)
            if partial is None:
                time.sleep(0.002)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(60)
    assert proc.returncode == -signal.SIGKILL
    # Killed mid-push: the temp dir is there, no new integer version is.
    assert (base / partial).is_dir()
    assert versions(workspace) == sorted(before + [partial])

    code, out, err = run_cli(*argv[2:])
    assert code == 0, out + err
    assert "Result: BLESSED and pushed as version" in out
    (new,) = [v for v in versions(workspace) if v not in before]
    assert new.isdigit() and (base / new / "saved_model.pb").is_file()
    assert not [p for p in os.listdir(base) if p.startswith(atomic.TMP_PREFIX)]  # the leftover was removed
    # The pushed copy is whole: it loads and answers.
    loaded = tf.saved_model.load(str(base / new))
    assert model_lib.SERVING_DEFAULT in loaded.signatures
