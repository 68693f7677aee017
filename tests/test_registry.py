"""mlpipe runs / models / lineage / rollback / label on MLMD stores written by real pipeline runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import run_cli, run_pipeline_process

REPO = Path(__file__).resolve().parent.parent
RUN_KEYS = {
    "run_id",
    "started",
    "seconds",
    "outcome",
    "pushed_version",
    "failed_checks",
    "failed_component",
    "error",
    "fully_cached",
    "spans",
    "components",
    "log",
}
VERSION_KEYS = {
    "version",
    "pushed",
    "path",
    "recorded_destination",
    "run_id",
    "model_id",
    "trainer_run_id",
    "checks",
    "baseline",
    "training_spans",
    "rollback",
    "release",  # docs/release.md
    "verdict",  # the gates' verdicts (docs/release.md)
    "gates",
    "forced_blessing",
}
CHECK_KEYS = {"metric", "kind", "value", "bound", "baseline_value", "passed"}
LINEAGE_KEYS = {
    "version",
    "published",
    "pushed",
    "pusher",
    "rollback",
    "evaluation",
    "model",
    "transform",
    "examples",
    "schema",
    "anomalies",
    "release",  # docs/release.md: the version's release status and decisions
    "gates",  # docs/release.md
    "forced_blessing",
}


def cli_json(*argv):
    code, out, err = run_cli(*argv, "--json")
    assert code == 0, out + err
    return json.loads(out)


def version_dirs(workspace: Path) -> list[int]:
    base = workspace / "serving_model" / "taxi"
    return sorted(int(p.name) for p in base.iterdir() if p.name.isdigit())


def copy_workspace(first_run, dest: Path) -> Path:
    shutil.copytree(first_run[0], dest)
    return dest


@pytest.fixture(scope="module")
def versions_ws(second_version, refused_run):
    """A copy of the first run's workspace with two more runs: one that pushes a second version
    (conftest `second_version`: a lower value threshold, so only Evaluator and Pusher re-run), polled
    with `mlpipe runs` while it writes MLMD, then one that is not blessed (conftest `refused_run`:
    --value-threshold 0.999). Read-only: tests that change it copy it.

    Returns (workspace, [(exit code, runs JSON) of each poll during the second run]).
    """
    ws, code, out, err, _ = refused_run
    assert code == 0 and "NOT BLESSED" in out, out + err
    return ws, second_version[1]


# --- empty workspace ----------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["runs"], ["models"], ["lineage", "--span", "0"], ["label", "list"]])
def test_every_query_on_an_empty_workspace_says_nothing_yet(tmp_path, argv):
    code, out, err = run_cli(*argv, "--workspace", str(tmp_path / "empty"))
    assert code == 0, err
    assert "nothing yet" in out or "no labels yet" in out or "No pushed version" in out
    code, out, err = run_cli(*argv, "--workspace", str(tmp_path / "empty"), "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data.get("runs", data.get("versions", data.get("labels"))) in ([], {})
    assert not (tmp_path / "empty" / "metadata.sqlite").exists()  # queries never create a store


def test_rollback_and_lineage_on_an_empty_workspace_refuse_clearly(tmp_path):
    code, out, err = run_cli("rollback", "--workspace", str(tmp_path), "--reason", "x")
    assert code == 1
    assert "nothing to roll back" in err and err.count("\n") == 1
    code, out, err = run_cli("lineage", "7", "--workspace", str(tmp_path))
    assert code == 2 and "no version 7" in err


# --- one real run -------------------------------------------------------------------------------


def test_runs_reports_the_first_run_as_pushed(first_run):
    ws = first_run[0]
    data = cli_json("runs", "--workspace", str(ws))
    (run,) = data["runs"]
    assert set(run) >= RUN_KEYS
    assert run["outcome"] == "pushed"
    assert run["pushed_version"] == str(version_dirs(ws)[0])
    assert run["spans"] == [0]
    assert run["components"]["Trainer"] == "ran" and run["components"]["Pusher"] == "ran"
    assert run["seconds"] > 1
    code, out, _ = run_cli("runs", "--workspace", str(ws))
    assert f"pushed version {version_dirs(ws)[0]}" in out


def test_lineage_of_the_pushed_version_is_complete(first_run, taxi_slice):
    ws = first_run[0]
    (version,) = version_dirs(ws)
    chain = cli_json("lineage", str(version), "--workspace", str(ws))
    assert set(chain) == LINEAGE_KEYS
    assert chain["version"] == version
    assert chain["pushed"]["exists"] and chain["pushed"]["path"] == str(ws / "serving_model" / "taxi" / str(version))
    assert chain["pusher"]["node"] == "Pusher" and chain["pusher"]["state"] == "ran"
    ev = chain["evaluation"]
    assert ev["blessed"] is True and ev["execution"]["node"] == "Evaluator"
    accuracy = next(c for c in ev["checks"] if c["metric"] == "binary_accuracy")
    assert set(accuracy) == CHECK_KEYS
    assert accuracy["kind"] == "value" and accuracy["bound"] == pytest.approx(0.6)
    assert accuracy["passed"] is True and 0.6 <= accuracy["value"] <= 1
    auc = next(c for c in ev["checks"] if c["metric"] == "auc")
    assert auc["kind"] == "change" and auc["passed"] is None  # first model: no baseline
    assert ev["baseline"] is None
    assert {
        "metric": "auc",
        "kind": "change",
        "absolute": -0.01,
        "relative": None,
        "direction": "HIGHER_IS_BETTER",
    } in ev["thresholds"]
    model = chain["model"]
    assert model["trainer"]["node"] == "Trainer"
    assert model["train_args"] == {"num_steps": 100} and model["eval_args"] == {"num_steps": 20}
    assert model["hyperparameters"]["batch_size"] == 64 and model["hyperparameters"]["seed"] == 42
    assert len(model["models_fingerprint"]) == 64
    assert model["models_fingerprint"] == chain["transform"]["models_fingerprint"]
    assert Path(model["uri"]).is_dir()
    assert chain["transform"]["execution"]["node"] == "Transform" and Path(chain["transform"]["graph_uri"]).is_dir()
    (examples,) = chain["examples"]
    assert examples["span"] == 0 and sorted(examples["splits"]) == ["eval", "train"]
    assert sum(examples["row_counts"].values()) == 3000  # the slice's rows, counted by StatisticsGen
    assert examples["input_base"] == str(taxi_slice)
    assert f"total_bytes:{(taxi_slice / 'data.csv').stat().st_size}" in examples["input_fingerprint"]
    assert examples["example_gen"]["node"] == "CsvExampleGen"
    assert (Path(chain["schema"]["uri"]) / "schema.pbtxt").is_file()
    assert chain["schema"]["produced_by"]["node"] == "SchemaGen"
    (anomalies,) = chain["anomalies"]
    assert anomalies["by_split"] == {"train": [], "eval": []}
    # The text view names each link of the chain.
    code, out, _ = run_cli("lineage", str(version), "--workspace", str(ws))
    for link in ("Pusher", "Evaluator", "Trainer", "Transform graph", "Examples", "Schema", "Anomalies"):
        assert link in out


def test_lineage_of_an_unknown_version_is_a_usage_error(first_run):
    code, out, err = run_cli("lineage", "12345", "--workspace", str(first_run[0]))
    assert code == 2
    assert "version 12345 was never pushed" in err and str(version_dirs(first_run[0])[0]) in err


def test_a_run_that_failed_halfway_is_reported_with_its_component_and_error(first_run, taxi_slice, tmp_path):
    ws = copy_workspace(first_run, tmp_path / "ws")
    schema = next((ws / "pipeline_root" / "SchemaGen" / "schema").glob("*/schema.pbtxt")).read_text()
    # A curated schema no trip can satisfy: ExampleValidator reports it, AnomaliesGate fails the run.
    head, rest = schema.split('name: "trip_miles"', 1)
    rest = rest.replace("type: FLOAT\n", "type: FLOAT\n  float_domain {\n    min: 5000.0\n  }\n", 1)
    curated = head + 'name: "trip_miles"' + rest
    assert curated != schema
    (tmp_path / "schema.pbtxt").write_text(curated)
    # The real CLI in its own process, so the run's log is written as in real use.
    proc = run_pipeline_process(ws, taxi_slice, "--schema", str(tmp_path / "schema.pbtxt"))
    output = proc.communicate()[0]
    assert proc.returncode == 1, output
    runs = cli_json("runs", "--workspace", str(ws))["runs"]
    assert [r["outcome"] for r in runs] == ["failed", "pushed"]
    assert runs[0]["failed_component"] == "AnomaliesGate"
    assert runs[0]["error"].startswith("DataAnomaliesError: data anomalies found by ExampleValidator")
    assert "feature 'trip_miles'" in runs[0]["error"] and "\n" not in runs[0]["error"]
    assert Path(runs[0]["log"]).parent == ws / "logs"
    assert "Trainer" not in runs[0]["components"]
    code, out, _ = run_cli("runs", "--workspace", str(ws))
    assert "FAILED at AnomaliesGate" in out
    # The earlier version is still listed and still the one served.
    models = cli_json("models", "--workspace", str(ws))
    assert [v["version"] for v in models["versions"]] == version_dirs(ws)
    assert models["serving"]["loaded"] == version_dirs(ws)


# --- several versions, rollback, labels ---------------------------------------------------------


def test_runs_can_be_read_while_a_run_writes_mlmd(versions_ws):
    _, polls = versions_ws
    assert polls, "the run finished before the first poll"
    assert all(code == 0 for code, _ in polls), [p for p in polls if p[0] != 0]
    outcomes = [[r["outcome"] for r in data["runs"]] for _, data in polls]
    assert all(o[-1] == "pushed" for o in outcomes)  # the first run is always readable
    assert any(len(o) == 2 and o[0] == "incomplete" for o in outcomes), outcomes


def test_runs_lists_every_outcome_newest_first(versions_ws):
    ws, _ = versions_ws
    runs = cli_json("runs", "--workspace", str(ws))["runs"]
    assert [r["outcome"] for r in runs] == ["not_blessed", "pushed", "pushed"]
    assert [r["run_id"] for r in runs] == sorted((r["run_id"] for r in runs), reverse=True)
    (failed,) = runs[0]["failed_checks"]
    assert failed["metric"] == "binary_accuracy" and failed["bound"] == pytest.approx(0.999)
    assert failed["value"] < 0.999 and failed["passed"] is False
    assert runs[1]["pushed_version"] == str(version_dirs(ws)[1])
    assert runs[0]["components"]["Trainer"] == "cached" and runs[0]["components"]["Evaluator"] == "ran"
    code, out, _ = run_cli("runs", "--workspace", str(ws))
    assert "not blessed (binary_accuracy" in out and "< 0.9990" in out


def test_models_lists_pushed_versions_and_what_serving_loads(versions_ws):
    ws, _ = versions_ws
    data = cli_json("models", "--workspace", str(ws))
    v1, v2 = version_dirs(ws)[:2]
    assert [v["version"] for v in data["versions"]][-2:] == [v2, v1]
    for record in data["versions"]:
        assert set(record) == VERSION_KEYS
    newest, first = data["versions"][-2], data["versions"][-1]
    assert newest["model_id"] == first["model_id"]  # the Trainer was cached: same model, new push
    bounds = {c["metric"]: c["bound"] for c in newest["checks"] if c["kind"] == "value"}
    assert bounds == {"binary_accuracy": pytest.approx(0.5)}
    assert {c["metric"]: c["bound"] for c in first["checks"] if c["kind"] == "value"} == {
        "binary_accuracy": pytest.approx(0.6)
    }
    assert newest["run_id"] != first["run_id"] and newest["trainer_run_id"] == first["run_id"]
    assert newest["training_spans"] == [0]
    serving = data["serving"]
    assert set(serving) == {"base_path", "model_config_file", "latest", "labels", "loaded", "versions_on_disk"}


def test_lineage_by_span_names_every_version_trained_on_it(versions_ws):
    ws, _ = versions_ws
    pushed = [v["version"] for v in cli_json("models", "--workspace", str(ws))["versions"]]
    assert cli_json("lineage", "--span", "0", "--workspace", str(ws)) == {"span": 0, "versions": sorted(pushed)}
    assert cli_json("lineage", "--span", "9", "--workspace", str(ws)) == {"span": 9, "versions": []}


def test_rollback_republishes_an_earlier_version_and_leaves_an_audit_trail(versions_ws, tmp_path):
    ws = shutil.copytree(versions_ws[0], tmp_path / "ws")
    v1, v2 = version_dirs(ws)
    base = ws / "serving_model" / "taxi"
    # v1 and v2 are the same model pushed twice; make v2 distinguishable so the copy's source shows.
    assert (base / str(v1) / "saved_model.pb").read_bytes() == (base / str(v2) / "saved_model.pb").read_bytes()
    (base / str(v2) / "marker").write_text("v2")

    dry = cli_json("rollback", "--workspace", str(ws), "--reason", "bad canary", "--dry-run")
    assert dry == {
        **dry,
        "dry_run": True,
        "to_version": v1,
        "replaced_version": v2,
        "new_version": v2 + 1,
        "execution_id": None,
    }
    assert version_dirs(ws) == [v1, v2]

    result = cli_json("rollback", "--workspace", str(ws), "--reason", "bad canary")
    assert result["to_version"] == v1 and result["new_version"] == v2 + 1 and result["execution_id"] > 0
    assert version_dirs(ws) == [v1, v2, v2 + 1]
    assert [p.name for p in base.iterdir() if not p.name.isdigit()] == []  # no temp dir left behind
    new = base / str(v2 + 1)
    assert (new / "saved_model.pb").read_bytes() == (base / str(v1) / "saved_model.pb").read_bytes()
    assert not (new / "marker").exists()

    # Audit: an mlpipe.Rollback execution linked to both versions' artifacts.
    from pipeline.metadata import queries as metadata

    store = metadata.open_store(ws / "metadata.sqlite")
    (execution,) = store.get_executions_by_type(metadata.ROLLBACK_EXECUTION_TYPE)
    assert metadata.prop(execution, "reason") == "bad canary"
    assert metadata.prop(execution, "user")
    assert metadata.prop(execution, "to_version") == str(v1) and metadata.prop(execution, "from_version") == str(v2)
    events = store.get_events_by_execution_ids([execution.id])
    linked = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])}
    pushed_versions = {metadata.prop(a, "pushed_version") for a in linked.values() if a.type == "PushedModel"}
    assert pushed_versions == {str(v1), str(v2), str(v2 + 1)}
    assert any(a.type == "Model" for a in linked.values())

    # Visible in models and lineage; serving now loads the re-published version.
    models = cli_json("models", "--workspace", str(ws))
    assert models["serving"]["loaded"] == [v2 + 1]
    top = models["versions"][0]
    assert top["version"] == v2 + 1
    assert top["rollback"] == {
        "execution_id": result["execution_id"],
        "of_version": v1,
        "replaced_version": str(v2),
        "reason": "bad canary",
        "user": result["user"],
    }
    chain = cli_json("lineage", str(v2 + 1), "--workspace", str(ws))
    assert chain["rollback"]["of_version"] == v1
    original = cli_json("lineage", str(v1), "--workspace", str(ws))
    assert chain["model"] == original["model"] and chain["pusher"] == original["pusher"]
    assert chain["evaluation"]["checks"] == original["evaluation"]["checks"]

    # Nothing was blessed before v1: a second default rollback is refused, nothing changes.
    code, out, err = run_cli("rollback", "--workspace", str(ws), "--reason", "again")
    assert code == 1 and "no blessed version before" in err
    assert version_dirs(ws) == [v1, v2, v2 + 1]


def test_rollback_refuses_unknown_never_blessed_and_current_versions(versions_ws, tmp_path):
    ws = shutil.copytree(versions_ws[0], tmp_path / "ws")
    v1, v2 = version_dirs(ws)
    code, _, err = run_cli("rollback", "--workspace", str(ws), "--to", "42", "--reason", "x")
    assert code == 2 and "unknown version 42" in err
    # A version directory that no blessed push recorded (copied in by hand).
    shutil.copytree(ws / "serving_model" / "taxi" / str(v1), ws / "serving_model" / "taxi" / "7")
    code, _, err = run_cli("rollback", "--workspace", str(ws), "--to", "7", "--reason", "x")
    assert code == 1 and "never-blessed" in err
    code, _, err = run_cli("rollback", "--workspace", str(ws), "--to", str(v2), "--reason", "x")
    assert code == 1 and "already the one served" in err
    code, _, err = run_cli("rollback", "--workspace", str(ws), "--to", str(v1), "--reason", "  ")
    assert code == 1 and "--reason" in err
    assert version_dirs(ws) == [7, v1, v2]
    from pipeline.metadata import queries as metadata

    assert (
        metadata.executions_of_type(metadata.open_store(ws / "metadata.sqlite"), metadata.ROLLBACK_EXECUTION_TYPE) == []
    )


def test_labels_write_a_tf_serving_model_config(versions_ws, tmp_path):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    ws = shutil.copytree(versions_ws[0], tmp_path / "ws")
    v1, v2 = version_dirs(ws)
    cli_json("label", "set", "stable", str(v1), "--workspace", str(ws))
    state = cli_json("label", "set", "canary", str(v2), "--workspace", str(ws))
    assert state["labels"] == {"canary": v2, "stable": v1} and state["loaded"] == [v1, v2]
    path = ws / "serving_model" / "models.config"
    parsed = text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig())
    (model,) = parsed.model_config_list.config
    assert model.name == "taxi" and model.model_platform == "tensorflow"
    assert model.base_path == str(ws / "serving_model" / "taxi")
    assert list(model.model_version_policy.specific.versions) == [v1, v2]
    assert dict(model.version_labels) == {"stable": v1, "canary": v2}
    from serving.config import read_model_config_file  # what `mlpipe serve --model_config_file` reads

    (entry,) = read_model_config_file(str(path))
    assert entry.policy.versions == (v1, v2) and dict(entry.labels) == {"stable": v1, "canary": v2}

    code, _, err = run_cli("label", "set", "stable", "99", "--workspace", str(ws))
    assert code == 2 and "version 99 is not in" in err
    # A rollback adds a new latest: the config is rewritten so the server loads it too.
    result = cli_json("rollback", "--workspace", str(ws), "--reason", "test")
    assert result["models_config"] == str(path)
    parsed = text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig())
    # ... and the label on the replaced version (canary on v2) follows to the re-published one (issue 16).
    assert list(parsed.model_config_list.config[0].model_version_policy.specific.versions) == [v1, v2 + 1]
    assert dict(parsed.model_config_list.config[0].version_labels) == {"stable": v1, "canary": v2 + 1}
    assert cli_json("models", "--workspace", str(ws))["serving"]["loaded"] == [v1, v2 + 1]
    cli_json("label", "remove", "canary", "--workspace", str(ws))
    assert cli_json("label", "list", "--workspace", str(ws))["labels"] == {"stable": v1}


def test_every_registry_command_has_help(capsys):
    from pipeline import cli

    # Each command's own usage line, with the flags that command takes (not the top-level help).
    expected = {
        ("runs",): ["--workspace", "--json"],
        ("models",): ["--workspace", "--json"],
        ("lineage",): ["--span", "VERSION", "--json"],
        ("rollback",): ["--to VERSION", "--reason TEXT", "--dry-run"],
        ("label",): ["ACTION", "set", "list", "remove"],
        ("label", "set"): ["NAME", "VERSION", "--workspace"],
    }
    for argv, words in expected.items():
        with pytest.raises(SystemExit) as exit_info:
            cli.main([*argv, "--help"])
        out = capsys.readouterr().out
        assert exit_info.value.code == 0
        assert out.startswith(f"usage: mlpipe {' '.join(argv)} "), out
        for word in words:
            assert word in out, (argv, word, out)


def test_the_run_summary_and_the_registry_check_thresholds_in_one_place(first_run):
    """`mlpipe run`'s summary checks the config's thresholds, `mlpipe models` the Evaluator's recorded ones:
    both through pipeline/metadata/thresholds.py check_rules, so on the same evaluation they agree."""
    from pipeline import config as config_lib
    from pipeline.metadata import snapshot as snapshot_lib
    from pipeline.metadata import thresholds

    workspace, code, out, err = first_run
    assert code == 0, out + err
    config = config_lib.load(None, {"workspace": str(workspace)})
    snap = snapshot_lib.open_snapshot(config)
    (evaluator,) = snap.executions_by_node("Evaluator")
    (evaluation_artifact,) = snap.output_artifacts(evaluator, "evaluation")
    recorded = thresholds.threshold_checks(snap.executions[evaluator], evaluation_artifact.uri)
    from_config = thresholds.config_threshold_checks(evaluation_artifact.uri, config.evaluation)
    mine = {(c["metric"], c["kind"]): (c["value"], c["bound"], c["baseline_value"], c["passed"]) for c in recorded}
    theirs = {(c.metric, c.kind): (c.value, c.bound, c.baseline, c.passed) for c in from_config}
    assert mine == theirs and len(mine) == 2
    value_check = mine[(config.evaluation.value_metric, "value")]
    assert value_check[0] is not None and value_check[3] is not None  # a real value check ran
