"""The taxi Keras model and the Trainer's `run_fn`.

The exported SavedModel carries the tf.Transform graph, so it takes raw features. Signatures:
- ``serving_default`` (method ``tensorflow/serving/classify``): input ``inputs``, serialized
  ``tf.Example`` strings; output ``scores`` [batch, 1], the probability of a big tip. This is what
  TFMA evaluates and what TF Serving's Classify API calls (and Predict with ``{"b64": ...}``).
- ``serving_raw`` (method ``tensorflow/serving/predict``): one input per raw feature in
  ``features.MODEL_FEATURES``, each shaped [batch]; output ``scores`` [batch, 1]. For JSON
  ``predict`` requests with plain feature values; "" (strings) or NaN (floats) marks a missing value.
- ``transform_features``: serialized examples to transformed features (TFMA computes the label).
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # tf.Transform's Keras layer is Keras 2.

import tensorflow as tf  # noqa: E402
import tensorflow_transform as tft  # noqa: E402
import tf_keras as keras  # noqa: E402
from tensorflow.core.protobuf import saved_model_pb2  # noqa: E402
from tfx_bsl.public.tfxio import TensorFlowDatasetOptions  # noqa: E402

from models import features  # noqa: E402

SERVING_DEFAULT = "serving_default"
RAW_SIGNATURE = "serving_raw"
TRANSFORM_SIGNATURE = "transform_features"
OUTPUT_KEY = "scores"
CLASSIFY_METHOD = "tensorflow/serving/classify"

DEFAULT_HPARAMS = {"batch_size": 64, "learning_rate": 0.001, "hidden_units": [64, 32], "seed": 42}
EMBEDDING_DIM = 8


def hparams(custom_config):
    """Training knobs from the Trainer's custom_config, with defaults for the ones not given."""
    values = dict(DEFAULT_HPARAMS)
    values.update({k: v for k, v in (custom_config or {}).items() if k in DEFAULT_HPARAMS})
    return values


def build_model(tf_transform_output, hidden_units, learning_rate):
    """Wide (one-hot buckets) and deep (numeric + embeddings) binary classifier."""
    inputs, wide, deep = {}, [], []
    for key in features.NUMERIC_FEATURES:
        name = features.transformed_name(key)
        inputs[name] = keras.Input(shape=(1,), name=name, dtype=tf.float32)
        deep.append(inputs[name])
    for key in features.BUCKET_FEATURES:
        name = features.transformed_name(key)
        inputs[name] = keras.Input(shape=(1,), name=name, dtype=tf.int64)
        wide.append(keras.layers.CategoryEncoding(num_tokens=features.BUCKET_COUNT + 1)(inputs[name]))
    for key in features.CATEGORICAL_FEATURES:
        name = features.transformed_name(key)
        inputs[name] = keras.Input(shape=(1,), name=name, dtype=tf.int64)
        size = tf_transform_output.num_buckets_for_transformed_feature(name)
        wide.append(keras.layers.CategoryEncoding(num_tokens=size)(inputs[name]))
        embedded = keras.layers.Embedding(size, EMBEDDING_DIM)(inputs[name])
        deep.append(keras.layers.Flatten()(embedded))
    x = keras.layers.concatenate(deep)
    for units in hidden_units:
        x = keras.layers.Dense(units, activation="relu")(x)
    merged = keras.layers.concatenate([x, keras.layers.concatenate(wide)])
    output = keras.layers.Dense(1, activation="sigmoid")(merged)
    model = keras.Model(inputs, output)
    model.compile(
        loss="binary_crossentropy",
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        metrics=[keras.metrics.BinaryAccuracy(), keras.metrics.AUC(name="auc")],
    )
    return model


def _dense_column_to_sparse(values):
    """[batch] tensor -> SparseTensor [batch, 1], what parse_example gives for a VarLen feature.

    An empty string (string features) or NaN (float features) is a missing value, as in the CSV.
    """
    n = tf.shape(values, out_type=tf.int64)[0]
    indices = tf.stack([tf.range(n), tf.zeros([n], tf.int64)], axis=1)
    if values.dtype == tf.string:
        present = tf.not_equal(values, "")
    elif values.dtype.is_floating:
        present = tf.logical_not(tf.math.is_nan(values))
    else:
        present = tf.ones([n], tf.bool)
    return tf.SparseTensor(
        tf.boolean_mask(indices, present), tf.boolean_mask(values, present), tf.stack([n, 1])
    )


