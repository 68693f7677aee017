"""What TFX components wrote into an artifact's split directories (``<uri>/Split-<name>/``): the split
names, StatisticsGen's row counts, ExampleValidator's anomalies. TFX-free: the AnomaliesGate in the DAG
and `mlpipe lineage` (also the server's lineage endpoint) read them through here."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.metadata import queries as metadata

ANOMALIES_FILE = "SchemaDiff.pb"  # what ExampleValidator writes per split
STATISTICS_FILE = "FeatureStats.pb"  # what StatisticsGen writes per split


def split_dir(uri: str, split: str) -> Path:
    return Path(uri) / f"Split-{split}"


def split_names(artifact) -> list[str]:
    """The split names an MLMD artifact records (its `split_names` property), [] when none."""
    try:
        return list(json.loads(metadata.prop(artifact, "split_names", "[]")))
    except ValueError:
        return []


def row_counts(statistics) -> dict[str, int]:
    """{split: examples} from a StatisticsGen artifact (FeatureStats.pb per split)."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    counts = {}
    if statistics is None:
        return counts
    for split in split_names(statistics):
        path = split_dir(statistics.uri, split) / STATISTICS_FILE
        if path.is_file():
            stats = statistics_pb2.DatasetFeatureStatisticsList()
            stats.ParseFromString(path.read_bytes())
            if stats.datasets:
                counts[split] = int(stats.datasets[0].num_examples)
    return counts


def read_anomalies(uri: str, splits: list[str], required: bool = False) -> dict[str, list[str]]:
    """{split: ["feature 'x': description", ..., "dataset: description"]} from an ExampleAnomalies
    directory, one entry per split that has a SchemaDiff.pb (a missing one raises when `required`)."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    found = {}
    for split in splits:
        path = split_dir(uri, split) / ANOMALIES_FILE
        if not required and not path.is_file():
            continue
        anomalies = anomalies_pb2.Anomalies()
        anomalies.ParseFromString(path.read_bytes())
        lines = [
            f"feature '{name}': {info.description or info.short_description}"
            for name, info in sorted(anomalies.anomaly_info.items())
        ]
        if anomalies.HasField("dataset_anomaly_info"):
            info = anomalies.dataset_anomaly_info
            lines.append(f"dataset: {info.description or info.short_description}")
        found[split] = lines
    return found
