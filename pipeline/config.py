"""The one typed configuration object of mlpipe.

Precedence, lowest to highest: embedded defaults, a TOML file (``--config``), the
``MLPIPE_WORKSPACE`` environment variable (workspace only), command-line flags.
Every value is checked here; a bad one raises :class:`ConfigError` naming its key.
This module imports no TFX so that every command can use it cheaply.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from models import features as default_model  # mlpipe's taxi model: the defaults of [model] (no TFX import)

DEFAULT_DATA_ROOT = Path(__file__).resolve().parent.parent / "data" / "taxi"
WORKSPACE_ENV = "MLPIPE_WORKSPACE"
METADATA_PASSWORD_ENV = "MLPIPE_METADATA_PASSWORD"  # default [metadata] password_env
METADATA_BACKENDS = ("sqlite", "mysql")

# TFMA metrics model.metrics may name: {name TFMA reports: TFMA class name}.
METRIC_CLASSES = {
    "example_count": "ExampleCount",
    "auc": "AUC",
    "binary_accuracy": "BinaryAccuracy",
    "precision": "Precision",
    "recall": "Recall",
    "calibration": "Calibration",
    "sparse_categorical_accuracy": "SparseCategoricalAccuracy",  # multi-class, integer labels
    "mean_squared_error": "MeanSquaredError",  # regression
    "mean_absolute_error": "MeanAbsoluteError",
}
# Metrics the value and change thresholds may name (higher is better).
THRESHOLD_METRICS = ("auc", "binary_accuracy", "precision", "recall", "sparse_categorical_accuracy")
COLUMN_TYPE_NAMES = ("int", "float", "string")
MODEL_TASKS = ("classification", "regression")  # serving_default marked classify | regress
MODEL_OUTPUTS = ("probabilities", "logits")
BEAM_RUNNING_MODES = ("in_memory", "multi_threading", "multi_processing")
BEAM_RUNNERS = ("direct", "dataflow", "flink", "spark")
BEAM_ENVIRONMENTS = ("DOCKER", "LOOPBACK", "PROCESS", "EXTERNAL")


def retrain_lock_path(workspace: str | os.PathLike) -> Path:
    """The workspace lock `mlpipe retrain` holds (pipeline/ops/lock.py), for a workspace given as a path."""
    return Path(workspace) / ".retrain.lock"


class ConfigError(ValueError):
    """A configuration value is invalid; ``key`` is its dotted name."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


@dataclass(frozen=True)
class DataConfig:
    root: str = str(DEFAULT_DATA_ROOT)  # directory of CSV files; default is the embedded taxi sample
    train_buckets: int = 2  # hash-split ratio train:eval
    eval_buckets: int = 1
    schema: str = ""  # curated schema.pbtxt to pin (ImportSchemaGen); empty = infer with SchemaGen
    window_spans: int = 3  # span layout only: Transform and Trainer use the latest N spans
    # Span layout only: Transform keeps tf.Transform's analyzer cache and analyses only the spans it has
    # not analysed before (pipeline/dag/analyzer_cache.py); false = analyse the whole window every run.
    analyzer_cache: bool = True
    # Rows with a value that does not parse as its column's type: up to this fraction of the checked
    # rows is skipped by ExampleGen (with a warning); more stops the run before anything runs. 0 = none.
    max_bad_row_fraction: float = 0.0
    # How ExampleGen types each CSV column: {column = "int" | "float" | "string"}. Empty: the pinned
    # schema's types (data.schema), else the default model's (models/features.py COLUMN_TYPES).
    columns: dict[str, str] = field(default_factory=dict, hash=False)
    infer_feature_shape: bool = False  # SchemaGen: dense features where every example has one value
    # The column of event times (epoch seconds) `mlpipe ingest` lays spans out by; not monitored.
    timestamp_column: str = default_model.TIMESTAMP_COLUMN


@dataclass(frozen=True)
class ModelConfig:
    """The user's model code and what the pipeline needs to know about it (README "Your own model").

    The defaults are mlpipe's taxi model (models/).
    """

    # A TFX module file defining preprocessing_fn and run_fn (relative to the config file); when set,
    # it replaces the two import paths below. Loaded by file path, under a name no package can shadow.
    module_file: str = ""
    preprocessing_fn: str = "models.preprocessing.preprocessing_fn"
    run_fn: str = "models.model.run_fn"
    label_key: str = default_model.LABEL  # the label among the transformed features (Trainer, TFMA)
    raw_label_keys: tuple[str, ...] = (default_model.RAW_LABEL,)  # raw columns absent at serving time
    task: str = "classification"  # or "regression": serving_default is marked classify or regress
    output: str = "probabilities"  # or "logits": the serving signatures apply sigmoid / softmax
    prediction_key: str = ""  # serving_default output TFMA reads; "" = the contract's (scores | outputs)
    slice_features: tuple[str, ...] = default_model.SLICE_FEATURES  # raw columns TFMA slices metrics by
    metrics: tuple[str, ...] = ("example_count", "auc", "binary_accuracy", "precision", "recall", "calibration")
    serving_features: tuple[str, ...] = ()  # serving_raw's inputs; empty = every raw column but the label's
    serving_contract: bool = True  # false: push run_fn's export as it is (no serving_raw unless it made one)

    @property
    def evaluated_output(self) -> str:
        """The serving_default output TFMA reads."""
        if self.prediction_key:
            return self.prediction_key
        return "scores" if self.task == "classification" else "outputs"


