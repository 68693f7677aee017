"""Exports a taxi serving model (tf.Transform graph + untrained Keras model) from a few raw rows,
for bench/serving_bench.py when no pushed model is at hand. The serving tests use the model the
pipeline really pushes (tests/serving/test_taxi_model.py). Column types come from models/features.py.
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402

BASE_ROW = {
    "pickup_community_area": "8",
    "fare": 10.0,
    "trip_start_month": 5,
    "trip_start_hour": 9,
    "trip_start_day": 3,
    "trip_start_timestamp": 1400269500,
    "pickup_latitude": 41.9,
    "pickup_longitude": -87.6,
    "dropoff_latitude": 41.8,
    "dropoff_longitude": -87.7,
    "trip_miles": 2.0,
    "pickup_census_tract": "17031081500",
    "dropoff_census_tract": "17031320100",
    "payment_type": "Credit Card",
    "company": "Flash Cab",
    "trip_seconds": 600,
    "dropoff_community_area": "32",
    "tips": 3.0,
}


def dtype(column):
    """The column's type as models/features.py COLUMN_TYPES declares it (ExampleGen encodes with it)."""
    from models import features

    return {"float": tf.float32, "int": tf.int64, "string": tf.string}[features.COLUMN_TYPES[column]]


def rows():
    """Plain dicts of raw values (no label-free rows: `tips` is the label source)."""
    out = []
    for i in range(8):
        row = dict(BASE_ROW)
        row.update(
            fare=5.0 + 3 * i,
            tips=float(i % 3),
            trip_miles=1.0 + i,
            trip_start_hour=i,
            payment_type="Cash" if i % 2 else "Credit Card",
            pickup_latitude=41.8 + 0.02 * i,
        )
        out.append(row)
    return out


def export(export_dir: str) -> str:
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils

    from models import features, model, preprocessing

    raw_spec = {c: tf.io.VarLenFeature(dtype(c)) for c in features.CSV_COLUMNS}
    instances = [{k: [v.encode() if isinstance(v, str) else v] for k, v in r.items()} for r in rows()]
    tft_dir = tempfile.mkdtemp(prefix="taxi-tft-")
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(raw_spec))
    with tft_beam.Context(temp_dir=os.path.join(tft_dir, "tmp"), force_tf_compat_v1=False):
        _, transform_fn = (instances, metadata) | tft_beam.AnalyzeAndTransformDataset(
            preprocessing.preprocessing_fn, output_record_batches=False
        )
        _ = transform_fn | tft_beam.WriteTransformFn(tft_dir)
    metadata_io.write_metadata(metadata, os.path.join(tft_dir, "metadata"))
    output = tft.TFTransformOutput(tft_dir)
    tf.keras.utils.set_random_seed(0)
    keras_model = model.build_model(output, hidden_units=[4], learning_rate=0.01)
    model.export_serving_model(keras_model, output, export_dir)
    return export_dir
