"""The CLI answers at once: the read-only commands do not import TensorFlow, TFX or TFMA (issue 17).

Each command runs in a fresh interpreter through the real entry point (pipeline.cli.main) on the shared
first_run workspace; the test checks which heavy packages ended up in sys.modules, not the wall time
(bench/cli_latency.py measures that).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FAST_FLAGS
from tests.test_monitor import _window, served, write_traffic  # noqa: F401 (served: the fixture)
from tests.test_pipeline_e2e import borrowed_workspace

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("tensorflow", "tfx", "tensorflow_model_analysis", "tensorflow_data_validation", "tensorflow_transform")
# What a fully cached `mlpipe run` does not need (it needs TFX's LocalDagRunner, which imports TF, TFMA, TFDV
# and Beam): tfx.v1's Vertex AI extension and Kubeflow runner, and the model code (Keras, tf.Transform).
NOT_FOR_A_CACHED_RUN = (
    "tfx.v1",
    "tfx.extensions.google_cloud_ai_platform",
    "google.cloud.aiplatform",
    "kfp",
    "models.model",
    "models.preprocessing",
)
PROBE = """
import json, sys
from pipeline import cli
try:
    code = cli.main(sys.argv[1:])
except SystemExit as e:  # --help
    code = e.code
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(%r))
loaded = sorted(set(sys.modules) & set(%r))
print("\\nIMPORTS " + json.dumps({"code": code, "heavy": heavy, "loaded": loaded}), file=sys.__stdout__)
""" % (HEAVY, NOT_FOR_A_CACHED_RUN)


def probe(*argv: str) -> tuple[dict, str]:
    """What `mlpipe ARGV` in a fresh interpreter imported ({"code", "heavy", "loaded"}), and its stdout
    (ending in the IMPORTS line)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], cwd=REPO, env=env, capture_output=True, text=True)
    marker = [line for line in done.stdout.splitlines() if line.startswith("IMPORTS ")]
    assert marker, done.stdout + done.stderr
    return json.loads(marker[-1][len("IMPORTS ") :]), done.stdout


def imports_of(*argv: str) -> tuple[int, list[str], str]:
    """(exit code, heavy packages imported, stdout) of `mlpipe ARGV` in a fresh interpreter."""
    result, out = probe(*argv)
    return result["code"], result["heavy"], out


@pytest.fixture(scope="module")
def workspace(first_run):
    ws, code, out, err = first_run
    assert code == 0, err
    return ws


def test_registry_commands_import_no_tensorflow(workspace):
    versions = sorted(int(p.name) for p in (workspace / "serving_model" / "taxi").iterdir() if p.name.isdigit())
    for argv in (
        ["runs", "--json"],
        ["models", "--json"],
        ["lineage", str(versions[-1]), "--json"],
        ["label", "list"],
        ["rollback", "--dry-run", "--reason", "import budget", "--json"],
        ["--help"],
    ):
        code, heavy, out = imports_of(*argv, *(["--workspace", str(workspace)] if argv != ["--help"] else []))
        assert heavy == [], (argv, heavy)
        # They answered: the one pushed version has nothing before it to roll back to (a one-line refusal, 1).
        assert code == (1 if argv[0] == "rollback" else 0), (argv, out)
    code, heavy, out = imports_of("models", "--json", "--workspace", str(workspace))
    assert code == 0 and '"auc"' in out  # the Evaluator's metrics were read, without TFMA


def test_monitor_of_a_clean_window_imports_no_tensorflow(served):  # noqa: F811 (the fixture)
    ws, version, rows, now = served
    write_traffic(ws / "request_logs" / "taxi", rows[:600], version, now - 3 * 3600, 3600, seed=11)
    window = _window(now, 3)
    # The first run of a version builds its baseline (scores the eval split with the SavedModel: TF).
    from tests.conftest import run_cli

    code, first, err = run_cli("monitor", "--workspace", str(ws), *window, "--json", "--no-notify")
    assert code == 0, first + err
    code, heavy, out = imports_of("monitor", "--workspace", str(ws), *window, "--json", "--no-notify")
    assert code == 0 and heavy == [], heavy
    report = json.loads(out[: out.rindex("\nIMPORTS ")])
    again = json.loads(first)
    for data in (report, again):
        data.pop("timing"), data.pop("retrain_gate")
    assert report == again  # the same verdicts, checks and (no) anomalies as the in-process run