@dataclass(frozen=True)
class TrainingConfig:
    train_steps: int = 1000
    eval_steps: int = 150
    batch_size: int = 64
    learning_rate: float = 0.001
    hidden_units: tuple[int, ...] = (64, 32)
    seed: int = 42
    warm_start: bool = False  # start from the latest blessed model's weights when its architecture matches


@dataclass(frozen=True)
class EvaluationConfig:
    # Value threshold: the candidate's metric must be at least this.
    value_metric: str = "binary_accuracy"
    value_lower_bound: float = 0.6
    # Change threshold: the candidate may be at most `change_tolerance` below the latest blessed model.
    change_metric: str = "auc"
    change_tolerance: float = 0.01
    # false: the Evaluator computes the metrics but applies no threshold; the verdict is UNVALIDATED
    # and nothing is pushed unless `mlpipe bless --force` (docs/release.md).
    thresholds: bool = True
    # The Evaluator scores candidate and baseline on at most this many eval rows: a deterministic
    # sample (seeded hash of each serialized example, the same rows every run; pipeline/dag/eval_sample.py).
    # 0 = every row. The run summary gives "evaluated on N of M eval rows" and each metric's 95% interval.
    max_examples: int = 50000
    sample_seed: int = 0


@dataclass(frozen=True)
class InfraValidationConfig:
    """Before the push the candidate is loaded by mlpipe's server code and queried (docs/release.md)."""

    enabled: bool = True
    examples: int = 10  # eval-split examples sent, one request each, to every signature
    max_latency_ms: float = 2000.0  # p95 latency of one request, per signature
    max_error_rate: float = 0.0  # fraction of requests that may fail


@dataclass(frozen=True)
class ReplayGateConfig:
    """The candidate and the serving champion re-score the last logged requests (docs/release.md)."""

    enabled: bool = True
    last_requests: int = 200
    max_mean_abs_delta: float = 0.1  # mean |candidate score - champion score|
    max_flipped_fraction: float = 0.1  # share of examples whose decision at 0.5 flips
    max_p95_latency_ratio: float = 3.0  # candidate p95 / champion p95


@dataclass(frozen=True)
class BeamConfig:
    runner: str = "direct"  # direct | dataflow | flink | spark (docs/scale-out.md)
    # runner = "direct" only
    direct_running_mode: str = "in_memory"
    direct_num_workers: int = 1  # 0 = one per core
    # runner = "dataflow" only (all three required)
    project: str = ""
    region: str = ""
    temp_location: str = ""  # gs:// path for Dataflow's temporary and staging files
    # runner = "flink": flink_master (host:port of the JobManager) or job_endpoint
    flink_master: str = ""
    # runner = "spark": spark_master_url (spark://host:port) or job_endpoint
    spark_master_url: str = ""
    job_endpoint: str = ""  # a running Beam job server, host:port (PortableRunner)
    # non-direct runners: worker image with this repo installed; how workers run Python code
    sdk_container_image: str = ""
    environment_type: str = ""  # DOCKER | LOOPBACK | PROCESS | EXTERNAL; empty = runner default
    extra_args: tuple[str, ...] = ()

    def pipeline_args(self) -> list[str]:
        """Beam pipeline arguments for this runner preset (validated by `validate`)."""
        if self.runner == "direct":
            args = [
                f"--direct_running_mode={self.direct_running_mode}",
                f"--direct_num_workers={self.direct_num_workers}",
            ]
        elif self.runner == "dataflow":
            args = [
                "--runner=DataflowRunner",
                f"--project={self.project}",
                f"--region={self.region}",
                f"--temp_location={self.temp_location}",
            ]
        elif self.job_endpoint:  # flink or spark behind a job server
            args = ["--runner=PortableRunner", f"--job_endpoint={self.job_endpoint}"]
        elif self.runner == "flink":
            args = ["--runner=FlinkRunner", f"--flink_master={self.flink_master}"]
        else:
            args = ["--runner=SparkRunner", f"--spark_master_url={self.spark_master_url}"]
        if self.sdk_container_image:
            args.append(f"--sdk_container_image={self.sdk_container_image}")
        if self.environment_type:
            args.append(f"--environment_type={self.environment_type}")
        return [*args, *self.extra_args]


