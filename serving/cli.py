"""`mlpipe serve`: TF Serving's model server flags, defaulting to the workspace's pushed model."""

from __future__ import annotations

import argparse
import logging
import os

from serving.batching import BatchingParameters, parse_batching_parameters
from serving.config import (
    MODEL_CONFIG_FILE,
    ModelEntry,
    ModelRoot,
    ServingConfigError,
    is_serving_root,
    parse_labels,
    parse_version_policy,
    read_model_config_file,
)

AUTH_TOKEN_ENV = "MLPIPE_SERVING_AUTH_TOKEN"

DESCRIPTION = """\
Serve SavedModels with TensorFlow Serving's REST and gRPC APIs (a drop-in for tensorflow_model_server).

With no arguments it serves the workspace's pushed model (<workspace>/serving_model/taxi/<version>/)
with REST on 127.0.0.1:8501 and gRPC on 127.0.0.1:8500, and picks up new versions as they are pushed.
"""

EPILOG = """\
examples:
  mlpipe serve
  mlpipe serve --model_name taxi --model_base_path /models/taxi --rest_api_port 8601 --port 8600
  mlpipe serve --model_config_file models.config --enable_batching --batching_parameters_file batching.config
  curl http://127.0.0.1:8501/v1/models/taxi
  curl -d '{"signature_name": "serving_raw", "instances": [{...}]}' http://127.0.0.1:8501/v1/models/taxi:predict

Endpoints: GET /v1/models/NAME[/versions/V|/labels/L][/metadata], POST ...:predict|:classify|:regress,
GET /monitoring/prometheus/metrics; gRPC tensorflow.serving.PredictionService and ModelService.
"""