def test_a_fully_cached_run_imports_neither_vertex_kubeflow_nor_the_model_code(first_run, taxi_slice, tmp_path):
    """`mlpipe run` with nothing changed: TFX from its own modules, not tfx.v1; the [model] code check
    answered from the workspace's record (pipeline/dag/user_code.py check) without importing the model."""
    with borrowed_workspace(first_run, tmp_path) as ws:  # the shared run's workspace: its cache keys hold
        result, out = probe("run", "--workspace", str(ws), "--data-root", str(taxi_slice), *FAST_FLAGS, "--json")
    assert result["code"] == 0, out
    summary = json.loads(out[: out.rindex("\nIMPORTS ")])
    assert summary["fully_cached"] is True, [(c["node_id"], c["state"]) for c in summary["components"]]
    assert result["loaded"] == [], result["loaded"]


def _run_records(store, pipeline_name: str, run) -> list[tuple]:
    """What MLMD holds about a run, per execution in order: type, state, properties, events, contexts but the run's."""
    from pipeline.metadata import queries as metadata

    records = []
    for e in sorted(store.get_executions_by_context(run.id), key=lambda e: e.id):
        events = sorted(
            (ev.artifact_id, ev.type, tuple(s.key or str(s.index) for s in ev.path.steps))
            for ev in store.get_events_by_execution_ids([e.id])
        )
        contexts = sorted(c.name for c in store.get_contexts_by_execution(e.id) if c.id != run.id)
        properties = sorted((k, str(v)) for k, v in e.custom_properties.items())
        records.append((e.type, e.last_known_state, properties, events, contexts))
    assert records and metadata.pipeline_runs(store, pipeline_name)
    return records


def test_an_unchanged_run_after_a_fully_cached_one_records_tfxs_decision_without_tfx(first_run, taxi_slice, tmp_path):
    """Nothing changed since a run TFX found fully cached: the next run is recorded as TFX recorded that one
    (pipeline/ops/unchanged.py) without importing TF or TFX; any write to the metadata store sends the run
    after it to TFX again."""
    from pipeline import config as config_lib
    from pipeline.metadata import queries as metadata
    from tests.conftest import run_cli

    with borrowed_workspace(first_run, tmp_path) as ws:
        argv = ("run", "--workspace", str(ws), "--data-root", str(taxi_slice), *FAST_FLAGS, "--json")
        summaries = []
        for expect_tfx in (True, False, False):
            result, out = probe(*argv)
            assert result["code"] == 0, out
            assert ("tfx" in result["heavy"]) is expect_tfx, result["heavy"]
            summaries.append(json.loads(out[: out.rindex("\nIMPORTS ")]))
            assert summaries[-1]["fully_cached"] is True
        store = metadata.open_store(config_lib.load(overrides={"workspace": str(ws)}))
        runs = metadata.pipeline_runs(store, "mlpipe-taxi")  # newest first
        assert [r.name for r in runs[:3]] == [s["run_id"] for s in reversed(summaries)]
        by_tfx = _run_records(store, "mlpipe-taxi", runs[2])
        assert _run_records(store, "mlpipe-taxi", runs[1]) == by_tfx
        assert _run_records(store, "mlpipe-taxi", runs[0]) == by_tfx

        def same(s):
            s = {k: v for k, v in s.items() if k not in ("run_id", "seconds", "log", "report")}
            s["components"] = [(c["node_id"], c["state"]) for c in s["components"]]
            s["gates"] = [{k: v for k, v in g.items() if k != "execution_id"} for g in s["gates"]]  # this run's
            return s

        assert same(summaries[1]) == same(summaries[0]) == same(summaries[2])
        # A write to the store (a label move is recorded in MLMD): TFX decides again, and finds it all cached.
        code, out, err = run_cli("label", "set", "stable", summaries[0]["pushed_version"], "--workspace", str(ws))
        assert code == 0, out + err
        result, out = probe(*argv)
        assert result["code"] == 0 and "tfx" in result["heavy"], result
        assert json.loads(out[: out.rindex("\nIMPORTS ")])["fully_cached"] is True
        # A cached output gone from the disk: TFX does not re-use it (it checks), so the run goes to TFX.
        import shutil

        shutil.rmtree(ws / "pipeline_root" / "ExampleValidator")
        result, out = probe(*argv)
        assert result["code"] == 0 and "tfx" in result["heavy"], result
        states = {c["node_id"]: c["state"] for c in json.loads(out[: out.rindex("\nIMPORTS ")])["components"]}
        assert states["ExampleValidator"] == "ran" and states["Trainer"] == "cached", states