@dataclass(frozen=True)
class DeployConfig:
    """Where `mlpipe compile` points the pipeline on Vertex AI or Kubeflow Pipelines."""

    image: str = ""  # container image with this repo installed (see Dockerfile); required to compile
    pipeline_root: str = ""  # artifact root the cluster can write, e.g. gs://bucket/mlpipe; required
    data_root: str = ""  # input CSV directory as the cluster sees it; empty = data.root
    serving_model_dir: str = ""  # where Pusher writes; empty = <pipeline_root>/serving_model/<model_name>
    schedule: str = ""  # cron, 5 fields (optionally "TZ=America/Chicago " first); empty = none
    project: str = ""  # GCP project and region of the Vertex AI schedule
    region: str = "us-central1"


@dataclass(frozen=True)
class MonitoringConfig:
    """`mlpipe monitor` (docs/monitoring.md): skew/drift thresholds on logged serving traffic, alerts."""

    # TFDV distances: L-infinity for categorical (string) features, Jensen-Shannon divergence for numeric.
    # JSD over TFDV's 10-bucket histograms is noisy on a few hundred requests (up to ~0.15 seen on
    # traffic drawn from the training data), hence the higher numeric defaults.
    skew_categorical: float = 0.15  # training vs serving
    skew_numeric: float = 0.25
    drift_categorical: float = 0.15  # previous window vs this window
    drift_numeric: float = 0.25
    # Per-feature override of both skew and drift thresholds, e.g. {trip_miles = 0.3}.
    feature_thresholds: dict[str, float] = field(default_factory=dict, hash=False)  # keeps Config hashable
    window: str = "24h"  # default --since when none is given
    min_examples: int = 100  # fewer logged examples than this in a window: its skew/drift is not checked
    # Span layout: drift of the newest span from the previous one before training (DriftCheck):
    # "off" (no check), "warn" (recorded in MLMD), "block" (the run fails before Transform).
    pipeline_drift: str = "off"
    alert_command: str = ""  # shell command run with the alert JSON on stdin
    webhook_url: str = ""  # http(s) URL the alert JSON is POSTed to
    # `mlpipe monitor`'s decisions (docs/monitoring.md): a (feature, slice) alerts when its two-sample
    # test's p-value is below alpha / (number of tests in the check) AND its distance exceeds min_distance
    # (feature_thresholds overrides min_distance per feature).
    alpha: float = 0.01  # family-wise false-alert rate of one check (skew of a version, or drift)
    min_distance: float = 0.03  # smallest shift worth a page, whatever the sample size
    min_slice_examples: int = 30  # a slice is tested when both sides have at least this many rows
    # Features whose change is expected (calendar, season): reported, never alerting. Empty: the
    # model's own list (models/features.py SEASONAL_FEATURES).
    seasonal_features: tuple[str, ...] = ()
    # Features compared as categories (chi-squared, shares). Empty: the model's own list for the taxi
    # model (models/features.py CATEGORICAL_FEATURES), else the string columns (docs/monitoring.md).
    categorical_features: tuple[str, ...] = ()
    baseline_rows: int = 20000  # at most this many training rows (seeded sample) form the skew baseline
    retrain_after_windows: int = 2  # --retrain: the same alert in this many consecutive monitor runs
    max_retrains_per_day: int = 1  # --retrain starts at most this many retrains in 24 h
    # Live quality from late labels (`mlpipe monitor --labels`) and automatic rollback (docs/monitoring.md).
    request_key_feature: str = ""  # a request feature whose value is the example's key; empty: the request key
    label_key_column: str = "request_key"  # the labels CSV's key column
    label_column: str = ""  # the labels CSV's raw label column; empty: the model's first raw label (tips)
    quality_window: str = "1h"  # length of the live quality series' windows (aligned to the epoch)
    labels_lookback: str = "7d"  # predictions older than this are outside retention for --labels
    rollback_after_windows: int = 0  # roll back when the served version fails this many windows in a row; 0: off
    max_rollbacks_per_day: int = 1  # automatic rollbacks in 24 h at most
    # Error rate of a served version (failed / answered+failed requests per quality_window, from the
    # server's outcomes-<pid>.jsonl): a rollback check; windows with fewer requests are not judged.
    max_error_rate: float = 0.05
    min_error_requests: int = 20


