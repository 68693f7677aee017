"""The TFX pipeline definition: one function, create_pipeline(config, target), to a tfx Pipeline.

`target` holds what differs where the pipeline runs (like TFX's taxi template, whose local and Kubeflow
runners call one create_pipeline): the artifact root, where ExampleGen reads and the Pusher writes, and
the Evaluator's baseline resolver. Left out, it is this machine's workspace (local_target).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import tensorflow_model_analysis as tfma

from data import spans
from pipeline.config import METRIC_CLASSES, Config
from pipeline.dag import analyzer_cache, replay_gate, user_code
from pipeline.dag import tfx_api as tfx
from pipeline.dag.components import AnomaliesGate, BaselineModelStrategy
from pipeline.dag.components_drift import drift_gate
from pipeline.dag.dataset import column_types
from pipeline.dag.eval_sample import EvalSample
from pipeline.dag.infra_validator import InfraValidator
from pipeline.dag.inputs import CSV_PATTERN
from pipeline.dag.typed_csv import TypedCsvExampleGen
from pipeline.publish.approvals import release_settings
from pipeline.publish.pusher import AtomicPusher

# Node ids in the order the local runner executes them.
COMPONENT_ORDER = (
    "CsvExampleGen",
    "EvalSample",  # needs only ExampleGen's output, so the local runner runs it next
    "StatisticsGen",
    "SchemaGen",
    "ExampleValidator",
    "AnomaliesGate",
    "Transform",
    "Trainer",
    "latest_blessed_model_resolver",
    "Evaluator",
    "InfraValidator",
    "ReplayGate",
    "Pusher",
)


# Node ids added in the span layout (before Transform) and with training.warm_start (before Trainer).
WINDOW_RESOLVER = "span_window_resolver"
WARM_START_RESOLVER = "warm_start_model_resolver"
BASELINE_RESOLVER = "latest_blessed_model_resolver"
EVAL_SAMPLE = "EvalSample"


@dataclasses.dataclass(frozen=True)
class Target:
    """What differs between where the pipeline runs: this machine, or a cluster (pipeline/ops/deploy.py)."""

    pipeline_root: str
    data_root: str  # ExampleGen's input_base
    serving_model_dir: str  # the Pusher's filesystem destination
    # The Evaluator's baseline: mlpipe's BaselineModelStrategy (never the candidate itself) locally; KFP v2
    # compiles only TFX's built-in strategies, so a cluster uses LatestBlessedModelStrategy (docs/scale-out.md).
    exclude_candidate_from_baseline: bool = True


def local_target(config: Config) -> Target:
    return Target(
        pipeline_root=str(config.pipeline_root),
        data_root=str(Path(config.data.root).resolve()),
        serving_model_dir=str(config.serving_model_dir),
    )


class SpanWindowStrategy(tfx.dsl.experimental.SpanRangeStrategy):
    """TFX's rolling span range (the latest `num_spans` spans), one artifact per span.

    If a span was ingested more than once (e.g. a run with the cache off), only its newest
    artifact (highest version, then newest id) is kept, so no span is counted twice.
    """

    def __init__(self, num_spans: int):
        super().__init__(range_config=tfx.proto.RangeConfig(rolling_range=tfx.proto.RollingRange(num_spans=num_spans)))

    def resolve_artifacts(self, store, input_dict):
        resolved = super().resolve_artifacts(store, input_dict)
        if resolved is None:
            return None
        result = {}
        for key, artifacts in resolved.items():
            newest = {}
            for artifact in artifacts:
                span = artifact.get_int_custom_property("span")
                rank = (artifact.get_int_custom_property("version"), artifact.id)
                if span not in newest or rank > newest[span][0]:
                    newest[span] = (rank, artifact)
            result[key] = [newest[span][1] for span in sorted(newest, reverse=True)]
        return result


def eval_config(config: Config) -> tfma.EvalConfig:
    ev = config.evaluation
    thresholds: dict[str, tfma.MetricThreshold] = {}
    thresholds.setdefault(ev.value_metric, tfma.MetricThreshold()).value_threshold.CopyFrom(
        tfma.GenericValueThreshold(lower_bound={"value": ev.value_lower_bound})
    )
    thresholds.setdefault(ev.change_metric, tfma.MetricThreshold()).change_threshold.CopyFrom(
        tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER, absolute={"value": -ev.change_tolerance}
        )
    )
    metrics = []
    for name in config.model.metrics:
        metric = tfma.MetricConfig(class_name=METRIC_CLASSES[name])
        if name in thresholds and ev.thresholds:  # gate on the overall slice only; slices are reported, not gated
            metric.per_slice_thresholds.append(
                tfma.PerSliceMetricThreshold(slicing_specs=[tfma.SlicingSpec()], threshold=thresholds[name])
            )
        metrics.append(metric)
    if "auc" in config.model.metrics:  # the class balance behind the AUC's confidence interval (run summary)
        metrics.append(tfma.MetricConfig(class_name="MeanLabel"))
    return tfma.EvalConfig(
        model_specs=[
            tfma.ModelSpec(
                signature_name="serving_default",
                label_key=config.model.label_key,
                prediction_key=config.model.evaluated_output,
                preprocessing_function_names=["transform_features"],
            )
        ],
        slicing_specs=[tfma.SlicingSpec()]
        + [tfma.SlicingSpec(feature_keys=[key]) for key in config.model.slice_features],
        metrics_specs=[tfma.MetricsSpec(metrics=metrics)],
    )


def release_gates(config: Config, trainer, example_gen, request_log_dir: str) -> tuple:
    """The InfraValidator and the replay gate before the Pusher (docs/release.md); None when disabled."""
    iv, rg = config.infra_validation, config.replay_gate
    infra = None
    if iv.enabled:
        infra = InfraValidator(
            model=trainer.outputs["model"],
            examples=example_gen.outputs["examples"],
            model_name=config.model_name,
            request_log_dir=request_log_dir,
            examples_per_signature=iv.examples,
            max_latency_ms=iv.max_latency_ms,
            max_error_rate=iv.max_error_rate,
        ).with_id("InfraValidator")
    replay = None
    if rg.enabled:
        replay = replay_gate.ReplayGate(
            model=trainer.outputs["model"],
            model_name=config.model_name,
            request_log_dir=request_log_dir,
            workspace=str(config.workspace_path),
            last_requests_count=rg.last_requests,
            max_mean_abs_delta=rg.max_mean_abs_delta,
            max_flipped_fraction=rg.max_flipped_fraction,
            max_p95_latency_ratio=rg.max_p95_latency_ratio,
        ).with_id("ReplayGate")
    return infra, replay


def create_pipeline(config: Config, target: Target | None = None) -> tfx.dsl.Pipeline:
    target = target or local_target(config)
    fingerprint = user_code.code_fingerprint(config.model)
    model_settings = user_code.settings(config.model)
    # Span layout (data/spans.py): ExampleGen ingests the newest span each run; flat: every *.csv.
    use_spans = spans.uses_spans(Path(config.data.root).resolve())
    example_gen = TypedCsvExampleGen(  # CsvExampleGen with declared column types
        column_types=column_types(config),
        input_base=target.data_root,
        input_config=tfx.proto.Input(
            splits=[
                tfx.proto.Input.Split(name="single_split", pattern=spans.SPAN_PATTERN if use_spans else CSV_PATTERN)
            ]
        ),
        output_config=tfx.proto.Output(
            split_config=tfx.proto.SplitConfig(
                splits=[
                    tfx.proto.SplitConfig.Split(name="train", hash_buckets=config.data.train_buckets),
                    tfx.proto.SplitConfig.Split(name="eval", hash_buckets=config.data.eval_buckets),
                ]
            )
        ),
    ).with_id("CsvExampleGen")
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    if config.data.schema:
        schema_gen = tfx.components.ImportSchemaGen(schema_file=str(Path(config.data.schema).resolve()))
    else:
        schema_gen = tfx.components.SchemaGen(
            statistics=statistics_gen.outputs["statistics"], infer_feature_shape=config.data.infer_feature_shape
        )
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"]
    )
    anomalies_gate = AnomaliesGate(anomalies=example_validator.outputs["anomalies"])
    window_resolver = None
    training_examples = example_gen.outputs["examples"]
    if use_spans:
        # All spans ExampleGen has ingested in earlier runs and this one; keeps the latest N.
        window_resolver = tfx.dsl.Resolver(
            strategy_class=SpanWindowStrategy,
            config={"num_spans": config.data.window_spans},
            examples=tfx.dsl.Channel(
                type=tfx.types.standard_artifacts.Examples,
                producer_component_id=example_gen.id,
                output_key="examples",
            ),
        ).with_id(WINDOW_RESOLVER)
        training_examples = window_resolver.outputs["examples"]
    cache_resolver = analyzer_cache.resolver(example_gen.id) if analyzer_cache.enabled(config, use_spans) else None
    transform = tfx.components.Transform(
        examples=training_examples,
        # Span layout: only the new span is analysed (pipeline/dag/analyzer_cache.py); flat: no cache.
        analyzer_cache=cache_resolver.outputs["cache"] if cache_resolver else None,
        disable_analyzer_cache=cache_resolver is None,
        # Pre/post-transform statistics: two TFDV passes over every row that nothing reads (StatisticsGen
        # describes the raw data; docs/performance.md).
        disable_statistics=True,
        schema=schema_gen.outputs["schema"],
        # A module file is loaded by path through the shim; an import path goes to TFX as it is.
        preprocessing_fn=user_code.PREPROCESSING_SHIM if config.model.module_file else config.model.preprocessing_fn,
        custom_config={
            "models_fingerprint": fingerprint,
            user_code.SETTINGS_KEY: user_code.transform_settings(config.model),
        },
    )
    transform.add_upstream_node(anomalies_gate)
    drift_resolver, drift_check = (
        (None, None) if not use_spans else drift_gate(config, example_gen, statistics_gen, schema_gen)
    )
    if drift_check is not None:  # monitoring.pipeline_drift: nothing is trained on a drifted span
        transform.add_upstream_node(drift_check)
    t = config.training
    warm_start_resolver = None
    trainer_inputs = {}
    if t.warm_start:
        warm_start_resolver = tfx.dsl.Resolver(
            strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
            model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
            model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
        ).with_id(WARM_START_RESOLVER)
        trainer_inputs["base_model"] = warm_start_resolver.outputs["model"]
    trainer = tfx.components.Trainer(
        run_fn=user_code.RUN_SHIM,  # the user's run_fn, then the serving contract
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        train_args=tfx.proto.TrainArgs(num_steps=t.train_steps),
        eval_args=tfx.proto.EvalArgs(num_steps=t.eval_steps),
        custom_config={
            "models_fingerprint": fingerprint,
            user_code.SETTINGS_KEY: model_settings,
            "batch_size": t.batch_size,
            "learning_rate": t.learning_rate,
            "hidden_units": list(t.hidden_units),
            "seed": t.seed,
        },
        **trainer_inputs,
    )
    if target.exclude_candidate_from_baseline:
        baseline_resolver = tfx.dsl.Resolver(
            strategy_class=BaselineModelStrategy,
            model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
            model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
            candidate=trainer.outputs["model"],
        ).with_id(BASELINE_RESOLVER)
    else:
        baseline_resolver = tfx.dsl.Resolver(
            strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
            model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
            model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
        ).with_id(BASELINE_RESOLVER)
        baseline_resolver.add_upstream_node(trainer)  # same node order as locally
    # The eval split bounded by evaluation.max_examples (a seeded, deterministic sample; all rows under it).
    eval_sample = EvalSample(
        examples=example_gen.outputs["examples"],
        max_examples=config.evaluation.max_examples,
        seed=config.evaluation.sample_seed,
    ).with_id(EVAL_SAMPLE)
    evaluator = tfx.components.Evaluator(
        examples=eval_sample.outputs["sample"],
        model=trainer.outputs["model"],
        baseline_model=baseline_resolver.outputs["model"],
        eval_config=eval_config(config),
    )
    request_log_dir = str(config.request_log_dir)
    infra_validator, replay = release_gates(config, trainer, example_gen, request_log_dir)
    for gate in (infra_validator, replay):
        if gate is not None:  # after the Evaluator, so the run's order reads gate by gate
            gate.add_upstream_node(evaluator)
    pusher = AtomicPusher(  # copies to a hidden temp dir, then renames: no partial versions
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        infra_blessing=infra_validator.outputs["blessing"] if infra_validator else None,
        replay_verdict=replay.outputs["verdict"] if replay else None,
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=target.serving_model_dir)
        ),
        # warm-up requests from logged traffic (pipeline/publish/serving_assets.py)
        custom_config={
            "request_log_dir": request_log_dir,
            **release_settings(config),  # release.mode canary / manual (pipeline/publish/approvals.py)
        },
    ).with_id("Pusher")
    return tfx.dsl.Pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=target.pipeline_root,
        components=[
            c
            for c in (
                example_gen,
                statistics_gen,
                schema_gen,
                example_validator,
                anomalies_gate,
                drift_resolver,
                drift_check,
                window_resolver,
                cache_resolver,
                transform,
                warm_start_resolver,
                trainer,
                baseline_resolver,
                eval_sample,
                evaluator,
                infra_validator,
                replay,
                pusher,
            )
            if c is not None
        ],
        enable_cache=config.enable_cache,  # MLMD: the runner sets metadata.connection_config(config)
        beam_pipeline_args=config.beam.pipeline_args(),
    )
