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

from tfx import v1 as tfx
from tfx.types import artifact_utils

DRIFT_MODES = ("off", "warn", "block")
PREVIOUS_STATISTICS_RESOLVER = "drift_baseline_resolver"
SPLIT = "train"


class DataDriftError(RuntimeError):
    """The newest span drifted from the previous one beyond a threshold (pipeline_drift = "block")."""


class PreviousSpanStatisticsStrategy(tfx.dsl.experimental.ResolverStrategy):
    """The newest StatisticsGen output of the latest span before the current run's span.

    Channels: `current` (this run's StatisticsGen output) and `statistics` (every ExampleStatistics
    of the pipeline). Resolves `statistics` to [] when there is no earlier span (the first run).
    """

    def resolve_artifacts(self, store, input_dict):
        current = input_dict.get("current", [])
        if not current:
            return {"statistics": [], "current": current}
        span = current[0].span
        earlier = [a for a in input_dict.get("statistics", []) if a.span < span and a.id != current[0].id]
        if not earlier:
            return {"statistics": [], "current": current}
        previous = max(a.span for a in earlier)
        newest = max((a for a in earlier if a.span == previous), key=lambda a: a.id)
        return {"statistics": [newest], "current": current}


def _load_split(statistics_artifact):
    import tensorflow_data_validation as tfdv

    uri = artifact_utils.get_split_uri([statistics_artifact], SPLIT)
    return tfdv.load_stats_binary(os.path.join(uri, "FeatureStats.pb"))


def drift_checks(current, previous, schema, monitoring_config):
    """TFDV's drift measurements of `current` against `previous` (DatasetFeatureStatisticsLists).

    Returns (the Anomalies proto, [check dicts as in `mlpipe monitor --json`]).
    """
    import tensorflow_data_validation as tfdv

    from pipeline import monitoring
    from pipeline.config import Config

    config = Config(monitoring=monitoring_config)
    kinds = monitoring._feature_kinds(previous, current)
    anomalies = tfdv.validate_statistics(
        current, monitoring.monitoring_schema(schema, config, kinds, "drift"),
        environment=monitoring.TRAINING, previous_statistics=previous)
    return anomalies, monitoring._measurements(anomalies, "drift", None)


@tfx.dsl.components.component
def DriftCheck(
    statistics: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleStatistics],
    schema: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Schema],
    drift: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.ExampleAnomalies],
    mode: tfx.dsl.components.Parameter[str],
    monitoring_json: tfx.dsl.components.Parameter[str],
    previous_statistics: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleStatistics] = None,
) -> None:
    """Drift of this span's train statistics from the previous span's; fails the run in "block" mode."""
    import tensorflow_data_validation as tfdv

    from pipeline.config import MonitoringConfig

    monitoring_config = MonitoringConfig(**json.loads(monitoring_json))
    schema_proto = tfdv.load_schema_text(os.path.join(schema.uri, "schema.pbtxt"))
    drift.split_names = artifact_utils.encode_split_names([SPLIT])
    out_dir = artifact_utils.get_split_uri([drift], SPLIT)
    os.makedirs(out_dir, exist_ok=True)
    drift.set_string_custom_property("mode", mode)
    drift.set_int_custom_property("span", statistics.span)
    if previous_statistics is None:
        from tensorflow_metadata.proto.v0 import anomalies_pb2

        anomalies, checks = anomalies_pb2.Anomalies(), []
        drift.set_int_custom_property("previous_span", -1)
    else:
        anomalies, checks = drift_checks(
            _load_split(statistics), _load_split(previous_statistics), schema_proto, monitoring_config)
        drift.set_int_custom_property("previous_span", previous_statistics.span)
    with open(os.path.join(out_dir, "SchemaDiff.pb"), "wb") as f:
        f.write(anomalies.SerializeToString())
    alerts = [c for c in checks if c["alert"]]
    drift.set_int_custom_property("drift_alert", int(bool(alerts)))
    drift.set_string_custom_property("checks", json.dumps(checks))
    if alerts and mode == "block":
        described = ", ".join(f"{c['feature']} {c['statistic']} {c['distance']:.4f} > {c['threshold']:.4f}"
                              for c in alerts)
        raise DataDriftError(
            f"span {statistics.span} drifted from span {previous_statistics.span}: {described} "
            "(monitoring.pipeline_drift = \"block\"; raise the thresholds or set it to \"warn\" to train anyway)")


def drift_gate(config, statistics_gen, schema_gen):
    """(resolver, DriftCheck) nodes for `create_pipeline`, or (None, None) when monitoring.pipeline_drift is "off"."""
    m = config.monitoring
    if m.pipeline_drift == "off":
        return None, None
    resolver = tfx.dsl.Resolver(
        strategy_class=PreviousSpanStatisticsStrategy,
        current=statistics_gen.outputs["statistics"],
        statistics=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ExampleStatistics),
    ).with_id(PREVIOUS_STATISTICS_RESOLVER)
    thresholds = {"drift_categorical": m.drift_categorical, "drift_numeric": m.drift_numeric,
                  "feature_thresholds": dict(m.feature_thresholds)}
    check = DriftCheck(
        statistics=statistics_gen.outputs["statistics"],
        previous_statistics=resolver.outputs["statistics"],
        schema=schema_gen.outputs["schema"],
        mode=m.pipeline_drift,
        monitoring_json=json.dumps(thresholds, sort_keys=True),
    ).with_id("DriftCheck")
    return resolver, check
