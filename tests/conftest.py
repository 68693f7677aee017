"""Shared fixtures: a small slice of the taxi data, one real pipeline run and the first retrains over
spans that tests share."""

from __future__ import annotations

import contextlib
import io
import itertools
import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

SLICE_ROWS = 3000
FAST_FLAGS = ["--train-steps", "100", "--eval-steps", "20"]


def write_taxi_slice(dest: Path, rows: int = SLICE_ROWS) -> Path:
    """The first `rows` data rows of the embedded taxi sample, as dest/data.csv."""
    from data import taxi_sample

    dest.mkdir(parents=True, exist_ok=True)
    with open(taxi_sample.source_csv()) as src, open(dest / "data.csv", "w") as out:
        out.writelines(itertools.islice(src, rows + 1))
    return dest


def typed_value(column: str, text: str):
    """A CSV cell as the type models/features.py COLUMN_TYPES declares (what ExampleGen writes and
    the raw serving signature takes): NaN for a missing float, None for a missing int."""
    from models import features

    kind = features.COLUMN_TYPES[column]
    if kind == "float":
        return float(text) if text else float("nan")
    if kind == "int":
        return int(text) if text else None
    return text


def taxi_rows(data_dir: Path, n: int, missing_floats: bool = False) -> list[dict]:
    """The first `n` rows of data_dir/data.csv with every integer feature present, typed. String
    features may be "" (missing). `missing_floats`: rows with a missing (NaN) float feature come first;
    otherwise only rows with every float feature present."""
    import csv

    from models import features

    with open(data_dir / "data.csv") as f:
        rows = [{k: typed_value(k, v) for k, v in r.items()} for r in csv.DictReader(f)]
    rows = [r for r in rows if all(r[c] is not None for c, kind in features.COLUMN_TYPES.items() if kind == "int")]
    floats = [k for k in features.MODEL_FEATURES if features.COLUMN_TYPES[k] == "float"]

    def has_nan(r):
        return any(r[k] != r[k] for k in floats)

    if missing_floats:
        return ([r for r in rows if has_nan(r)][:2] + rows)[:n]
    return [r for r in rows if not has_nan(r)][:n]


def run_cli(*argv: str) -> tuple[int, str, str]:
    """Runs `mlpipe ARGV...` in-process; returns (exit code, stdout, stderr)."""
    from pipeline import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="session")
def taxi_slice(tmp_path_factory) -> Path:
    return write_taxi_slice(tmp_path_factory.mktemp("taxi-slice"))


@pytest.fixture(scope="session")
def first_run(tmp_path_factory, taxi_slice):
    """One real `mlpipe run` on the slice with few steps: (workspace Path, exit code, stdout, stderr).

    Tests that read this workspace must not run the pipeline in it again; use a copy or a new one.
    """
    workspace = tmp_path_factory.mktemp("workspace")
    code, out, err = run_cli("run", "--workspace", str(workspace), "--data-root", str(taxi_slice), *FAST_FLAGS)
    return workspace, code, out, err


def run_pipeline_process(ws: Path, data_root: Path, *flags: str):
    """`mlpipe run --workspace WS --data-root DATA_ROOT FAST_FLAGS FLAGS` in its own process (output piped)."""
    import subprocess
    import sys

    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
    env.pop("MLPIPE_WORKSPACE", None)
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", "--workspace", str(ws), "--data-root", str(data_root)]
        + [*FAST_FLAGS, *flags],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture(scope="session")
def second_version(first_run, taxi_slice, tmp_path_factory):
    """A copy of first_run's workspace with one more `mlpipe run`, in its own process, that pushes a second
    version (--value-threshold 0.5: only the Evaluator and what follows re-run), polled with `mlpipe runs`
    while it writes MLMD. Returns (workspace, [(exit code, runs JSON or stderr) of each poll]).

    Shared by tests/test_registry.py and tests/test_feedback.py; like first_run: read it, or copy it.
    """
    import json
    import shutil
    import time

    assert first_run[1] == 0, first_run[2] + first_run[3]
    ws = tmp_path_factory.mktemp("second-version") / "ws"
    shutil.copytree(first_run[0], ws)
    proc = run_pipeline_process(ws, taxi_slice, "--value-threshold", "0.5")
    polls = []
    while proc.poll() is None:
        code, out, err = run_cli("runs", "--workspace", str(ws), "--json")
        polls.append((code, json.loads(out) if code == 0 else err))
        time.sleep(0.5)
    output = proc.communicate()[0]
    assert proc.returncode == 0, output
    return ws, polls


