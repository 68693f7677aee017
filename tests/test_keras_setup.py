"""models/keras_setup.py: AutoGraph leaves Keras 2's (tf_keras) own code alone, as TF leaves Keras 3's.

Without it every model.fit and SavedModel export in the Trainer converted tf_keras's train_step,
loss, metrics and layer calls source file by source file (docs/performance.md: 16 s of the TFX taxi
module's first training step against 1.3 s on Keras 3).
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402
from tensorflow.python.autograph.impl import conversion  # noqa: E402

from models import model, signatures  # noqa: E402,F401  (the Trainer's modules: models/model.py, the run_fn shim's)


def _users_train_step(x):  # a user's own function: AutoGraph must still convert it (Python control flow)
    return x if x > 0 else -x


def test_trainer_leaves_keras2_internals_to_tensorflow_and_converts_user_code():
    assert tf.keras.Model is tf_keras.Model  # tf.keras is Keras 2 (tf.Transform's layer needs it)
    keras_internals = (
        tf_keras.Model.train_step,
        tf_keras.Model.compute_loss,
        tf_keras.layers.Dense.call,
        tf_keras.metrics.AUC.update_state,
    )
    converted = [f.__qualname__ for f in keras_internals if not conversion.is_allowlisted(f)]
    assert not converted, f"AutoGraph would convert tf_keras's own {converted}"
    assert not conversion.is_allowlisted(_users_train_step)


def test_a_tiny_fit_still_trains_with_the_rule():
    tf_keras.utils.set_random_seed(0)
    x = tf.random.normal([64, 3])
    y = tf.cast(tf.reduce_sum(x, axis=1, keepdims=True) > 0, tf.float32)
    m = tf_keras.Sequential([tf_keras.layers.Dense(1, activation="sigmoid")])
    m.compile(loss="binary_crossentropy", optimizer=tf_keras.optimizers.Adam(0.1), metrics=["accuracy"])
    history = m.fit(x, y, epochs=20, verbose=0)
    assert history.history["accuracy"][-1] > 0.9
