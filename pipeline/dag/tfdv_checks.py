"""TFDV's side of monitoring: statistics of decoded rows, the SERVING-environment schema check, and the
skew/drift comparators the pipeline's drift gate (components_drift.py) uses on span statistics."""

from __future__ import annotations

from typing import Any

from pipeline.config import Config

TRAINING, SERVING = "TRAINING", "SERVING"


def statistics_of(rows: list[dict[str, Any]], histograms: bool = True):
    """TFDV statistics (DatasetFeatureStatisticsList) of the model features of decoded rows, in memory.

    histograms=False: counts, types and values only (what the schema check reads), about twice as fast.

    Only the features the model reads are summarised (a client may send more). A missing value
    (absent from a tf.Example, '' or NaN in a raw tensor) becomes an empty value list, as
    CsvExampleGen writes an empty CSV cell, so presence matches the training statistics.
    """
    import pyarrow as pa
    from tensorflow_data_validation.statistics import stats_impl, stats_options

    from models import features as model_features

    # Declared column types (as ExampleGen encodes them), so that a feature missing from every
    # request is still an (empty) column of its type, as it is in the training data.
    kinds = {
        "string": (pa.binary(), lambda v: v if isinstance(v, bytes) else str(v).encode()),
        "float": (pa.float32(), float),
        "int": (pa.int64(), int),
    }
    arrays, fields = [], []
    for name in model_features.MODEL_FEATURES:
        kind, convert = kinds[model_features.COLUMN_TYPES[name]]
        values = [row.get(name) for row in rows]
        arrays.append(pa.array([[] if v is None else [convert(v)] for v in values], type=pa.list_(kind)))
        fields.append(name)
    batch = pa.RecordBatch.from_arrays(arrays, fields)
    options = (
        stats_options.StatsOptions()
        if histograms
        else stats_options.StatsOptions(
            num_histogram_buckets=1, num_quantiles_histogram_buckets=1, num_values_histogram_buckets=2
        )
    )
    return stats_impl.generate_statistics_in_memory(batch, options)


def _feature_kinds(*stats_lists) -> dict[str, str]:
    """{feature: 'categorical' | 'numeric'} from the statistics (string stats = categorical)."""
    kinds = {}
    for stats in stats_lists:
        if stats is None:
            continue
        for dataset in stats.datasets:
            for feature in dataset.features:
                name = feature.path.step[0] if feature.path.step else feature.name
                stats_kind = feature.WhichOneof("stats")
                if stats_kind == "string_stats":
                    kinds[name] = "categorical"
                elif stats_kind == "num_stats":
                    kinds.setdefault(name, "numeric")
    return kinds


def threshold_for(config: Config, check: str, feature: str, kind: str) -> float:
    m = config.monitoring
    if feature in m.feature_thresholds:
        return m.feature_thresholds[feature]
    return getattr(m, f"{check}_{kind}")


def monitoring_schema(schema, config: Config, kinds: dict[str, str], check: str | None):
    """A copy of `schema` with TRAINING/SERVING environments and, for `check` ('skew'/'drift'), comparators."""
    from tensorflow_metadata.proto.v0 import schema_pb2

    from models import features as model_features

    copy = schema_pb2.Schema()
    copy.CopyFrom(schema)
    del copy.default_environment[:]
    copy.default_environment.extend([TRAINING, SERVING])
    for feature in copy.feature:
        # What the model does not read (the label, the timestamp) is not summarised at serving.
        if feature.name not in model_features.MODEL_FEATURES and SERVING not in feature.not_in_environment:
            feature.not_in_environment.append(SERVING)
        kind = kinds.get(feature.name)
        if check is None or kind is None:
            continue
        comparator = feature.skew_comparator if check == "skew" else feature.drift_comparator
        threshold = threshold_for(config, check, feature.name, kind)
        if kind == "categorical":
            comparator.infinity_norm.threshold = threshold
        else:
            comparator.jensen_shannon_divergence.threshold = threshold
            if feature.name in model_features.NUMERIC_FEATURES:
                # Heavy-tailed continuous values: equal-mass (quantile) buckets, so a few outliers do not
                # squeeze all mass into the first of TFDV's equal-width buckets. Codes and coordinates
                # (few distinct values) keep the equal-width histogram.
                comparator.jensen_shannon_divergence.source.type = schema_pb2.HistogramSelection.QUANTILES
    return copy


def serving_schema(schema, baseline_rows: list[dict], new_value_mass: float):
    """The schema the serving data is checked against: `monitoring_schema` in the SERVING environment,
    made tolerant of rare legitimate values.

    The Trainer's schema was inferred from one span; the serving traffic is compared with the whole
    training window. So every value the window's sample holds is added to its feature's string domain,
    a value outside the domain is an anomaly only when such values carry more than `new_value_mass`
    of the feature's traffic (TFDV's distribution_constraints.min_domain_mass), and presence is not
    required (the share of missing values is tested statistically, stats.py MISSING).
    """
    from models import features as model_features

    copy = monitoring_schema(schema, None, {}, None)
    domains = {d.name: d for d in copy.string_domain}
    for feature in copy.feature:
        if feature.name not in model_features.MODEL_FEATURES:
            continue
        feature.presence.ClearField("min_fraction")
        domain = None
        if feature.HasField("domain"):
            domain = domains.get(feature.domain)
        elif feature.HasField("string_domain"):
            domain = feature.string_domain
        if domain is None:
            continue
        known = set(domain.value)
        seen = {_text(row.get(feature.name)) for row in baseline_rows} - {None}
        domain.value.extend(sorted(seen - known))
        feature.distribution_constraints.min_domain_mass = 1.0 - new_value_mass
    return copy


def _text(value):
    if value is None:
        return None
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _measurements(anomalies, check: str, version: int | None) -> list[dict]:
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    names = anomalies_pb2.DriftSkewInfo.Measurement.Type.Name
    rows = []
    for info in anomalies.drift_skew_info:
        feature = ".".join(info.path.step)
        for m in info.skew_measurements if check == "skew" else info.drift_measurements:
            rows.append(
                {
                    "check": check,
                    "version": version,
                    "feature": feature,
                    "statistic": names(m.type),
                    "distance": round(float(m.value), 6),
                    "threshold": float(m.threshold),
                    "alert": float(m.value) > float(m.threshold),
                }
            )
    return rows


def _schema_anomalies(anomalies, version: int | None) -> list[dict]:
    """Anomalies other than the comparators' (those are reported as skew/drift checks)."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    type_name = anomalies_pb2.AnomalyInfo.Type.Name
    found = []
    for feature, info in sorted(anomalies.anomaly_info.items()):
        reasons = [r for r in info.reason if not type_name(r.type).startswith("COMPARATOR_")]
        if reasons:
            found.append(
                {
                    "version": version,
                    "feature": feature,
                    "types": [type_name(r.type) for r in reasons],
                    "description": " ".join(r.description for r in reasons) or info.description,
                }
            )
    if anomalies.HasField("dataset_anomaly_info") and anomalies.dataset_anomaly_info.reason:
        info = anomalies.dataset_anomaly_info
        found.append(
            {
                "version": version,
                "feature": "(dataset)",
                "types": [type_name(r.type) for r in info.reason],
                "description": " ".join(r.description for r in info.reason),
            }
        )
    return found
