"""Compiles the local pipeline definition for Vertex AI Pipelines or Kubeflow Pipelines (KFP v2).

The pipeline is `pipeline.dag.pipeline.create_pipeline(config, target)`: this module only says what
differs on a cluster (the Target: artifact root, input and push locations, baseline resolver; and the
container image) and compiles it with TFX's KubeflowV2DagRunner into a PipelineJob JSON that both
Vertex AI and KFP v2 accept.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from pipeline.config import Config, ConfigError

TARGETS = ("vertex", "kubeflow")
# Vertex AI pipeline names: lowercase letters, digits and '-', starting with a letter.
PIPELINE_NAME_RE = re.compile(r"^[a-z][-a-z0-9]{0,127}$")


@dataclasses.dataclass
class Compiled:
    target: str
    output: str
    pipeline_name: str
    image: str
    pipeline_root: str
    data_root: str
    serving_model_dir: str
    beam_args: list[str]
    components: list[str]  # node ids in dependency order, as in the local pipeline
    schedule: str | None = None  # the cron expression, if one was configured
    schedule_files: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _locations(config: Config) -> tuple[str, str, str]:
    """(pipeline_root, data_root, serving_model_dir) on the cluster; ConfigError if one is missing."""
    d = config.deploy
    if not d.image:
        raise ConfigError(
            "deploy.image",
            "required to compile: the container image with mlpipe installed "
            "(set [deploy] image or pass --image; see docs/scale-out.md)",
        )
    if not d.pipeline_root:
        raise ConfigError(
            "deploy.pipeline_root",
            "required to compile: an artifact root the cluster can write, "
            "e.g. gs://my-bucket/mlpipe (set [deploy] pipeline_root or pass --pipeline-root)",
        )
    if not PIPELINE_NAME_RE.match(config.pipeline_name):
        raise ConfigError(
            "pipeline_name",
            "Vertex AI and KFP need lowercase letters, digits and '-', "
            f"starting with a letter; got {config.pipeline_name!r}",
        )
    root = d.pipeline_root.rstrip("/")
    data_root = d.data_root or config.data.root
    if "://" not in data_root and not d.data_root:
        raise ConfigError(
            "deploy.data_root",
            f"required to compile: data.root {config.data.root} is a local "
            "directory the cluster cannot read; upload the CSVs and set [deploy] data_root "
            "(e.g. gs://my-bucket/taxi) or pass --deploy-data-root",
        )
    serving = d.serving_model_dir or f"{root}/serving_model/{config.model_name}"
    return root, data_root, serving


def portable_pipeline(config: Config):
    """The pipeline for a cluster: create_pipeline with the cluster's Target (its locations, and TFX's
    LatestBlessedModelStrategy as the Evaluator's baseline: KFP v2 compiles only built-in resolver
    strategies; see docs/scale-out.md for what that changes)."""
    from pipeline.dag.pipeline import WINDOW_RESOLVER, Target, create_pipeline

    root, data_root, serving = _locations(config)
    target = Target(
        pipeline_root=root, data_root=data_root, serving_model_dir=serving, exclude_candidate_from_baseline=False
    )
    # The infra and replay gates read the local workspace (its serving dir, its request logs): local runs only.
    pipeline = create_pipeline(
        config.replace({"infra_validation.enabled": False, "replay_gate.enabled": False}), target
    )
    if any(node.id == WINDOW_RESOLVER for node in pipeline.components):
        raise ConfigError(
            "data.root",
            f"{config.data.root} has the span layout, whose rolling window "
            "(a custom resolver) KFP v2 cannot compile; compile with a flat data directory",
        )
    return pipeline


def compile_pipeline(config: Config, target: str, output: str | Path) -> Compiled:
    """Writes the PipelineJob JSON to `output` (and schedule files next to it when configured)."""
    if target not in TARGETS:
        raise ConfigError("--target", f"must be one of {', '.join(TARGETS)}, got {target!r}")
    output = Path(output)
    if target == "kubeflow":
        if config.deploy.schedule.startswith(("TZ=", "CRON_TZ=")):
            raise ConfigError("deploy.schedule", "Kubeflow Pipelines schedules run in UTC; remove the TZ= prefix")
        if output.suffix not in (".yaml", ".yml"):
            raise ConfigError(
                "-o",
                f"kfp.Client reads .yaml/.yml pipeline packages; name the output "
                f"e.g. {output.with_suffix('.yaml').name}",
            )
    root, data_root, serving = _locations(config)  # checked before the slow TFX import
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner as kfp_v2

    tfx_pipeline = portable_pipeline(config)
    runner = kfp_v2.KubeflowV2DagRunner(
        config=kfp_v2.KubeflowV2DagRunnerConfig(display_name=config.pipeline_name, default_image=config.deploy.image),
    )
    job = runner.run(tfx_pipeline, write_out=False)
    if target == "vertex":  # a PipelineJob: aiplatform.PipelineJob(template_path=...) reads it
        text = json.dumps(job, indent=2, sort_keys=True)
    else:  # KFP v2 takes the bare PipelineSpec; its pipeline root travels inside it
        import yaml

        spec = dict(job["pipelineSpec"], defaultPipelineRoot=root)
        text = yaml.safe_dump(spec, sort_keys=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(output)
    compiled = Compiled(
        target=target,
        output=str(output),
        pipeline_name=config.pipeline_name,
        image=config.deploy.image,
        pipeline_root=root,
        data_root=data_root,
        serving_model_dir=serving,
        beam_args=config.beam.pipeline_args(),
        components=[n.id for n in tfx_pipeline.components],
    )
    if config.deploy.schedule:
        compiled.schedule = config.deploy.schedule
        compiled.schedule_files = [str(p) for p in write_schedule(config, target, output)]
    return compiled


def schedule_paths(output: Path) -> tuple[Path, Path]:
    stem = output.stem if output.suffix in (".json", ".yaml", ".yml") else output.name
    return output.with_name(stem + ".schedule.json"), output.with_name(stem + ".schedule.py")


def write_schedule(config: Config, target: str, output: Path) -> list[Path]:
    """Writes <stem>.schedule.json (the values) and <stem>.schedule.py (a script that creates it)."""
    d = config.deploy
    spec_path, script_path = schedule_paths(output)
    template = output.name  # the scripts run next to the compiled file
    if target == "vertex":
        spec = {
            "target": target,
            "cron": d.schedule,
            "display_name": f"{config.pipeline_name}-schedule",
            "template_path": template,
            "pipeline_root": d.pipeline_root.rstrip("/"),
            "project": d.project or None,
            "location": d.region,
            "max_concurrent_run_count": 1,
        }
        script = f'''"""Creates the Vertex AI schedule of {config.pipeline_name} (written by `mlpipe compile`)."""
import os

from google.cloud import aiplatform

here = os.path.dirname(os.path.abspath(__file__))
aiplatform.init(project={d.project or None!r}, location={d.region!r})
job = aiplatform.PipelineJob(
    display_name={config.pipeline_name!r},
    template_path=os.path.join(here, {template!r}),
    pipeline_root={d.pipeline_root.rstrip("/")!r},
    enable_caching={config.enable_cache!r},
)
schedule = job.create_schedule(
    display_name={spec["display_name"]!r},
    cron={d.schedule!r},
    max_concurrent_run_count=1,
)
print("created", schedule.resource_name)
'''
    else:
        spec = {
            "target": target,
            "cron_expression": f"0 {d.schedule}",  # KFP's cron has a leading seconds field
            "job_name": f"{config.pipeline_name}-schedule",
            "pipeline_package_path": template,
            "max_concurrency": 1,
        }
        script = f'''"""Creates the Kubeflow Pipelines recurring run of {config.pipeline_name} (written by `mlpipe compile`).

Set KFP_HOST to the KFP API endpoint (e.g. http://localhost:8080 after a port-forward).
"""
import os

import kfp

here = os.path.dirname(os.path.abspath(__file__))
client = kfp.Client(host=os.environ.get("KFP_HOST"))
experiment = client.create_experiment({config.pipeline_name!r})
run = client.create_recurring_run(
    experiment_id=experiment.experiment_id,
    job_name={spec["job_name"]!r},
    cron_expression={spec["cron_expression"]!r},
    pipeline_package_path=os.path.join(here, {template!r}),
    max_concurrency=1,
    enable_caching={config.enable_cache!r},
)
print("created", run.recurring_run_id)
'''
    spec_path.write_text(json.dumps(spec, indent=2) + "\n")
    script_path.write_text(script)
    return [spec_path, script_path]