@pytest.fixture(scope="session")
def refused_run(second_version, taxi_slice, tmp_path_factory):
    """second_version's workspace copied, then a run that is not blessed (--value-threshold 0.999: the
    Trainer is cached, the Evaluator re-runs and refuses the candidate). Returns (workspace, exit code,
    stdout, stderr, the version directories before it). Shared by tests/test_registry.py and
    tests/test_pipeline_e2e.py; read it, or copy it."""
    import shutil

    ws = tmp_path_factory.mktemp("refused-run") / "ws"
    shutil.copytree(second_version[0], ws)
    before = sorted(p.name for p in (ws / "serving_model" / "taxi").iterdir())
    code, out, err = run_cli(
        "run", "--workspace", str(ws), "--data-root", str(taxi_slice), *FAST_FLAGS, "--value-threshold", "0.999"
    )
    return ws, code, out, err, before


@pytest.fixture(scope="session")
def sampled_run(tmp_path_factory, first_run, taxi_slice):
    """first_run's MLMD copied into a new workspace, then `mlpipe run --json --eval-max-examples 300`:
    everything up to the Trainer is cached; EvalSample, the Evaluator and the gates run again.
    Returns (workspace Path, exit code, stdout, stderr)."""
    import shutil

    source = first_run[0]
    workspace = tmp_path_factory.mktemp("sampled")
    shutil.copyfile(source / "metadata.sqlite", workspace / "metadata.sqlite")
    code, out, err = run_cli(
        "run",
        "--json",
        "--workspace",
        str(workspace),
        "--data-root",
        str(taxi_slice),
        "--eval-max-examples",
        "300",
        *FAST_FLAGS,
    )
    return workspace, code, out, err


# `mlpipe retrain` over spans: every run is blessed (value bound 0, any drop allowed), so baselines and
# pushes are deterministic. tests/test_retrain.py and tests/test_metadata_mysql_e2e.py use these flags.
RETRAIN_FLAGS = [
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
    import shutil

    from data import taxi_sample

    shutil.copyfile(taxi_sample.source_csv(), dest)
    return dest


def ingest_next(source: Path, root: Path) -> None:
    """Adds the next quarter of the source as a new span (~900 rows)."""
    code, out, err = run_cli("ingest", str(source), "--data-root", str(root), "--by", "quarter", "--next", "1")
    assert code == 0, out + err


def pipeline_run_count(workspace: Path) -> int:
    """How many pipeline runs the workspace's SQLite MLMD holds."""
    from pipeline.metadata import queries as metadata

    return len(metadata.pipeline_runs(metadata.open_store(workspace / "metadata.sqlite"), "mlpipe-taxi"))


@pytest.fixture(scope="session")
def span_retrains(tmp_path_factory) -> dict:
    """The first retrains of a span layout, on SQLite, in-process with RETRAIN_FLAGS: span 1 (the taxi
    sample's first quarter) lands, `mlpipe retrain`; `mlpipe retrain` again with no new span; span 2
    lands, `mlpipe retrain`. Returns {"base", "source", "root", "workspace", "run1", "idle", "run2"
    (each (exit code, stdout, stderr)), "idle_new_runs", "snapshot"}.

    tests/test_retrain.py goes on in `workspace` and `root` (span 3, a killed retrain, ...).
    `snapshot` is {"workspace", "root"}: copies of both as they were right after run2 (MLMD's artifact
    URIs still name the originals); tests/test_metadata_mysql_e2e.py reads, labels and rolls back there,
    and compares with the same retrains on MySQL. Read them; change only copies of your own.
    """
    import shutil

    base = tmp_path_factory.mktemp("span-retrains")
    root, workspace = base / "spans", base / "workspace"
    common = ["--workspace", str(workspace), "--data-root", str(root), *RETRAIN_FLAGS]
    shared = {"base": base, "root": root, "workspace": workspace, "source": stable_source(base / "taxi.csv")}
    ingest_next(shared["source"], root)
    shared["run1"] = run_cli("retrain", *common)
    runs_before = pipeline_run_count(workspace)
    shared["idle"] = run_cli("retrain", *common)
    shared["idle_new_runs"] = pipeline_run_count(workspace) - runs_before
    ingest_next(shared["source"], root)
    shared["run2"] = run_cli("retrain", *common)
    snapshot = base / "after-run2"
    shutil.copytree(workspace, snapshot / "workspace", symlinks=True)
    shutil.copytree(root, snapshot / "spans")
    shared["snapshot"] = {"workspace": snapshot / "workspace", "root": snapshot / "spans"}
    return shared
