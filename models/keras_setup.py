"""Keras 2 for the model code, traced as TensorFlow traces its own Keras.

`tf.keras` is Keras 2 (the `tf_keras` package), because tf.Transform's Keras layer is Keras 2.

AutoGraph (which rewrites the Python a `tf.function` calls into graph ops) skips the modules on
its do-not-convert list (tensorflow/python/autograph/core/config.py). In TF 2.16 that list names
`keras` (Keras 3, and Keras 2 up to TF 2.15, whose module was `keras`) but not `tf_keras`, so every
`model.fit` and every SavedModel export converts Keras 2's own train_step, compute_loss, metric
updates and layer calls, source file by source file, code written for graph mode that TF never used
to convert. On the taxi data that made the first training step of TFX's own taxi module take 16 s in
mlpipe against 1.3 s in TFX's reference pipeline, which runs it on Keras 3 (docs/performance.md).
Importing this module adds the rule TF has for `keras` for `tf_keras` too; the user's own code
(run_fn, custom layers) is still converted as before.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from tensorflow.python.autograph.core import config as _autograph  # noqa: E402

KERAS2_MODULE = "tf_keras"


def leave_keras2_unconverted() -> None:
    """Adds AutoGraph's do-not-convert rule for `tf_keras` (once; the rules are read at each call)."""
    rules = _autograph.CONVERSION_RULES
    if not any(isinstance(r, _autograph.DoNotConvert) and r.matches(KERAS2_MODULE) for r in rules):
        _autograph.CONVERSION_RULES = (*rules, _autograph.DoNotConvert(KERAS2_MODULE))


leave_keras2_unconverted()
