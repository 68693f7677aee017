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
from tfx_bsl.public.tfxio import TensorFlowDatasetOptions  # noqa: E402

from models import features, signatures  # noqa: E402

SERVING_DEFAULT = signatures.SERVING_DEFAULT
RAW_SIGNATURE = signatures.RAW_SIGNATURE
TRANSFORM_SIGNATURE = signatures.TRANSFORM_SIGNATURE
OUTPUT_KEY = signatures.output_key("classification")
CLASSIFY_METHOD = signatures.CLASSIFY_METHOD

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


def export_serving_model(model, tf_transform_output, export_dir):
    """Saves `model` with the transform graph and the serving contract's signatures (models/signatures.py)."""
    signatures.export_serving_model(
        model, tf_transform_output, export_dir,
        raw_label_keys=(features.RAW_LABEL,), serving_features=features.MODEL_FEATURES,
    )


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
