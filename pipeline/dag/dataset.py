"""The dataset described by data, not code: the CSV columns and the type ExampleGen gives each.

:func:`column_types` is the one place that answers "which columns, which types" for a config:
``[data.columns]`` if given, else the pinned schema's types (``data.schema``), else the default
model's (``models/features.py`` COLUMN_TYPES, the taxi data). ``mlpipe schema`` infers a schema
from a CSV directory once and writes it for review and pinning.
"""

from __future__ import annotations

from pathlib import Path

from models import features as default_model
from pipeline.config import Config

# Schema feature types (tensorflow_metadata FeatureType) -> CSV column types.
_SCHEMA_TYPES = {1: "string", 2: "int", 3: "float"}  # BYTES, INT, FLOAT


def column_types(config: Config) -> dict[str, str]:
    """{CSV column: "int" | "float" | "string"} for ExampleGen and the header check."""
    if config.data.columns:
        return dict(config.data.columns)
    if config.data.schema:
        return schema_column_types(config.data.schema)
    return dict(default_model.COLUMN_TYPES)


def column_source(config: Config) -> str:
    """Where column_types(config) comes from, for messages that say what to edit."""
    if config.data.columns:
        return "[data.columns] in the config"
    if config.data.schema:
        return f"the pinned schema {config.data.schema} (data.schema)"
    return "the default taxi columns; declare yours in [data.columns] or pin a schema (mlpipe schema, data.schema)"


def load_schema(path: str | Path):
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    schema = schema_pb2.Schema()
    text_format.Parse(Path(path).read_text(), schema)
    return schema


def schema_column_types(path: str | Path) -> dict[str, str]:
    types = {}
    for feature in load_schema(path).feature:
        if feature.type not in _SCHEMA_TYPES:
            raise ValueError(f"{path}: feature {feature.name!r} has no int, float or bytes type")
        types[feature.name] = _SCHEMA_TYPES[feature.type]
    return types


def infer_schema(csv_files: list[Path], infer_feature_shape: bool):
    """TFDV's schema inference over the CSV files (their own type inference, once)."""
    import tensorflow_data_validation as tfdv

    stats = tfdv.generate_statistics_from_csv([str(p) for p in csv_files] if len(csv_files) > 1 else str(csv_files[0]))
    return tfdv.infer_schema(stats, infer_feature_shape=infer_feature_shape)


def write_schema(schema, path: str | Path, source: str) -> Path:
    from google.protobuf import text_format

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (
        f"# Schema inferred by `mlpipe schema` from {source}; review it, then pin it with data.schema\n"
        "# (or --schema): ExampleGen types the CSV columns as it says, ImportSchemaGen pins it.\n"
    )
    path.write_text(header + text_format.MessageToString(schema))
    return path