def _bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {text!r}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    flag = dict(nargs="?", const=True, type=_bool, metavar="BOOL")
    p.add_argument("--config", metavar="FILE", help="mlpipe TOML config file (read for workspace and model_name)")
    p.add_argument(
        "--workspace",
        metavar="DIR",
        help="workspace whose pushed model is served (default ./workspace, or $MLPIPE_WORKSPACE)",
    )
    g = p.add_argument_group("models (TF Serving flags)")
    g.add_argument("--model_name", help="name to serve the model under (default: the workspace's model_name, taxi)")
    g.add_argument(
        "--model_base_path",
        help="directory holding integer version subdirectories (default: <workspace>/serving_model/<model_name>); "
        "without --model_name it may be a serving root of model directories, all served and new ones picked up, "
        "each with an optional <model>/model.config (ModelConfig text: model_version_policy, version_labels)",
    )
    g.add_argument(
        "--model_config_file",
        help="ModelServerConfig in protobuf text format, for several models, version policies and labels; "
        "overrides --model_name/--model_base_path",
    )
    g.add_argument(
        "--model_config_file_poll_wait_seconds",
        type=float,
        default=0.0,
        help="re-read --model_config_file this often and apply changes (0: read once; default 0)",
    )
    g.add_argument(
        "--file_system_poll_wait_seconds",
        type=float,
        default=1.0,
        help="how often to look for new or removed versions (0: only at start; default 1)",
    )
    g.add_argument(
        "--version_policy",
        default="latest",
        help="versions to serve for --model_name: latest, latest:N, all, or specific:V1,V2 (default latest = latest:1)",
    )
    g.add_argument(
        "--version_labels",
        default="",
        help="labels for --model_name's versions, e.g. stable=1,canary=2 (usable as /labels/stable and version_label)",
    )
    g.add_argument(
        "--saved_model_tags", default="serve", help="comma-separated MetaGraphDef tags to load (default serve)"
    )
    g.add_argument(
        "--max_num_load_retries",
        type=int,
        default=5,
        help="load retries of a failing version before waiting for its files to change (default 5)",
    )
    g.add_argument(
        "--enable_model_warmup",
        default=True,
        **flag,
        help="replay assets.extra/tf_serving_warmup_requests before a version serves (default true)",
    )
    g.add_argument(
        "--num_request_iterations_for_warmup",
        type=int,
        default=1,
        help="times each warm-up request is replayed (default 1)",
    )

    g = p.add_argument_group("network")
    g.add_argument("--port", type=_port, default=8500, help="gRPC port (default 8500)")
    g.add_argument(
        "--grpc_host",
        default="127.0.0.1",
        help="gRPC bind address (default 127.0.0.1; 0.0.0.0 to accept other machines)",
    )
    g.add_argument("--rest_api_port", type=_port, default=8501, help="REST port (default 8501; 0 turns REST off)")
    g.add_argument(
        "--rest_api_host",
        default="127.0.0.1",
        help="REST bind address (default 127.0.0.1; 0.0.0.0 to accept other machines)",
    )
    g.add_argument(
        "--rest_api_num_threads",
        type=int,
        default=max(16, 4 * (os.cpu_count() or 1)),
        help="threads running REST requests",
    )
    g.add_argument(
        "--rest_api_timeout_in_ms", type=int, default=30000, help="REST request timeout; 504 past it (default 30000)"
    )
    g.add_argument(
        "--grpc_max_threads", type=int, default=max(16, 4 * (os.cpu_count() or 1)), help="threads running gRPC requests"
    )
    g.add_argument(
        "--num_processes",
        type=int,
        default=1,
        help="server processes sharing the REST and gRPC ports (SO_REUSEPORT), each with its own copy of the "
        "models; the first process supervises them (default 1)",
    )
    g.add_argument(
        "--max_request_bytes",
        type=int,
        default=32 << 20,
        help="largest request body or gRPC message accepted (default 33554432)",
    )
    g.add_argument(
        "--auth_token",
        help=f"require 'Authorization: Bearer TOKEN' on REST and gRPC calls (or set ${AUTH_TOKEN_ENV})",
    )

    g = p.add_argument_group("batching (TF Serving flags)")
    g.add_argument(
        "--enable_batching", default=False, **flag, help="merge concurrent requests into one model call (default false)"
    )
    g.add_argument(
        "--batching_parameters_file",
        help="BatchingParameters text proto: max_batch_size, batch_timeout_micros, num_batch_threads, "
        "max_enqueued_batches, allowed_batch_sizes (e.g. 'max_batch_size { value: 32 }')",
    )

    g = p.add_argument_group("request logging")
    g.add_argument(
        "--request_log_sampling_rate",
        type=_rate,
        default=0.0,
        help="fraction of requests written as PredictionLog TFRecords (0 turns logging off; default 0)",
    )
    g.add_argument("--request_log_dir", help="where logs go: DIR/<model_name>/ (default <workspace>/request_logs)")
    g.add_argument(
        "--request_log_max_file_bytes", type=int, default=64 << 20, help="start a new log file past this size"
    )
    g.add_argument(
        "--request_log_max_file_seconds", type=float, default=3600.0, help="start a new log file after this long"
    )
    p.add_argument(
        "--log_level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="server log level"
    )


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Registers `serve` on an argparse subparsers object (pipeline/cli/__init__.py calls this)."""
    p = subparsers.add_parser(
        "serve",
        help="serve the pushed model over TF Serving's REST and gRPC APIs",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def build_options(args: argparse.Namespace):
    """Flags (and the workspace config) -> ServerOptions; raises ServingConfigError with a fix."""
    from pipeline import config as pipeline_config
    from serving.server import ServerOptions
    from serving.service import LogOptions

    cfg = pipeline_config.load(getattr(args, "config", None), {"workspace": getattr(args, "workspace", None)})
    roots: list[ModelRoot] = []
    if args.model_config_file:
        if args.model_name or args.model_base_path:
            logging.getLogger("serving").warning("--model_config_file is set: ignoring --model_name/--model_base_path")
        models = read_model_config_file(args.model_config_file)
    else:
        name = args.model_name or cfg.model_name
        if "/" in name or ":" in name:
            raise ServingConfigError(f"--model_name {name!r} must not contain '/' or ':'")
        base = args.model_base_path or (str(cfg.serving_dir_of(name)))
        models = [
            ModelEntry(
                name=name,
                base_path=os.path.abspath(base),
                policy=parse_version_policy(args.version_policy),
                labels=tuple(sorted(parse_labels(args.version_labels).items())),
            )
        ]
        if not args.model_name and args.model_base_path and is_serving_root(args.model_base_path):
            # A serving root (model directories, no version directories): serve every model under it.
            if args.version_labels:
                raise ServingConfigError(
                    f"--version_labels applies to one model, but {args.model_base_path} holds several: put "
                    f"version_labels in <model>/{MODEL_CONFIG_FILE} instead"
                )
            models, roots = [], [ModelRoot(os.path.abspath(base), parse_version_policy(args.version_policy))]
    batching = None
    if args.enable_batching:
        if args.batching_parameters_file:
            try:
                with open(args.batching_parameters_file) as f:
                    batching = parse_batching_parameters(f.read())
            except OSError as e:
                raise ServingConfigError(f"--batching_parameters_file: cannot read it: {e.strerror}") from None
            except Exception as e:
                raise ServingConfigError(
                    f"--batching_parameters_file {args.batching_parameters_file}: {e} "
                    "(expected text like 'max_batch_size { value: 32 } batch_timeout_micros { value: 1000 }')"
                ) from None
        else:
            batching = BatchingParameters()
    elif args.batching_parameters_file:
        raise ServingConfigError("--batching_parameters_file needs --enable_batching")
    for flag in (
        "rest_api_num_threads",
        "grpc_max_threads",
        "max_request_bytes",
        "num_request_iterations_for_warmup",
        "num_processes",
    ):
        if getattr(args, flag) <= 0:
            raise ServingConfigError(f"--{flag} must be positive, got {getattr(args, flag)}")
    if args.max_num_load_retries < 0:
        raise ServingConfigError(f"--max_num_load_retries must be >= 0, got {args.max_num_load_retries}")
    token = args.auth_token or os.environ.get(AUTH_TOKEN_ENV) or None
    log_root = args.request_log_dir or str(cfg.request_log_root)
    tags = tuple(t.strip() for t in args.saved_model_tags.split(",") if t.strip())
    return ServerOptions(
        models=models,
        grpc_host=args.grpc_host,
        port=args.port,
        rest_api_host=args.rest_api_host,
        rest_api_port=args.rest_api_port or None,
        rest_api_num_threads=args.rest_api_num_threads,
        rest_api_timeout_in_ms=args.rest_api_timeout_in_ms,
        grpc_max_threads=args.grpc_max_threads,
        file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
        model_config_file=args.model_config_file,
        model_config_file_poll_wait_seconds=args.model_config_file_poll_wait_seconds,
        saved_model_tags=tags or ("serve",),
        enable_model_warmup=args.enable_model_warmup,
        num_request_iterations_for_warmup=args.num_request_iterations_for_warmup,
        max_num_load_retries=args.max_num_load_retries,
        batching=batching,
        max_request_bytes=args.max_request_bytes,
        auth_token=token,
        shared_metadata=cfg if cfg.metadata.backend != "sqlite" else None,
        log_options=LogOptions(
            root=log_root,
            sampling_rate=args.request_log_sampling_rate,
            max_file_bytes=args.request_log_max_file_bytes,
            max_file_seconds=args.request_log_max_file_seconds,
        ),
        model_roots=roots,
    )


def run(args: argparse.Namespace) -> int:
    """The `serve` command: returns 0 after a clean shutdown, 2 for bad flags, 1 if a port is taken."""
    from pipeline.config import ConfigError
    from pipeline.logs import terminal  # the terminal, also while `mlpipe` sends third-party noise to a log

    logging.basicConfig(
        level=getattr(args, "log_level", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=terminal(),
    )

    try:
        options = build_options(args)
    except (ServingConfigError, ConfigError) as e:
        print(f"mlpipe serve: error: {e}", file=terminal())
        return 2
    from serving.server import ModelServer

    for model in options.models:
        print(f"serving model {model.name!r} from {model.base_path} ({model.policy.describe()})", file=terminal())
    for root in options.model_roots:
        print(
            f"serving every model directory under {root.path} ({root.policy.describe()} unless its "
            f"{MODEL_CONFIG_FILE} says otherwise)",
            file=terminal(),
        )
    try:
        if args.num_processes > 1:
            from serving.processes import Supervisor

            out = terminal()
            return Supervisor(options, args.num_processes, args.log_level, out.fileno()).serve()
        return ModelServer(options).serve()
    except OSError as e:
        print(f"mlpipe serve: error: {e}", file=terminal())
        return 1


def main(argv: list[str] | None = None) -> int:
    """`python -m serving`: the serve command on its own, with --workspace and --config."""
    parser = argparse.ArgumentParser(
        prog="python -m serving",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    from pipeline.logs import command_log, quiet_stderr  # the config only: no TFX

    with quiet_stderr(
        command_log(getattr(args, "config", None), getattr(args, "workspace", None), "serve")
    ):  # TF's start-up noise to <workspace>/logs/serve.log
        return run(args)