@dataclass(frozen=True)
class MetadataConfig:
    """Where ML Metadata lives (docs/metadata.md): the workspace's SQLite file, or a team's MySQL/MariaDB.

    The password is never a config key: it is read at connection time from the environment variable
    named by `password_env`, or from the file named by `password_file` (first line).
    """

    backend: str = "sqlite"  # sqlite | mysql
    # backend = "mysql" only
    host: str = ""
    port: int = 3306
    database: str = ""  # must exist (mlpipe never creates it); MLMD creates its tables in it
    user: str = ""
    password_env: str = METADATA_PASSWORD_ENV  # name of the environment variable holding the password
    password_file: str = ""  # or: a file whose first line is the password (wins over password_env)


RELEASE_MODES = ("auto", "canary", "manual")


@dataclass(frozen=True)
class ReleaseConfig:
    """How a blessed push is released (docs/release.md, Approvals)."""

    # auto: served as soon as it is pushed (the highest version); canary: pushed under the `canary`
    # label taking canary_weight % of unlabelled traffic until `mlpipe approve`; manual: held out of the
    # serving directory as pending until `mlpipe approve` (or `mlpipe reject`).
    mode: str = "auto"
    canary_weight: int = 10  # percent of unlabelled requests the canary gets (traffic.json split)


@dataclass(frozen=True)
class ModelCardConfig:
    """Free text of each pushed version's model card (docs/release.md, Release report)."""

    intended_use: str = ""
    limitations: str = ""
    ethical_considerations: str = ""
    owners: str = ""


@dataclass(frozen=True)
class Config:
    workspace: str = "workspace"
    pipeline_name: str = "mlpipe-taxi"
    model_name: str = "taxi"
    enable_cache: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    beam: BeamConfig = field(default_factory=BeamConfig)
    deploy: DeployConfig = field(default_factory=DeployConfig)
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)
    metadata: MetadataConfig = field(default_factory=MetadataConfig)
    release: ReleaseConfig = field(default_factory=ReleaseConfig)
    model_card: ModelCardConfig = field(default_factory=ModelCardConfig)
    infra_validation: InfraValidationConfig = field(default_factory=InfraValidationConfig)
    replay_gate: ReplayGateConfig = field(default_factory=ReplayGateConfig)

    # Paths derived from the workspace: one place for each.
    @property
    def workspace_path(self) -> Path:
        return Path(self.workspace).resolve()

    @property
    def metadata_path(self) -> Path:
        return self.workspace_path / "metadata.sqlite"

    @property
    def pipeline_root(self) -> Path:
        return self.workspace_path / "pipeline_root"

    @property
    def serving_model_dir(self) -> Path:
        return self.serving_dir_of(self.model_name)

    def serving_dir_of(self, model_name: str) -> Path:
        """serving_model/<name>: where a model's integer version directories are published."""
        return self.workspace_path / "serving_model" / model_name

    @property
    def log_dir(self) -> Path:
        return self.workspace_path / "logs"

    def command_log_path(self, command: str) -> Path:
        """Where a command's third-party noise goes: <workspace>/logs/<command>.log."""
        return self.log_dir / f"{command}.log"

    @property
    def models_config_path(self) -> Path:
        """TF Serving's ModelServerConfig (labels, version policy), beside serving_model/<name>."""
        return self.workspace_path / "serving_model" / "models.config"

    @property
    def traffic_log_root(self) -> Path:
        """Where `mlpipe serve` logs split traffic (traffic.json experiments), beside models.config."""
        return self.workspace_path / "serving_model" / "traffic_logs"

    @property
    def request_log_root(self) -> Path:
        """`mlpipe serve --request_log_dir`'s default: request logs go to <root>/<model_name>/."""
        return self.workspace_path / "request_logs"

    @property
    def request_log_dir(self) -> Path:
        return self.request_log_root / self.model_name

    @property
    def retrain_lock_path(self) -> Path:
        return retrain_lock_path(self.workspace_path)

    @property
    def user_code_check_path(self) -> Path:
        """The key of the last [model] code check that passed here (pipeline/dag/user_code.py check)."""
        return self.workspace_path / "cache" / "user_code_check.json"

    @property
    def unchanged_run_path(self) -> Path:
        """The inputs key and metadata watermark of the last fully cached run (pipeline/ops/unchanged.py)."""
        return self.workspace_path / "cache" / "unchanged_run.json"

    @property
    def monitoring_history_path(self) -> Path:
        """Every `mlpipe monitor` run's scores (gates --retrain)."""
        return self.workspace_path / "monitoring" / "history.jsonl"

    @property
    def monitoring_quality_path(self) -> Path:
        """The live quality series of `mlpipe monitor --labels`: one line per (window, version)."""
        return self.workspace_path / "monitoring" / "quality.jsonl"

    @property
    def auto_rollbacks_path(self) -> Path:
        """The automatic rollbacks taken (what the daily maximum and the once-per-version rule count)."""
        return self.workspace_path / "monitoring" / "rollbacks.jsonl"

    def baseline_cache_path(self, version: int | str) -> Path:
        """The cached training-data baseline of a served version (`mlpipe monitor`)."""
        return self.workspace_path / "monitoring" / "baselines" / f"{version}.json"

    @property
    def traffic_config_path(self) -> Path:
        """serving/traffic.py's sidecar (weighted split, shadow label) beside models.config."""
        return self.models_config_path.parent / "traffic.json"

    @property
    def reports_dir(self) -> Path:
        """Each run's release report and model card: <reports_dir>/<run>/ (docs/release.md)."""
        return self.workspace_path / "reports"

    @property
    def release_hold_dir(self) -> Path:
        """Versions held out of serving (release.mode = manual: pending; rejected): <dir>/<version>/."""
        return self.workspace_path / "release_hold" / self.model_name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, overrides: Mapping[str, Any]) -> "Config":
        """Returns a validated copy with dotted-key overrides, e.g. {"training.train_steps": 10}."""
        raw = self.to_dict()
        for dotted, value in overrides.items():
            if value is None:
                continue
            target = raw
            *parents, leaf = dotted.split(".")
            for part in parents:
                target = target[part]
            target[leaf] = value
        return from_mapping(raw)


