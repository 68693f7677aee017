"""mlpipe's default model (the taxi data): feature definitions, the tf.Transform preprocessing_fn, the
Trainer run_fn; and signatures.py, the serving contract every pushed model gets (yours too, see [model]).

This package never imports pipeline code: the pipeline refers to it by import path.
"""

TRAINING_REPORT = "training_report.json"  # model.py writes it to the Trainer's model_run directory
