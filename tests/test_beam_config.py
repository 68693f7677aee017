"""Beam runner presets: each one's pipeline args as Beam parses them, and bad combinations."""

from __future__ import annotations

import pytest
from apache_beam.options.pipeline_options import (
    DirectOptions,
    FlinkRunnerOptions,
    GoogleCloudOptions,
    PipelineOptions,
    PortableOptions,
    SparkRunnerOptions,
    StandardOptions,
    WorkerOptions,
)

from pipeline import config as config_lib
from tests.conftest import run_cli


def beam(**values) -> config_lib.BeamConfig:
    return config_lib.from_mapping({"beam": values}).beam


def options(b: config_lib.BeamConfig) -> PipelineOptions:
    return PipelineOptions(b.pipeline_args())


def test_direct_default_is_in_memory_and_sets_no_runner():
    b = config_lib.load().beam
    assert b.runner == "direct"
    opts = options(b)
    assert opts.view_as(StandardOptions).runner is None  # Beam's default: the DirectRunner
    assert opts.view_as(DirectOptions).direct_running_mode == "in_memory"
    assert opts.view_as(DirectOptions).direct_num_workers == 1


def test_direct_multi_processing_on_every_core():
    opts = options(beam(direct_running_mode="multi_processing", direct_num_workers=0))
    assert opts.view_as(DirectOptions).direct_running_mode == "multi_processing"
    assert opts.view_as(DirectOptions).direct_num_workers == 0


def test_dataflow_preset():
    b = beam(
        runner="dataflow",
        project="p-1",
        region="europe-west4",
        temp_location="gs://b/tmp",
        sdk_container_image="gcr.io/p-1/mlpipe:1",
        extra_args=["--max_num_workers=8"],
    )
    opts = options(b)
    assert opts.view_as(StandardOptions).runner == "DataflowRunner"
    gcp = opts.view_as(GoogleCloudOptions)
    assert (gcp.project, gcp.region, gcp.temp_location) == ("p-1", "europe-west4", "gs://b/tmp")
    assert opts.view_as(WorkerOptions).sdk_container_image == "gcr.io/p-1/mlpipe:1"
    assert opts.view_as(WorkerOptions).max_num_workers == 8
    assert not any(a.startswith("--direct_") for a in b.pipeline_args())


def test_flink_and_spark_presets():
    opts = options(beam(runner="flink", flink_master="flink-jm:8081", environment_type="LOOPBACK"))
    assert opts.view_as(StandardOptions).runner == "FlinkRunner"
    assert opts.view_as(FlinkRunnerOptions).flink_master == "flink-jm:8081"
    assert opts.view_as(PortableOptions).environment_type == "LOOPBACK"

    opts = options(beam(runner="spark", spark_master_url="spark://spark-master:7077"))
    assert opts.view_as(StandardOptions).runner == "SparkRunner"
    assert opts.view_as(SparkRunnerOptions).spark_master_url == "spark://spark-master:7077"

    for runner in ("flink", "spark"):
        opts = options(beam(runner=runner, job_endpoint="jobserver:8099"))
        assert opts.view_as(StandardOptions).runner == "PortableRunner"
        assert opts.view_as(PortableOptions).job_endpoint == "jobserver:8099"


@pytest.mark.parametrize(
    "values, key, words",
    [
        ({"runner": "samza"}, "beam.runner", "must be one of direct, dataflow, flink, spark"),
        ({"runner": "dataflow", "region": "r", "temp_location": "gs://b/t"}, "beam.project", "required"),
        ({"runner": "dataflow", "project": "p", "region": "r"}, "beam.temp_location", "required"),
        ({"runner": "dataflow", "project": "p", "region": "r", "temp_location": "/tmp"}, "beam.temp_location", "gs://"),
        (
            {"runner": "dataflow", "project": "p", "region": "r", "temp_location": "gs://b/t", "direct_num_workers": 0},
            "beam.direct_num_workers",
            'only applies to beam.runner = "direct"',
        ),
        (
            {"runner": "flink", "flink_master": "h:8081", "direct_running_mode": "multi_processing"},
            "beam.direct_running_mode",
            'only applies to beam.runner = "direct"',
        ),
        ({"runner": "flink"}, "beam.flink_master", "exactly one of beam.flink_master or beam.job_endpoint"),
        ({"runner": "flink", "flink_master": "h:8081", "job_endpoint": "h:8099"}, "beam.flink_master", "exactly one"),
        ({"runner": "spark", "spark_master_url": "h:7077"}, "beam.spark_master_url", "spark://host:port"),
        ({"runner": "spark", "flink_master": "h:8081"}, "beam.flink_master", 'only applies to beam.runner = "flink"'),
        ({"project": "p"}, "beam.project", 'only applies to beam.runner = "dataflow"'),
        ({"job_endpoint": "h:8099"}, "beam.job_endpoint", '"flink" or "spark"'),
        ({"runner": "flink", "flink_master": "h:1", "environment_type": "VM"}, "beam.environment_type", "one of"),
        ({"extra_args": ["--runner=DirectRunner"]}, "beam.extra_args", "beam.runner"),
        ({"extra_args": ["runner"]}, "beam.extra_args", "--name=value"),
    ],
)
def test_invalid_combinations_fail_at_config_time_naming_the_key(values, key, words):
    with pytest.raises(config_lib.ConfigError) as e:
        beam(**values)
    assert e.value.key == key
    assert words in str(e.value)


def test_toml_preset_and_flag_override(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('[beam]\nrunner = "flink"\nflink_master = "jm:8081"\n')
    assert config_lib.load(toml).beam.pipeline_args()[:2] == ["--runner=FlinkRunner", "--flink_master=jm:8081"]
    # A flag that contradicts the file's runner is a usage error that names the key.
    code, _, err = run_cli(
        "run", "--config", str(toml), "--direct-num-workers", "0", "--workspace", str(tmp_path / "ws")
    )
    assert code == 2
    assert "beam.direct_num_workers: only applies to" in err
    assert not (tmp_path / "ws").exists()


def test_beam_runner_flag_is_validated(tmp_path):
    code, _, err = run_cli("run", "--beam-runner", "dataflow", "--workspace", str(tmp_path / "ws"))
    assert code == 2
    assert (
        err.strip() == 'mlpipe: config error: beam.project: required when beam.runner = "dataflow" '
        "(e.g. 'my-gcp-project')"
    )


def test_deploy_section_formats():
    d = config_lib.from_mapping(
        {"deploy": {"image": "gcr.io/p/m:1", "pipeline_root": "gs://b/r", "schedule": "TZ=Europe/Berlin 0 3 * * 1-5"}}
    ).deploy
    assert d.pipeline_root == "gs://b/r" and d.region == "us-central1"
    for values, key in (
        ({"image": "a b"}, "deploy.image"),
        ({"pipeline_root": "rel/dir"}, "deploy.pipeline_root"),
        ({"schedule": "daily"}, "deploy.schedule"),
        ({"bucket": "x"}, "deploy.bucket"),
    ):
        with pytest.raises(config_lib.ConfigError) as e:
            config_lib.from_mapping({"deploy": values})
        assert e.value.key == key
