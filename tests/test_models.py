"""models/: preprocessing_fn through real tf.Transform, and the exported model's signatures."""

import os
import tempfile

import numpy as np
import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tensorflow_transform as tft  # noqa: E402
import tensorflow_transform.beam as tft_beam  # noqa: E402
from tensorflow_transform.tf_metadata import schema_utils  # noqa: E402

from models import features, model, preprocessing  # noqa: E402
from tests.serving.taxi_export import BASE_ROW  # noqa: E402  (the one example raw row of the tests)

# Column types as ExampleGen encodes them (models/features.py COLUMN_TYPES).
DTYPES = {"int": tf.int64, "float": tf.float32, "string": tf.string}


def _dtype(column):
    return DTYPES[features.COLUMN_TYPES[column]]


RAW_SPEC = {c: tf.io.VarLenFeature(_dtype(c)) for c in features.CSV_COLUMNS}


def _row(**values):
    """A raw instance: every column, [] where missing, as tft's instance dict format wants."""
    base = dict(BASE_ROW)
    base.update(values)
    return {k: ([] if v is None else [v.encode() if isinstance(v, str) else v]) for k, v in base.items()}


ROWS = [
    _row(fare=10.0, tips=3.0, trip_miles=1.0),  # big tip
    _row(fare=10.0, tips=1.0, trip_miles=3.0, payment_type="Cash"),  # small tip
    _row(fare=20.0, tips=0.0, trip_miles=None, pickup_latitude=None, company=None),  # missing values
    _row(fare=None, tips=5.0, trip_miles=5.0, pickup_latitude=42.0),  # no fare: not a big tipper
]


@pytest.fixture(scope="module")
def transformed():
    """Runs preprocessing_fn through tf.Transform on Beam; returns (rows, TFTransformOutput dir)."""
    out_dir = tempfile.mkdtemp(prefix="tft-")
    metadata = schema_utils.schema_from_feature_spec(RAW_SPEC)
    from tensorflow_transform.tf_metadata import dataset_metadata

    with tft_beam.Context(temp_dir=os.path.join(out_dir, "tmp"), force_tf_compat_v1=False):
        (rows, _), transform_fn = (
            ROWS,
            dataset_metadata.DatasetMetadata(metadata),
        ) | tft_beam.AnalyzeAndTransformDataset(preprocessing.preprocessing_fn, output_record_batches=False)
        _ = transform_fn | tft_beam.WriteTransformFn(out_dir)
    # TFX's Transform also records the raw schema; the exported model's raw signature reads it.
    from tensorflow_transform.tf_metadata import metadata_io

    metadata_io.write_metadata(dataset_metadata.DatasetMetadata(metadata), os.path.join(out_dir, "metadata"))
    return rows, out_dir


def test_label_is_big_tip_and_missing_fare_is_negative(transformed):
    rows, _ = transformed
    assert [r[features.LABEL] for r in rows] == [1, 0, 0, 0]


def test_numeric_missing_filled_with_mean_then_scaled(transformed):
    rows, _ = transformed
    miles = np.array([r["trip_miles_xf"] for r in rows], dtype=np.float64)
    # Present values 1, 3, 5 (mean 3); the missing one becomes the mean, i.e. z-score 0.
    assert miles[2] == pytest.approx(0.0, abs=1e-6)
    assert miles[0] < 0 < miles[3]
    assert miles.mean() == pytest.approx(0.0, abs=1e-6)
    # The filled column is 1, 3, 3, 5: mean 3, (population) variance 2.
    assert miles.tolist() == pytest.approx([-(2**0.5), 0.0, 0.0, 2**0.5], abs=1e-6)


def test_analysis_is_one_phase_so_cached_spans_are_not_read_again():
    """With every analyzer of one span in tf.Transform's cache, analysing a window of that span and a
    new one reads the new span only. A multi-phase analysis (an analyzer reading another one's result,
    e.g. a z-score of a column filled with its mean) reads every span again, whatever the cache holds."""
    from tensorflow_transform.beam import analysis_graph_builder, analyzer_cache

    specs = {c: tf.SparseTensorSpec([None, 1], _dtype(c)) for c in features.CSV_COLUMNS}
    old, new = analyzer_cache.DatasetKey("span-1"), analyzer_cache.DatasetKey("span-2")
    fn = preprocessing.preprocessing_fn
    entries = analysis_graph_builder.get_analysis_cache_entry_keys(fn, specs, [old, new], False)
    assert entries
    cache = {old: analyzer_cache.DatasetCache({k: object() for k in entries}, analyzer_cache.DatasetCacheMetadata(1))}
    assert analysis_graph_builder.get_analysis_dataset_keys(fn, specs, [old, new], cache, False) == {new}


