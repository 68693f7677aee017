"""Which raw features `mlpipe monitor` compares, and how: read from the dataset description, not code.

For mlpipe's own taxi model (no [model] module or code paths set, the taxi columns) these are the lists
of models/features.py, as before. For a user's model and data (README "Your own model"):
- the features: `model.serving_features` (what serving_raw takes), else every column of the dataset
  (pipeline/dag/dataset.py column_types: [data.columns], the pinned schema, or the taxi columns) except the
  raw label columns (`model.raw_label_keys`) and the timestamp column (`data.timestamp_column`);
- each one's type: the dataset's column type ("string" | "int" | "float");
- categorical: `monitoring.categorical_features` if set, else the string columns (an integer column is
  numeric unless listed there);
- slices: `model.slice_features`; seasonal: `monitoring.seasonal_features` (none for a user's model).
"""

from __future__ import annotations

from pipeline.config import Config, ModelConfig
from pipeline.dag import dataset


def _taxi_model(config: Config) -> bool:
    """mlpipe's own model on the taxi columns (the defaults): models/features.py describes it."""
    from models import features as taxi

    default = ModelConfig()
    code = (config.model.module_file, config.model.preprocessing_fn, config.model.run_fn)
    return code == (default.module_file, default.preprocessing_fn, default.run_fn) and dataset.column_types(
        config
    ) == dict(taxi.COLUMN_TYPES)


def column_types(config: Config) -> dict[str, str]:
    """{monitored feature: "string" | "int" | "float"}, in the dataset's column order."""
    from models import features as taxi

    types = dataset.column_types(config)
    if _taxi_model(config):
        return {name: types[name] for name in taxi.MODEL_FEATURES}
    if config.model.serving_features:
        return {name: types[name] for name in config.model.serving_features if name in types}
    skip = set(config.model.raw_label_keys) | {config.data.timestamp_column}
    return {name: kind for name, kind in types.items() if name not in skip}


def model_features(config: Config) -> tuple[str, ...]:
    return tuple(column_types(config))


def categorical_features(config: Config) -> tuple[str, ...]:
    from models import features as taxi

    if config.monitoring.categorical_features:
        return tuple(config.monitoring.categorical_features)
    if _taxi_model(config):
        return tuple(taxi.CATEGORICAL_FEATURES)
    return tuple(name for name, kind in column_types(config).items() if kind == "string")


def numeric_features(config: Config) -> tuple[str, ...]:
    """Continuous, heavy-tailed numeric features (quantile histograms in TFDV's comparators)."""
    from models import features as taxi

    if _taxi_model(config):
        return tuple(taxi.NUMERIC_FEATURES)
    categorical = set(categorical_features(config))
    return tuple(name for name, kind in column_types(config).items() if kind == "float" and name not in categorical)


def seasonal_features(config: Config) -> set[str]:
    from models import features as taxi

    if config.monitoring.seasonal_features:
        return set(config.monitoring.seasonal_features)
    return set(taxi.SEASONAL_FEATURES) if _taxi_model(config) else set()


def slice_features(config: Config) -> tuple[str, ...]:
    """The features the model's evaluation is sliced by (model.slice_features), those that are monitored."""
    monitored = set(model_features(config))
    return tuple(name for name in config.model.slice_features if name in monitored)
