"""DriftCheck: TFDV drift between the newest span's statistics and the previous span's, before training.

Enabled by `monitoring.pipeline_drift = "warn" | "block"` on the span layout (docs/monitoring.md).
A resolver (PreviousSpanStatisticsStrategy) finds the previous span's StatisticsGen output in
MLMD; DriftCheck compares the train splits with TFDV's drift comparators (L-infinity for
categorical, Jensen-Shannon divergence for numeric features; thresholds from [monitoring]) and
records the result as an ExampleAnomalies artifact. With "block" a drift above a threshold fails
the run before Transform, so nothing is trained on it.
"""
# No `from __future__ import annotations`: TFX's @component reads the annotations as types.

import json
import os

from tfx.types import artifact_utils

from pipeline.dag import feature_roles
from pipeline.dag import tfx_api as tfx

DRIFT_MODES = ("off", "warn", "block")
PREVIOUS_STATISTICS_RESOLVER = "drift_baseline_resolver"
SPLIT = "train"


class DataDriftError(RuntimeError):
    """The newest span drifted from the previous one beyond a threshold (pipeline_drift = "block")."""


def _span(examples) -> int:
    return examples.get_int_custom_property("span")  # CsvExampleGen records it as a custom property


def _examples_of_statistics(store, statistics, examples) -> dict:
    """{statistics artifact id: the Examples its StatisticsGen execution read}, through MLMD events.

    (StatisticsGen copies `examples.span` onto its output, but the span lives in a custom
    property of Examples, so ExampleStatistics.span is always 0: the span is looked up instead.)
    """
    from ml_metadata.proto import metadata_store_pb2

    Event = metadata_store_pb2.Event
    by_id = {a.id: a for a in examples}
    producers = {}
    for event in store.get_events_by_artifact_ids([a.id for a in statistics]):
        if event.type in (Event.OUTPUT, Event.DECLARED_OUTPUT):
            producers[event.artifact_id] = event.execution_id
    # Only StatisticsGen's: Transform's pre/post_transform_stats are ExampleStatistics too.
    executions = store.get_executions_by_id(sorted(set(producers.values())))
    type_names = {t.id: t.name for t in store.get_execution_types_by_id(sorted({e.type_id for e in executions}))}
    stats_gens = {e.id for e in executions if type_names.get(e.type_id, "").endswith("StatisticsGen")}
    producers = {a: e for a, e in producers.items() if e in stats_gens}
    read = {}
    for event in store.get_events_by_execution_ids(sorted(set(producers.values()))):
        if event.type in (Event.INPUT, Event.DECLARED_INPUT) and event.artifact_id in by_id:
            read[event.execution_id] = by_id[event.artifact_id]
    return {stats_id: read[execution] for stats_id, execution in producers.items() if execution in read}


class PreviousSpanStatisticsStrategy(tfx.dsl.experimental.ResolverStrategy):
    """The newest StatisticsGen output of the latest span before the current run's span.

    Channels: `current` (this run's StatisticsGen output), `statistics` (every ExampleStatistics of
    the pipeline) and `examples` (every Examples of ExampleGen). Resolves `statistics` and `examples`
    to the previous span's, or to [] when there is no earlier span (the first run).
    """

    def resolve_artifacts(self, store, input_dict):
        current = input_dict.get("current", [])
        nothing = {"statistics": [], "examples": [], "current": current}
        statistics = input_dict.get("statistics", [])
        if not current:
            return nothing
        source = _examples_of_statistics(store, statistics + current, input_dict.get("examples", []))
        if current[0].id not in source:
            return nothing
        span = _span(source[current[0].id])
        earlier = [a for a in statistics if a.id in source and _span(source[a.id]) < span]
        if not earlier:
            return nothing
        newest = max(earlier, key=lambda a: (_span(source[a.id]), a.id))
        return {"statistics": [newest], "examples": [source[newest.id]], "current": current}


def _load_split(statistics_artifact):
    import tensorflow_data_validation as tfdv

    uri = artifact_utils.get_split_uri([statistics_artifact], SPLIT)
    return tfdv.load_stats_binary(os.path.join(uri, "FeatureStats.pb"))


