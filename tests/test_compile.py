"""`mlpipe compile`: the local pipeline compiled for Vertex AI and Kubeflow Pipelines (nothing runs)."""

from __future__ import annotations

import json

import pytest
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from tests.conftest import run_cli

IMAGE = "us-docker.pkg.dev/my-project/mlpipe/mlpipe:test-1"
ROOT = "gs://my-bucket/mlpipe/root"
DATA = "gs://my-bucket/mlpipe/taxi"
RESOLVER_SUFFIXES = ("-model-blessing-resolver", "-model-resolver")

VERTEX_TOML = f"""
pipeline_name = "mlpipe-test"
[training]
train_steps = 123
[beam]
runner = "dataflow"
project = "my-project"
region = "europe-west4"
temp_location = "gs://my-bucket/tmp"
sdk_container_image = "{IMAGE}"
[deploy]
image = "{IMAGE}"
pipeline_root = "{ROOT}/"
data_root = "{DATA}"
schedule = "TZ=America/Chicago 0 3 * * *"
project = "my-project"
region = "europe-west4"
"""


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Compiles once per target: (vertex result, vertex file, kubeflow result, kubeflow file, workspace)."""
    tmp = tmp_path_factory.mktemp("compile")
    (tmp / "vertex.toml").write_text(VERTEX_TOML)
    ws = str(tmp / "ws")
    code, out, err = run_cli(
        "compile",
        "--target",
        "vertex",
        "-o",
        str(tmp / "out" / "vertex.json"),
        "--config",
        str(tmp / "vertex.toml"),
        "--workspace",
        ws,
        "--json",
    )
    assert code == 0, err
    vertex = json.loads(out)
    code, out, err = run_cli(
        "compile",
        "--target",
        "kubeflow",
        "-o",
        str(tmp / "kfp.yaml"),
        "--workspace",
        ws,
        "--json",
        "--image",
        IMAGE,
        "--pipeline-root",
        ROOT,
        "--deploy-data-root",
        DATA,
        "--train-steps",
        "77",
        "--direct-running-mode",
        "multi_processing",
        "--direct-num-workers",
        "0",
        "--schedule",
        "30 2 * * 1",
    )
    assert code == 0, err
    kfp_result = json.loads(out)
    return vertex, tmp / "out" / "vertex.json", kfp_result, tmp / "kfp.yaml", ws


def _spec_from_vertex(path) -> pipeline_spec_pb2.PipelineSpec:
    job = json_format.ParseDict(json.loads(path.read_text()), pipeline_spec_pb2.PipelineJob())
    return json_format.ParseDict(json_format.MessageToDict(job.pipeline_spec), pipeline_spec_pb2.PipelineSpec())


def _node_id(task: str) -> str:
    for suffix in RESOLVER_SUFFIXES:
        if task.endswith(suffix):
            return task[: -len(suffix)]
    return task


def _local_order(**overrides) -> list[str]:
    from pipeline import config as config_lib
    from pipeline.dag.pipeline import create_pipeline

    return [n.id for n in create_pipeline(config_lib.load(None, overrides)).components]


def _param(spec, task: str, name: str) -> str:
    value = spec.root.dag.tasks[task].inputs.parameters[name].runtime_value
    # TFX writes the older `constantValue` field; newer compilers write `constant`.
    return value.constant_value.string_value or value.constant.string_value


def test_vertex_job_loads_with_kfp_proto_and_carries_config(compiled):
    vertex, path, _, _, _ = compiled
    job = json_format.ParseDict(json.loads(path.read_text()), pipeline_spec_pb2.PipelineJob())
    assert job.runtime_config.gcs_output_directory == ROOT
    spec = _spec_from_vertex(path)
    assert spec.pipeline_info.name == "mlpipe-test"
    executors = spec.deployment_spec.fields["executors"].struct_value.fields
    images = {
        e.struct_value.fields["container"].struct_value.fields["image"].string_value
        for e in executors.values()
        if "container" in e.struct_value.fields
    }
    assert images == {IMAGE}
    assert json.loads(_param(spec, "Trainer", "train_args")) == {"num_steps": 123}
    assert _param(spec, "CsvExampleGen", "input_base") == DATA
    push = json.loads(_param(spec, "Pusher", "push_destination"))
    assert push["filesystem"]["base_directory"] == f"{ROOT}/serving_model/taxi"
    transform_args = list(
        executors["Transform_executor"].struct_value.fields["container"].struct_value.fields["args"].list_value.values
    )
    beam_args = [v.string_value for v in transform_args]
    expected = [
        "--runner=DataflowRunner",
        "--project=my-project",
        "--region=europe-west4",
        "--temp_location=gs://my-bucket/tmp",
        f"--sdk_container_image={IMAGE}",
    ]
    # The summary reports exactly the Beam args from [beam], and the Transform container gets
    # them, in that order, after the executor's own arguments.
    assert vertex["beam_args"] == expected
    assert beam_args[-len(expected) :] == expected


def test_vertex_sdk_accepts_the_job_offline(compiled):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import aiplatform

    _, path, _, _, _ = compiled
    job = aiplatform.PipelineJob(
        display_name="mlpipe-test",
        template_path=str(path),
        pipeline_root=ROOT,
        project="my-project",
        location="europe-west4",
        credentials=AnonymousCredentials(),
    )
    assert job._gca_resource.runtime_config.gcs_output_directory == ROOT


def test_every_local_component_in_dependency_order(compiled):
    vertex, path, kfp_result, _, _ = compiled
    # The infra and replay gates read the local workspace: local runs only (docs/release.md).
    local = [n for n in _local_order(pipeline_name="mlpipe-test") if n not in ("InfraValidator", "ReplayGate")]
    assert vertex["components"] == local == kfp_result["components"]
    spec = _spec_from_vertex(path)
    tasks = spec.root.dag.tasks
    assert {_node_id(t) for t in tasks} == set(local)
    for name, task in tasks.items():
        for dep in task.dependent_tasks:
            assert local.index(_node_id(dep)) < local.index(_node_id(name)), f"{name} depends on {dep}"
    # Every local edge is kept (the resolver's baseline feeds the Evaluator).
    assert "latest_blessed_model_resolver-model-resolver" in tasks["Evaluator"].dependent_tasks
    assert {"Transform", "SchemaGen"} <= set(tasks["Trainer"].dependent_tasks)
    assert "AnomaliesGate" in tasks["Transform"].dependent_tasks


def test_kubeflow_spec_loads_with_kfp_client_loader(compiled):
    from kfp.client.client import _extract_pipeline_yaml  # what kfp.Client uses to read a package

    _, _, kfp_result, path, _ = compiled
    spec = _extract_pipeline_yaml(str(path)).pipeline_spec
    assert spec.default_pipeline_root == ROOT
    assert json.loads(_param(spec, "Trainer", "train_args")) == {"num_steps": 77}
    executors = spec.deployment_spec.fields["executors"].struct_value.fields
    args = [
        v.string_value
        for v in executors["StatisticsGen_executor"]
        .struct_value.fields["container"]
        .struct_value.fields["args"]
        .list_value.values
    ]
    assert "--direct_running_mode=multi_processing" in args and "--direct_num_workers=0" in args
    assert kfp_result["image"] == IMAGE and kfp_result["target"] == "kubeflow"


def test_schedules_match_the_sdks(compiled, tmp_path):
    import inspect

    import kfp
    from google.cloud import aiplatform

    vertex, _, kfp_result, _, _ = compiled
    spec_path, script_path = vertex["schedule_files"]
    spec = json.loads(open(spec_path).read())
    assert spec["cron"] == "TZ=America/Chicago 0 3 * * *" and spec["template_path"] == "vertex.json"
    assert spec["project"] == "my-project" and spec["location"] == "europe-west4"
    compile(open(script_path).read(), script_path, "exec")
    params = inspect.signature(aiplatform.PipelineJob.create_schedule).parameters
    assert {"cron", "display_name", "max_concurrent_run_count"} <= set(params)

    kspec = json.loads(open(kfp_result["schedule_files"][0]).read())
    assert kspec["cron_expression"] == "0 30 2 * * 1"  # KFP's cron leads with seconds
    compile(open(kfp_result["schedule_files"][1]).read(), "kfp.schedule.py", "exec")
    kparams = inspect.signature(kfp.Client.create_recurring_run).parameters
    assert {"experiment_id", "job_name", "cron_expression", "pipeline_package_path"} <= set(kparams)


@pytest.mark.parametrize(
    "argv, key",
    [
        (["--pipeline-root", ROOT, "--deploy-data-root", DATA], "deploy.image"),
        (["--image", IMAGE, "--deploy-data-root", DATA], "deploy.pipeline_root"),
        (["--image", IMAGE, "--pipeline-root", ROOT], "deploy.data_root"),
        (["--image", IMAGE, "--pipeline-root", "relative/root", "--deploy-data-root", DATA], "deploy.pipeline_root"),
        (
            ["--image", IMAGE, "--pipeline-root", ROOT, "--deploy-data-root", DATA, "--schedule", "0 3 * *"],
            "deploy.schedule",
        ),
        (
            [
                "--image",
                IMAGE,
                "--pipeline-root",
                ROOT,
                "--deploy-data-root",
                DATA,
                "--beam-runner",
                "flink",
                "--direct-running-mode",
                "multi_processing",
            ],
            "beam.direct_running_mode",
        ),
    ],
)
def test_missing_or_bad_setting_is_a_usage_error_naming_the_key(compiled, tmp_path, argv, key):
    out_file = tmp_path / "p.json"
    code, out, err = run_cli("compile", "--target", "vertex", "-o", str(out_file), "--workspace", compiled[4], *argv)
    assert code == 2
    assert err.startswith(f"mlpipe: config error: {key}:"), err
    assert len(err.strip().splitlines()) == 1
    assert not out_file.exists()


def test_kubeflow_needs_a_yaml_package(compiled, tmp_path):
    code, _, err = run_cli(
        "compile",
        "--target",
        "kubeflow",
        "-o",
        str(tmp_path / "p.json"),
        "--workspace",
        compiled[4],
        "--image",
        IMAGE,
        "--pipeline-root",
        ROOT,
        "--deploy-data-root",
        DATA,
    )
    assert code == 2 and "-o: kfp.Client reads .yaml" in err and "p.yaml" in err


def test_span_layout_is_refused_naming_data_root(compiled, tmp_path):
    from tests.conftest import write_taxi_slice

    write_taxi_slice(tmp_path / "spans" / "span-1", rows=10)
    code, _, err = run_cli(
        "compile",
        "--target",
        "vertex",
        "-o",
        str(tmp_path / "p.json"),
        "--workspace",
        compiled[4],
        "--image",
        IMAGE,
        "--pipeline-root",
        ROOT,
        "--data-root",
        str(tmp_path / "spans"),
        "--deploy-data-root",
        DATA,
    )
    assert code == 2 and err.startswith("mlpipe: config error: data.root:") and "span layout" in err
    assert not (tmp_path / "p.json").exists()
