"""TFX module file for this project: Transform calls preprocessing_fn, Trainer calls run_fn.

Written by `mlpipe init`; it runs as it is. Edit it like any TFX module file: mlpipe loads it by path
(model.module_file), fingerprints this directory's code so an edit re-runs Transform and Trainer,
and gives the trained Keras model the serving signatures itself (serving_default, serving_raw,
transform_features), so run_fn only has to save the model.
"""

import tensorflow as tf
import tensorflow_transform as tft
from tensorflow import keras
from tfx_bsl.public import tfxio

LABEL = "__LABEL__"
NUM_CLASSES = __NUM_CLASSES__
LABEL_IS_STRING = __LABEL_IS_STRING__


def transformed_name(key):
    return key + "_xf"


def _dense(x, default):
    """A [batch] tensor from a sparse [batch, 0|1] or dense input; missing values become `default`."""
    if isinstance(x, tf.sparse.SparseTensor):
        x = tf.sparse.to_dense(tf.SparseTensor(x.indices, x.values, [x.dense_shape[0], 1]), default)
    return tf.reshape(x, [-1])


def preprocessing_fn(inputs):
    """Numbers are z-scored, strings get a vocabulary, the label becomes a class id."""
    outputs = {}
    for key, value in inputs.items():
        if key == LABEL:
            continue
        if value.dtype == tf.string:
            outputs[transformed_name(key)] = tft.compute_and_apply_vocabulary(_dense(value, ""), num_oov_buckets=1)
        else:
            outputs[transformed_name(key)] = tft.scale_to_z_score(tf.cast(_dense(value, 0), tf.float32))
    label = _dense(inputs[LABEL], "" if LABEL_IS_STRING else 0)
    if LABEL_IS_STRING:
        label = tft.compute_and_apply_vocabulary(label, vocab_filename="label")
    outputs[transformed_name(LABEL)] = tf.cast(label, tf.int64)
    return outputs


def _dataset(files, data_accessor, tf_transform_output, batch_size):
    return data_accessor.tf_dataset_factory(
        files,
        tfxio.TensorFlowDatasetOptions(batch_size=batch_size, label_key=transformed_name(LABEL), shuffle_seed=42),
        tf_transform_output.transformed_metadata.schema,
    ).repeat()


def _model(tf_transform_output):
    spec = tf_transform_output.transformed_feature_spec()
    inputs = {}
    columns = []
    for key, feature in sorted(spec.items()):
        if key == transformed_name(LABEL):
            continue
        inputs[key] = keras.Input(shape=(), name=key, dtype=feature.dtype)
        if feature.dtype == tf.int64:  # a vocabulary id
            size = tf_transform_output.num_buckets_for_transformed_feature(key)
            columns.append(keras.layers.Flatten()(keras.layers.Embedding(size, 4)(inputs[key])))
        else:
            columns.append(keras.layers.Reshape((1,))(inputs[key]))
    x = keras.layers.concatenate(columns) if len(columns) > 1 else columns[0]
    x = keras.layers.Dense(16, activation="relu")(x)
    outputs = keras.layers.Dense(NUM_CLASSES, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss="sparse_categorical_crossentropy",
        metrics=[keras.metrics.SparseCategoricalAccuracy()],
    )
    return model


def run_fn(fn_args):
    """Trains on the transformed examples and saves the Keras model; mlpipe adds the signatures."""
    keras.utils.set_random_seed(42)
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    train = _dataset(fn_args.train_files, fn_args.data_accessor, tf_transform_output, 32)
    evaluation = _dataset(fn_args.eval_files, fn_args.data_accessor, tf_transform_output, 32)
    model = _model(tf_transform_output)
    model.fit(train, steps_per_epoch=fn_args.train_steps, validation_data=evaluation,
              validation_steps=fn_args.eval_steps, verbose=2)
    tf.saved_model.save(model, fn_args.serving_model_dir)