def drift_checks(current, previous, schema, monitoring_config, numeric_features=None):
    """TFDV's drift measurements of `current` against `previous` (DatasetFeatureStatisticsLists).

    `numeric_features`: the dataset's continuous features (pipeline/dag/feature_roles.py), fixed when the
    pipeline was built from the full config; None means the default (taxi) model's.
    Returns (the Anomalies proto, [check dicts as in `mlpipe monitor --json`]).
    """
    import tensorflow_data_validation as tfdv

    from pipeline.config import Config
    from pipeline.dag import tfdv_checks

    config = Config(monitoring=monitoring_config)
    kinds = tfdv_checks._feature_kinds(previous, current)
    anomalies = tfdv.validate_statistics(
        current,
        tfdv_checks.monitoring_schema(schema, config, kinds, "drift", numeric_features=numeric_features),
        environment=tfdv_checks.TRAINING,
        previous_statistics=previous,
    )
    return anomalies, tfdv_checks._measurements(anomalies, "drift", None)


@tfx.dsl.components.component
def DriftCheck(
    statistics: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleStatistics],
    schema: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Schema],
    drift: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.ExampleAnomalies],
    mode: tfx.dsl.components.Parameter[str],
    monitoring_json: tfx.dsl.components.Parameter[str],
    examples: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Examples],
    previous_statistics: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleStatistics] = None,
    previous_examples: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Examples] = None,
) -> None:
    """Drift of this span's train statistics from the previous span's; fails the run in "block" mode."""
    import tensorflow_data_validation as tfdv

    from pipeline.config import MonitoringConfig
    from pipeline.dag.results import set_properties

    settings = json.loads(monitoring_json)
    numeric_features = settings.pop("numeric_features", None)
    monitoring_config = MonitoringConfig(**settings)
    schema_proto = tfdv.load_schema_text(os.path.join(schema.uri, "schema.pbtxt"))
    drift.split_names = artifact_utils.encode_split_names([SPLIT])
    out_dir = artifact_utils.get_split_uri([drift], SPLIT)
    os.makedirs(out_dir, exist_ok=True)
    span = _span(examples)
    previous_span = _span(previous_examples) if previous_examples is not None else -1
    set_properties(drift, mode=mode, span=span, previous_span=previous_span)
    if previous_statistics is None:
        from tensorflow_metadata.proto.v0 import anomalies_pb2

        anomalies, checks = anomalies_pb2.Anomalies(), []
    else:
        anomalies, checks = drift_checks(
            _load_split(statistics),
            _load_split(previous_statistics),
            schema_proto,
            monitoring_config,
            numeric_features=numeric_features,
        )
    with open(os.path.join(out_dir, "SchemaDiff.pb"), "wb") as f:
        f.write(anomalies.SerializeToString())
    alerts = [c for c in checks if c["alert"]]
    set_properties(drift, drift_alert=bool(alerts), checks=checks)
    if alerts and mode == "block":
        described = ", ".join(
            f"{c['feature']} {c['statistic']} {c['distance']:.4f} > {c['threshold']:.4f}" for c in alerts
        )
        raise DataDriftError(
            f"span {span} drifted from span {previous_span}: {described} "
            '(monitoring.pipeline_drift = "block"; raise the thresholds or set it to "warn" to train anyway)'
        )


def drift_gate(config, example_gen, statistics_gen, schema_gen):
    """(resolver, DriftCheck) nodes for `create_pipeline`, or (None, None) when monitoring.pipeline_drift is "off"."""
    m = config.monitoring
    if m.pipeline_drift == "off":
        return None, None
    resolver = tfx.dsl.Resolver(
        strategy_class=PreviousSpanStatisticsStrategy,
        current=statistics_gen.outputs["statistics"],
        # Every ExampleStatistics of the pipeline (a channel spec unlike `current`'s, which TFX would merge).
        statistics=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ExampleStatistics),
        examples=tfx.dsl.Channel(
            type=tfx.types.standard_artifacts.Examples, producer_component_id=example_gen.id, output_key="examples"
        ),
    ).with_id(PREVIOUS_STATISTICS_RESOLVER)
    thresholds = {
        "drift_categorical": m.drift_categorical,
        "drift_numeric": m.drift_numeric,
        "feature_thresholds": dict(m.feature_thresholds),
        # The component sees only these settings, so the dataset's feature roles are resolved here, from
        # the whole config (a user's [data]/[model]), not from a default config inside the executor.
        "numeric_features": list(feature_roles.numeric_features(config)),
    }
    check = DriftCheck(
        statistics=statistics_gen.outputs["statistics"],
        examples=example_gen.outputs["examples"],
        previous_statistics=resolver.outputs["statistics"],
        previous_examples=resolver.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        mode=m.pipeline_drift,
        monitoring_json=json.dumps(thresholds, sort_keys=True),
    ).with_id("DriftCheck")
    return resolver, check