_SECTIONS = {
    "data": DataConfig,
    "training": TrainingConfig,
    "evaluation": EvaluationConfig,
    "model": ModelConfig,
    "beam": BeamConfig,
    "deploy": DeployConfig,
    "monitoring": MonitoringConfig,
    "metadata": MetadataConfig,
    "release": ReleaseConfig,
    "model_card": ModelCardConfig,
    "infra_validation": InfraValidationConfig,
    "replay_gate": ReplayGateConfig,
}
_TOP_LEVEL = {"workspace", "pipeline_name", "model_name", "enable_cache"}


def _check_type(key: str, value: Any, expected: Any) -> Any:
    """Coerces a TOML/flag value to the field's declared type or raises ConfigError."""
    if expected == "bool":
        if isinstance(value, bool):
            return value
        raise ConfigError(key, f"must be true or false, got {value!r}")
    if expected == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"must be an integer, got {value!r}")
        return value
    if expected == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"must be a number, got {value!r}")
        return float(value)
    if expected == "str":
        if not isinstance(value, str):
            raise ConfigError(key, f"must be a string, got {value!r}")
        return value
    if expected in ("tuple[int, ...]", "tuple[str, ...]"):
        item = int if "int" in expected else str
        if not isinstance(value, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, item) for v in value):
            raise ConfigError(key, f"must be a list of {item.__name__}s, got {value!r}")
        return tuple(value)
    if expected == "dict[str, float]":
        if not isinstance(value, Mapping) or any(
            isinstance(v, bool) or not isinstance(v, (int, float)) for v in value.values()
        ):
            raise ConfigError(key, f"must be a table of feature = number, got {value!r}")
        return {str(k): float(v) for k, v in value.items()}
    if expected == "dict[str, str]":
        if not isinstance(value, Mapping) or any(v not in COLUMN_TYPE_NAMES for v in value.values()):
            raise ConfigError(
                key, f"must be a table of column = {' | '.join(map(repr, COLUMN_TYPE_NAMES))}, got {value!r}"
            )
        return {str(k): v for k, v in value.items()}
    raise AssertionError(f"unhandled config type {expected} for {key}")