def test_missing_coordinate_gets_its_own_bucket(transformed):
    rows, _ = transformed
    buckets = [r["pickup_latitude_xf"] for r in rows]
    assert buckets[2] == features.BUCKET_COUNT
    assert all(0 <= b < features.BUCKET_COUNT for i, b in enumerate(buckets) if i != 2)


def test_categoricals_get_vocabulary_indices(transformed):
    rows, out_dir = transformed
    output = tft.TFTransformOutput(out_dir)
    vocab = [v.decode() for v in output.vocabulary_by_name("payment_type")]
    assert set(vocab) == {"Credit Card", "Cash"}
    assert vocab[rows[1]["payment_type_xf"]] == "Cash"
    companies = [v.decode() for v in output.vocabulary_by_name("company")]
    assert companies[rows[2]["company_xf"]] == features.MISSING_CATEGORY
    assert "17031081500" in [v.decode() for v in output.vocabulary_by_name("pickup_census_tract")]
    # Integer categoricals get a vocabulary of their values as strings.
    assert [v.decode() for v in output.vocabulary_by_name("trip_start_hour")] == ["9"]


def _example(row):
    feats = {}
    for key, values in row.items():
        if not values:
            continue
        v = values[0]
        if isinstance(v, bytes):
            feats[key] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))
        elif isinstance(v, float):
            feats[key] = tf.train.Feature(float_list=tf.train.FloatList(value=[v]))
        else:
            feats[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


@pytest.fixture(scope="module")
def exported(transformed):
    _, tft_dir = transformed
    output = tft.TFTransformOutput(tft_dir)
    keras_model = model.build_model(output, hidden_units=[4], learning_rate=0.01)
    export_dir = tempfile.mkdtemp(prefix="model-")
    model.export_serving_model(keras_model, output, export_dir)
    return export_dir


def test_serving_default_is_a_classify_signature_on_serialized_examples(exported):
    from tensorflow.python.tools import saved_model_utils

    meta_graph = saved_model_utils.get_meta_graph_def(exported, "serve")
    sig = meta_graph.signature_def[model.SERVING_DEFAULT]
    assert sig.method_name == "tensorflow/serving/classify"
    assert list(sig.inputs) == ["inputs"] and sig.inputs["inputs"].dtype == tf.string.as_datatype_enum
    assert list(sig.outputs) == [model.OUTPUT_KEY]
    raw = meta_graph.signature_def[model.RAW_SIGNATURE]
    assert raw.method_name == "tensorflow/serving/predict"
    assert set(raw.inputs) == set(features.MODEL_FEATURES)
    assert raw.inputs["company"].dtype == tf.string.as_datatype_enum
    assert raw.inputs["fare"].dtype == tf.float32.as_datatype_enum


def test_the_evaluator_loads_the_export_through_its_signatures(exported):
    """No keras_metadata.pb: TFMA's probe does not take the export for a Keras model (slower to load)."""
    import tensorflow_model_analysis as tfma

    spec = tfma.ModelSpec(signature_name=model.SERVING_DEFAULT)
    assert tfma.utils.get_model_type(spec, exported, [tf.saved_model.SERVING]) == tfma.TF_GENERIC


def test_signatures_agree_and_return_probabilities(exported):
    loaded = tf.saved_model.load(exported)
    examples = tf.constant([_example(r) for r in ROWS[:2]])
    by_example = loaded.signatures[model.SERVING_DEFAULT](inputs=examples)[model.OUTPUT_KEY].numpy()
    raw_inputs = {}
    for key in features.MODEL_FEATURES:
        values = [r[key][0] for r in ROWS[:2]]
        raw_inputs[key] = tf.constant(values, dtype=RAW_SPEC[key].dtype)
    by_raw = loaded.signatures[model.RAW_SIGNATURE](**raw_inputs)[model.OUTPUT_KEY].numpy()
    assert by_example.shape == (2, 1)
    assert np.all((by_example >= 0) & (by_example <= 1))
    np.testing.assert_allclose(by_example, by_raw, rtol=1e-5)


def test_transform_signature_computes_the_label(exported):
    loaded = tf.saved_model.load(exported)
    out = loaded.signatures[model.TRANSFORM_SIGNATURE](examples=tf.constant([_example(r) for r in ROWS]))
    assert out[features.LABEL].numpy().tolist() == [1, 0, 0, 0]