def export_serving_model(model, tf_transform_output, export_dir):
    """Saves `model` with the transform graph and the three signatures described above."""
    model.tft_layer = tf_transform_output.transform_features_layer()
    raw_spec = tf_transform_output.raw_feature_spec()
    serving_spec = {k: v for k, v in raw_spec.items() if k != features.RAW_LABEL}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify_examples(inputs):
        parsed = tf.io.parse_example(inputs, serving_spec)
        return {OUTPUT_KEY: model(model.tft_layer(parsed))}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def transform_features(examples):
        return model.tft_layer(tf.io.parse_example(examples, raw_spec))

    raw_keys = list(features.MODEL_FEATURES)
    raw_inputs = [tf.TensorSpec([None], raw_spec[k].dtype, name=k) for k in raw_keys]

    @tf.function(input_signature=raw_inputs)
    def predict_raw(*columns):
        parsed = {k: _dense_column_to_sparse(v) for k, v in zip(raw_keys, columns)}
        return {OUTPUT_KEY: model(model.tft_layer(parsed))}

    signatures = {
        SERVING_DEFAULT: classify_examples,
        RAW_SIGNATURE: predict_raw,
        TRANSFORM_SIGNATURE: transform_features,
    }
    tf.saved_model.save(model, export_dir, signatures=signatures)
    _mark_as_classify_signature(export_dir, SERVING_DEFAULT)


def _mark_as_classify_signature(export_dir, signature_name):
    """TF2 exports every signature as 'predict'; TF Serving's Classify API needs 'classify'."""
    path = os.path.join(export_dir, "saved_model.pb")
    saved_model = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(path, "rb") as f:
        saved_model.ParseFromString(f.read())
    for meta_graph in saved_model.meta_graphs:
        meta_graph.signature_def[signature_name].method_name = CLASSIFY_METHOD
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(saved_model.SerializeToString())


def input_dataset(file_pattern, data_accessor, tf_transform_output, batch_size, seed):
    return data_accessor.tf_dataset_factory(
        file_pattern,
        TensorFlowDatasetOptions(batch_size=batch_size, label_key=features.LABEL, shuffle_seed=seed),
        tf_transform_output.transformed_metadata.schema,
    ).repeat()


def warm_start(model, base_model_dir):
    """Copies the trainable weights of the SavedModel at `base_model_dir` into `model`.

    Only when the architecture matches (same number of weights, same shapes in the same order);
    otherwise (e.g. a vocabulary grew) the model keeps its fresh initialization. Returns True if copied.
    """
    source = list(tf.saved_model.load(base_model_dir).trainable_variables)
    target = model.trainable_weights
    if len(source) != len(target) or any(s.shape != t.shape for s, t in zip(source, target)):
        print(f"warm start skipped: the base model's architecture differs ({base_model_dir})")
        return False
    for s, t in zip(source, target):
        t.assign(s)
    print(f"warm start: initialized {len(target)} weights from {base_model_dir}")
    return True


def run_fn(fn_args):
    """TFX Trainer entry point: trains on transformed examples and exports the serving model."""
    hp = hparams(fn_args.custom_config)
    keras.utils.set_random_seed(hp["seed"])
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    train = input_dataset(fn_args.train_files, fn_args.data_accessor, tf_transform_output, hp["batch_size"], hp["seed"])
    evaluation = input_dataset(fn_args.eval_files, fn_args.data_accessor, tf_transform_output, hp["batch_size"], hp["seed"])
    model = build_model(tf_transform_output, hp["hidden_units"], hp["learning_rate"])
    if fn_args.base_model:  # the Trainer's optional base_model input (the pipeline's training.warm_start)
        warm_start(model, fn_args.base_model)
    model.fit(
        train,
        steps_per_epoch=fn_args.train_steps,
        validation_data=evaluation,
        validation_steps=fn_args.eval_steps,
        verbose=2,
    )
    export_serving_model(model, tf_transform_output, fn_args.serving_model_dir)