def _build(cls: type, section: str, values: Mapping[str, Any]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in values.items():
        key = f"{section}.{name}" if section else name
        if name not in fields:
            raise ConfigError(key, f"unknown key (known: {', '.join(sorted(fields))})")
        kwargs[name] = _check_type(key, value, fields[name].type)
    return cls(**kwargs)


def from_mapping(raw: Mapping[str, Any]) -> Config:
    """Builds and validates a Config from nested plain values (a parsed TOML document)."""
    top: dict[str, Any] = {}
    sections: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _SECTIONS:
            if not isinstance(value, Mapping):
                raise ConfigError(key, "must be a table")
            if key == "metadata" and "password" in value:
                raise ConfigError(
                    "metadata.password",
                    "never put the password in the config file; name an "
                    "environment variable (metadata.password_env) or a file (metadata.password_file)",
                )
            sections[key] = _build(_SECTIONS[key], key, value)
        elif key in _TOP_LEVEL:
            top[key] = value
        else:
            known = sorted(_TOP_LEVEL | set(_SECTIONS))
            raise ConfigError(key, f"unknown key (known: {', '.join(known)})")
    top_fields = {f.name: f for f in dataclasses.fields(Config) if f.name in _TOP_LEVEL}
    for key, value in top.items():
        top[key] = _check_type(key, value, top_fields[key].type)
    config = Config(**top, **sections)
    validate(config)
    return config


def validate(config: Config) -> None:
    def positive(key: str, value: float) -> None:
        if value <= 0:
            raise ConfigError(key, f"must be positive, got {value!r}")

    if not config.workspace:
        raise ConfigError("workspace", "must not be empty")
    for key in ("pipeline_name", "model_name"):
        value = getattr(config, key)
        if not value or not all(c.isalnum() or c in "-_" for c in value):
            raise ConfigError(key, f"must be letters, digits, '-' or '_', got {value!r}")
    positive("data.train_buckets", config.data.train_buckets)
    positive("data.eval_buckets", config.data.eval_buckets)
    positive("data.window_spans", config.data.window_spans)
    if not 0 <= config.data.max_bad_row_fraction < 1:
        raise ConfigError("data.max_bad_row_fraction", f"must be in [0, 1), got {config.data.max_bad_row_fraction}")
    if config.data.schema and not Path(config.data.schema).is_file():
        raise ConfigError("data.schema", f"no schema file at {config.data.schema}")
    t = config.training
    positive("training.train_steps", t.train_steps)
    positive("training.eval_steps", t.eval_steps)
    positive("training.batch_size", t.batch_size)
    positive("training.learning_rate", t.learning_rate)
    if not t.hidden_units or any(u <= 0 for u in t.hidden_units):
        raise ConfigError("training.hidden_units", f"must be positive layer sizes, got {list(t.hidden_units)}")
    validate_model(config.model)
    e = config.evaluation
    for key in ("value_metric", "change_metric"):
        if getattr(e, key) not in THRESHOLD_METRICS:
            raise ConfigError(
                f"evaluation.{key}", f"must be one of {', '.join(THRESHOLD_METRICS)}, got {getattr(e, key)!r}"
            )
        if getattr(e, key) not in config.model.metrics:
            raise ConfigError(
                f"evaluation.{key}",
                f"{getattr(e, key)!r} is not computed: add it to model.metrics ({', '.join(config.model.metrics)})",
            )
    if e.change_tolerance < 0:
        raise ConfigError("evaluation.change_tolerance", f"must be >= 0, got {e.change_tolerance}")
    if e.max_examples < 0:
        raise ConfigError("evaluation.max_examples", f"must be >= 0 (0 = every eval row), got {e.max_examples}")
    validate_beam(config.beam)
    validate_deploy(config.deploy)
    validate_monitoring(config.monitoring)
    validate_metadata(config.metadata)
    validate_release(config.release)
    validate_gates(config.infra_validation, config.replay_gate)


def validate_release(r: ReleaseConfig) -> None:
    if r.mode not in RELEASE_MODES:
        raise ConfigError("release.mode", f"must be one of {', '.join(RELEASE_MODES)}, got {r.mode!r}")
    if not 0 < r.canary_weight < 100:
        raise ConfigError("release.canary_weight", f"must be a percentage between 1 and 99, got {r.canary_weight}")


def validate_gates(iv: InfraValidationConfig, rg: ReplayGateConfig) -> None:
    if iv.examples <= 0:
        raise ConfigError("infra_validation.examples", f"must be positive, got {iv.examples}")
    if iv.max_latency_ms < 0:
        raise ConfigError("infra_validation.max_latency_ms", f"must be >= 0, got {iv.max_latency_ms}")
    if not 0 <= iv.max_error_rate <= 1:
        raise ConfigError("infra_validation.max_error_rate", f"must be in [0, 1], got {iv.max_error_rate}")
    if rg.last_requests <= 0:
        raise ConfigError("replay_gate.last_requests", f"must be positive, got {rg.last_requests}")
    for key in ("max_mean_abs_delta", "max_flipped_fraction", "max_p95_latency_ratio"):
        if getattr(rg, key) < 0:
            raise ConfigError(f"replay_gate.{key}", f"must be >= 0, got {getattr(rg, key)}")


def validate_metadata(m: MetadataConfig) -> None:
    if m.backend not in METADATA_BACKENDS:
        raise ConfigError("metadata.backend", f"must be one of {', '.join(METADATA_BACKENDS)}, got {m.backend!r}")
    if m.backend == "sqlite":
        defaults = MetadataConfig()
        for key in ("host", "port", "database", "user", "password_env", "password_file"):
            if getattr(m, key) != getattr(defaults, key):
                raise ConfigError(
                    f"metadata.{key}",
                    'only applies to metadata.backend = "mysql"; remove it or ' 'set backend = "mysql"',
                )
        return
    for key, example in (("host", "mysql.example.com"), ("database", "mlmd"), ("user", "mlpipe")):
        if not getattr(m, key):
            raise ConfigError(f"metadata.{key}", f'required when metadata.backend = "mysql" (e.g. {example!r})')
    if not 0 < m.port < 65536:
        raise ConfigError("metadata.port", f"must be a TCP port (1-65535), got {m.port}")
    if not m.password_file and not m.password_env:
        raise ConfigError(
            "metadata.password_env",
            "name the environment variable holding the password " "(or set metadata.password_file)",
        )


def validate_model(m: ModelConfig) -> None:
    if m.module_file and not m.module_file.endswith(".py"):
        raise ConfigError("model.module_file", f"must be a .py file, got {m.module_file!r}")
    if m.module_file and not Path(m.module_file).is_file():
        raise ConfigError("model.module_file", f"no module file at {m.module_file}")
    if not m.module_file:
        for key in ("preprocessing_fn", "run_fn"):
            parts = getattr(m, key).split(".")
            if len(parts) < 2 or not all(p.isidentifier() for p in parts):
                raise ConfigError(
                    f"model.{key}", f"must be an import path like 'mypackage.module.{key}', got {getattr(m, key)!r}"
                )
    if not m.label_key:
        raise ConfigError("model.label_key", "must name the label among the transformed features")
    if m.task not in MODEL_TASKS:
        raise ConfigError("model.task", f"must be one of {', '.join(MODEL_TASKS)}, got {m.task!r}")
    if m.output not in MODEL_OUTPUTS:
        raise ConfigError("model.output", f"must be one of {', '.join(MODEL_OUTPUTS)}, got {m.output!r}")
    contract_key = "scores" if m.task == "classification" else "outputs"
    if m.serving_contract and m.prediction_key not in ("", contract_key):
        raise ConfigError(
            "model.prediction_key",
            f"the serving contract's serving_default outputs {contract_key!r}; leave it empty, "
            "or set model.serving_contract = false to evaluate run_fn's own signature",
        )
    unknown = [name for name in m.metrics if name not in METRIC_CLASSES]
    if unknown:
        raise ConfigError(
            "model.metrics", f"unknown metric(s) {', '.join(unknown)} (known: {', '.join(METRIC_CLASSES)})"
        )


def validate_monitoring(m: MonitoringConfig) -> None:
    for key in ("skew_categorical", "skew_numeric", "drift_categorical", "drift_numeric"):
        if not 0 < getattr(m, key) <= 1:
            raise ConfigError(f"monitoring.{key}", f"must be in (0, 1], got {getattr(m, key)!r}")
    for name, value in m.feature_thresholds.items():
        if not 0 < value <= 1:
            raise ConfigError(f"monitoring.feature_thresholds.{name}", f"must be in (0, 1], got {value!r}")
    if m.pipeline_drift not in ("off", "warn", "block"):
        raise ConfigError("monitoring.pipeline_drift", f"must be off, warn or block, got {m.pipeline_drift!r}")
    if m.min_examples < 1:
        raise ConfigError("monitoring.min_examples", f"must be at least 1, got {m.min_examples}")
    for key in ("alpha", "min_distance"):
        if not 0 < getattr(m, key) < 1:
            raise ConfigError(f"monitoring.{key}", f"must be in (0, 1), got {getattr(m, key)!r}")
    for key in ("min_slice_examples", "baseline_rows", "retrain_after_windows"):
        if getattr(m, key) < 1:
            raise ConfigError(f"monitoring.{key}", f"must be at least 1, got {getattr(m, key)}")
    for key in ("rollback_after_windows", "max_rollbacks_per_day"):
        if getattr(m, key) < 0:
            raise ConfigError(f"monitoring.{key}", f"must be >= 0, got {getattr(m, key)}")
    if not 0 <= m.max_error_rate < 1:
        raise ConfigError("monitoring.max_error_rate", f"must be in [0, 1), got {m.max_error_rate!r}")
    if m.min_error_requests < 1:
        raise ConfigError("monitoring.min_error_requests", f"must be at least 1, got {m.min_error_requests}")
    if not m.label_key_column:
        raise ConfigError("monitoring.label_key_column", "must name the labels CSV's key column")
    if m.max_retrains_per_day < 0:
        raise ConfigError("monitoring.max_retrains_per_day", f"must be >= 0, got {m.max_retrains_per_day}")
    if m.webhook_url and not m.webhook_url.startswith(("http://", "https://")):
        raise ConfigError("monitoring.webhook_url", f"must be an http:// or https:// URL, got {m.webhook_url!r}")


def validate_beam(b: BeamConfig) -> None:
    """Checks the runner preset: each runner's required keys, and no key of another runner."""
    if b.runner not in BEAM_RUNNERS:
        raise ConfigError("beam.runner", f"must be one of {', '.join(BEAM_RUNNERS)}, got {b.runner!r}")
    if b.direct_running_mode not in BEAM_RUNNING_MODES:
        raise ConfigError(
            "beam.direct_running_mode",
            f"must be one of {', '.join(BEAM_RUNNING_MODES)}, got {b.direct_running_mode!r}",
        )
    if b.direct_num_workers < 0:
        raise ConfigError("beam.direct_num_workers", f"must be >= 0, got {b.direct_num_workers}")
    defaults = BeamConfig()
    owners = {  # key: the runners it applies to
        "direct_running_mode": ("direct",),
        "direct_num_workers": ("direct",),
        "project": ("dataflow",),
        "region": ("dataflow",),
        "temp_location": ("dataflow",),
        "flink_master": ("flink",),
        "spark_master_url": ("spark",),
        "job_endpoint": ("flink", "spark"),
        "sdk_container_image": ("dataflow", "flink", "spark"),
        "environment_type": ("dataflow", "flink", "spark"),
    }
    for key, runners in owners.items():
        if b.runner not in runners and getattr(b, key) != getattr(defaults, key):
            applies = " or ".join(f'"{r}"' for r in runners)
            raise ConfigError(
                f"beam.{key}",
                f"only applies to beam.runner = {applies}, but the runner is {b.runner!r}; remove it or change the runner",
            )
    if b.runner == "dataflow":
        for key, example in (
            ("project", "my-gcp-project"),
            ("region", "us-central1"),
            ("temp_location", "gs://my-bucket/tmp"),
        ):
            if not getattr(b, key):
                raise ConfigError(f"beam.{key}", f'required when beam.runner = "dataflow" (e.g. {example!r})')
        if not b.temp_location.startswith("gs://"):
            raise ConfigError("beam.temp_location", f"must be a gs:// path for Dataflow, got {b.temp_location!r}")
    if b.runner in ("flink", "spark"):
        own = "flink_master" if b.runner == "flink" else "spark_master_url"
        if bool(getattr(b, own)) == bool(b.job_endpoint):
            raise ConfigError(
                f"beam.{own}",
                f'set exactly one of beam.{own} or beam.job_endpoint when beam.runner = "{b.runner}"',
            )
        if b.spark_master_url and not b.spark_master_url.startswith("spark://"):
            raise ConfigError("beam.spark_master_url", f"must look like spark://host:port, got {b.spark_master_url!r}")
    if b.environment_type and b.environment_type not in BEAM_ENVIRONMENTS:
        raise ConfigError(
            "beam.environment_type", f"must be one of {', '.join(BEAM_ENVIRONMENTS)}, got {b.environment_type!r}"
        )
    for arg in b.extra_args:
        if not arg.startswith("--"):
            raise ConfigError("beam.extra_args", f"each must look like --name=value, got {arg!r}")
        if arg.split("=", 1)[0] == "--runner":
            raise ConfigError("beam.extra_args", f"choose the runner with beam.runner, not {arg!r}")


def validate_deploy(d: DeployConfig) -> None:
    """Format checks only; what `mlpipe compile` requires is checked there (pipeline.ops.deploy)."""
    if any(c.isspace() for c in d.image):
        raise ConfigError("deploy.image", f"must be an image reference without spaces, got {d.image!r}")
    for key in ("pipeline_root", "data_root", "serving_model_dir"):
        value = getattr(d, key)
        if value and "://" not in value and not value.startswith("/"):
            raise ConfigError(f"deploy.{key}", f"must be a URI (gs://...) or an absolute path, got {value!r}")
    if d.schedule:
        fields = d.schedule.split()
        if fields[0].startswith(("TZ=", "CRON_TZ=")):
            fields = fields[1:]
        if len(fields) != 5:
            raise ConfigError(
                "deploy.schedule", f"must be a 5-field cron expression like '0 3 * * *', got {d.schedule!r}"
            )


# Path settings that, written relative in a config file, are relative to that file's directory.
FILE_RELATIVE_PATHS = (("workspace",), ("data", "root"), ("data", "schema"), ("model", "module_file"))


def _resolve_relative_paths(raw: dict, base: Path) -> None:
    for *parents, leaf in FILE_RELATIVE_PATHS:
        table = raw
        for part in parents:
            table = table.get(part) if isinstance(table, dict) else None
        value = table.get(leaf) if isinstance(table, dict) else None
        if isinstance(value, str) and value and "://" not in value and not Path(value).expanduser().is_absolute():
            table[leaf] = str(base / Path(value).expanduser())


def load(path: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Defaults, then the TOML file at `path`, then $MLPIPE_WORKSPACE, then `overrides`."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError("--config", f"no such file: {path}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError("--config", f"{path} is not valid TOML: {e}") from None
        _resolve_relative_paths(raw, Path(path).resolve().parent)
    config = from_mapping(raw)
    env_workspace = os.environ.get(WORKSPACE_ENV)
    merged = {"workspace": env_workspace} if env_workspace else {}
    merged.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return config.replace(merged) if merged else config
