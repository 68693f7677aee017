"""`mlpipe compile`: the same pipeline, compiled for Vertex AI Pipelines or Kubeflow Pipelines."""

from __future__ import annotations

import argparse
import json

from pipeline import cli
from pipeline.config import ConfigError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "compile",
        help="compile the pipeline for Vertex AI or Kubeflow Pipelines (KFP v2)",
        description="Compile the pipeline that `mlpipe run` runs locally, unchanged, with TFX's "
        "KubeflowV2DagRunner. --target vertex writes a PipelineJob JSON for aiplatform.PipelineJob; "
        "--target kubeflow writes a KFP v2 PipelineSpec YAML for kfp.Client. Image, pipeline root and "
        "schedule come from the [deploy] config section or the flags below; Beam arguments from [beam]. "
        "Nothing runs. Exit 0 when written, 2 for a bad or missing setting (the message names its key).",
        epilog="See docs/scale-out.md for building the image and submitting the compiled file.",
    )
    parser.add_argument("--target", required=True, choices=("vertex", "kubeflow"), help="where it will run")
    parser.add_argument(
        "-o", "--output", required=True, metavar="FILE", help="file to write (vertex: .json; kubeflow: .yaml)"
    )
    g = parser.add_argument_group("deployment (override the [deploy] config section)")
    g.add_argument("--image", metavar="IMAGE", help="container image with mlpipe installed (deploy.image)")
    g.add_argument(
        "--pipeline-root",
        metavar="URI",
        help="artifact root on the cluster, e.g. gs://bucket/mlpipe " "(deploy.pipeline_root)",
    )
    g.add_argument(
        "--deploy-data-root", metavar="URI", help="input CSV directory as the cluster sees it (deploy.data_root)"
    )
    g.add_argument("--serving-model-dir", metavar="URI", help="where Pusher writes models (deploy.serving_model_dir)")
    g.add_argument(
        "--schedule",
        metavar="CRON",
        help="5-field cron, e.g. '0 3 * * *': also write "
        "<FILE>.schedule.json and <FILE>.schedule.py (deploy.schedule)",
    )
    g.add_argument("--project", metavar="ID", help="GCP project of the Vertex AI schedule (deploy.project)")
    g.add_argument("--region", metavar="REGION", help="Vertex AI region (deploy.region)")
    cli.add_run_options(parser)
    parser.set_defaults(func=_compile)


def _compile(args: argparse.Namespace) -> int:
    overrides = cli.run_overrides(args)
    overrides.update(
        {
            "deploy.image": args.image,
            "deploy.pipeline_root": args.pipeline_root,
            "deploy.data_root": args.deploy_data_root,
            "deploy.serving_model_dir": args.serving_model_dir,
            "deploy.schedule": args.schedule,
            "deploy.project": args.project,
            "deploy.region": args.region,
        }
    )
    config = cli.load_config(args, overrides)
    from pipeline import logs
    from pipeline.ops import deploy

    log_path = logs.new_log(config.log_dir, "compile", f"mlpipe compile --target {args.target}")
    try:
        with logs.capture_output(log_path, verbose=args.verbose):
            compiled = deploy.compile_pipeline(config, args.target, args.output)
    except ConfigError as e:
        raise cli.CommandError(f"config error: {e}", cli.EXIT_USAGE) from None
    except Exception as e:  # the TFX compiler refused the pipeline
        raise cli.CommandError(f"compile failed: {e} (full log: {log_path})") from None
    if args.json:
        print(json.dumps(compiled.to_dict(), indent=2))
        return cli.EXIT_OK
    print(f"mlpipe: compiled '{compiled.pipeline_name}' for {compiled.target}: {compiled.output}")
    print(f"  image          {compiled.image}")
    print(f"  pipeline root  {compiled.pipeline_root}")
    print(f"  data root      {compiled.data_root}")
    print(f"  pushes to      {compiled.serving_model_dir}")
    print(f"  beam args      {' '.join(compiled.beam_args)}")
    print(f"  components     {' -> '.join(compiled.components)}")
    for path in compiled.schedule_files:
        print(f"  schedule       {compiled.schedule}: {path}")
    return cli.EXIT_OK
