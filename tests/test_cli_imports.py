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
