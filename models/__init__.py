"""The user's model code: feature definitions, the tf.Transform preprocessing_fn, the Trainer run_fn.

This package never imports pipeline code: the pipeline refers to it by import path.
"""
