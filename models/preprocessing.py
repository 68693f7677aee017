"""tf.Transform preprocessing for the taxi model (Transform's `preprocessing_fn`).

Missing values are handled explicitly, per feature kind:
- numeric: filled with the mean of the present values, then z-scored;
- coordinates: quantile buckets over the present values, and one extra bucket for "missing";
- categorical: missing becomes the category `features.MISSING_CATEGORY`; each feature gets a vocabulary
  (integer codes are turned into strings first), unseen values go to OOV buckets.
"""

import tensorflow as tf
import tensorflow_transform as tft

from models import features


def _densify(x, default):
    """Returns (values [batch], present [batch] bool) for a sparse [batch, 0|1] or dense input."""
    if isinstance(x, tf.sparse.SparseTensor):
        shape = tf.stack([x.dense_shape[0], 1])
        values = tf.sparse.to_dense(tf.SparseTensor(x.indices, x.values, shape), default_value=default)
        marks = tf.SparseTensor(x.indices, tf.ones_like(x.values, dtype=tf.bool), shape)
        present = tf.sparse.to_dense(marks, default_value=False)
        return tf.squeeze(values, axis=1), tf.squeeze(present, axis=1)
    values = tf.reshape(x, [-1])
    return values, tf.ones_like(values, dtype=tf.bool)


def _numeric(x):
    values, present = _densify(x, 0)
    values = tf.cast(values, tf.float32)
    return values, present & tf.logical_not(tf.math.is_nan(values))


def scale_numeric(x):
    """The z-score of x with missing values filled by the mean of the present ones, in one analysis phase.

    The same numbers as `tft.scale_to_z_score(tf.where(present, x, tft.mean(present x)))` (up to float
    rounding), without its second phase: there the z-score's analyzers read a column that depends on a
    first analyzer's result, and tf.Transform only caches a single-phase analysis, so a retrain would
    read the whole window again (docs/performance.md, "Incremental retrains"). Filling with the mean
    keeps the mean; the filled column's variance is var_present * n_present / n_total."""
    values, present = _numeric(x)
    present_values = tf.boolean_mask(values, present)
    mean, var_present = tft.mean(present_values), tft.var(present_values)
    counts = tft.sum(tf.stack([tf.cast(present, tf.int64), tf.ones_like(present, tf.int64)], axis=1), False)
    n_present, n_total = tf.unstack(tf.cast(counts, tf.float32))
    std = tf.sqrt(var_present * n_present / tf.maximum(n_total, 1.0))
    centred = tf.where(present, values, mean) - mean
    # As tft.scale_to_z_score: a constant column is centred, not divided by 0.
    return tf.where(tf.not_equal(std, 0.0), tf.math.divide_no_nan(centred, std), centred)


def bucketize_with_missing(x, num_buckets):
    values, present = _numeric(x)
    boundaries = tft.quantiles(tf.boolean_mask(values, present), num_buckets, epsilon=0.01)
    buckets = tft.apply_buckets(tf.where(present, values, 0.0), boundaries)
    return tf.where(present, buckets, tf.constant(num_buckets, tf.int64))


def categorical_to_index(x, name):
    values, present = _densify(x, "" if x.dtype == tf.string else 0)
    if values.dtype != tf.string:
        values = tf.strings.as_string(values)
    values = tf.where(present, values, features.MISSING_CATEGORY)
    return tft.compute_and_apply_vocabulary(
        values, top_k=features.VOCAB_SIZE, num_oov_buckets=features.OOV_BUCKETS, vocab_filename=name
    )


def big_tipper_label(fare, tips):
    fare_values, fare_present = _numeric(fare)
    tip_values, tip_present = _numeric(tips)
    big = tip_values > fare_values * features.BIG_TIP_FRACTION
    return tf.cast(fare_present & tip_present & big, tf.int64)


def preprocessing_fn(inputs, custom_config=None):
    """Maps raw features to model inputs. `custom_config` only carries cache keys (code fingerprint)."""
    del custom_config
    outputs = {}
    for key in features.NUMERIC_FEATURES:
        outputs[features.transformed_name(key)] = scale_numeric(inputs[key])
    for key in features.BUCKET_FEATURES:
        outputs[features.transformed_name(key)] = bucketize_with_missing(inputs[key], features.BUCKET_COUNT)
    for key in features.CATEGORICAL_FEATURES:
        outputs[features.transformed_name(key)] = categorical_to_index(inputs[key], key)
    outputs[features.LABEL] = big_tipper_label(inputs["fare"], inputs[features.RAW_LABEL])
    return outputs
