"""`mlpipe run` against TFX's reference taxi pipeline, same data and train steps, side by side.

The reference is `tfx/examples/chicago_taxi_pipeline/taxi_pipeline_native_keras.py` from the
installed tfx package (its own `_create_pipeline` and module file), run under the same
LocalDagRunner and Beam arguments as mlpipe, each in a fresh workspace and its own process.
Both models are then scored on the same eval rows (each pipeline's own 2:1 hash split of the
same CSV) with the same label (tip > 20% of fare): AUC and accuracy.

Usage: python bench/taxi_reference_bench.py [--train-steps 1000] [--eval-steps 150] [--out DIR]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BEAM_ARGS = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]

REFERENCE_SCRIPT = r"""
import os, sys
from absl import logging
from tfx.orchestration.local.local_dag_runner import LocalDagRunner
from tfx.examples.chicago_taxi_pipeline import taxi_pipeline_native_keras as ref
logging.set_verbosity(logging.INFO)
root = sys.argv[1]
module_file = os.path.join(os.path.dirname(ref.__file__), "taxi_utils_native_keras.py")
p = ref._create_pipeline(
    pipeline_name="chicago_taxi_native_keras", pipeline_root=os.path.join(root, "pipeline_root"),
    data_root=sys.argv[2], module_file=module_file,
    serving_model_dir=os.path.join(root, "serving_model"),
    metadata_path=os.path.join(root, "metadata.sqlite"), beam_pipeline_args=%r)
LocalDagRunner().run(p)
""" % (BEAM_ARGS,)


def timed(cmd: list[str], log: Path) -> float:
    start = time.perf_counter()
    with open(log, "w") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
    return time.perf_counter() - start


def score(model_dir: str, signature: str, input_key: str, output_key: str, eval_files: list[str]) -> dict:
    """AUC and accuracy of one SavedModel on serialized eval examples."""
    import numpy as np
    import tensorflow as tf
    import tf_keras

    loaded = tf.saved_model.load(model_dir)
    fn = loaded.signatures[signature]
    auc, acc = tf_keras.metrics.AUC(), tf_keras.metrics.BinaryAccuracy()
    dataset = tf.data.TFRecordDataset(eval_files, compression_type="GZIP").batch(512)
    spec = {"tips": tf.io.VarLenFeature(tf.float32), "fare": tf.io.VarLenFeature(tf.float32)}
    for batch in dataset:
        parsed = tf.io.parse_example(batch, spec)
        tips = tf.sparse.to_dense(parsed["tips"], default_value=np.nan)[:, 0]
        fare = tf.sparse.to_dense(parsed["fare"], default_value=np.nan)[:, 0]
        label = tf.cast(tf.logical_and(tf.logical_not(tf.math.is_nan(fare)), tips > fare * 0.2), tf.float32)
        probability = tf.reshape(fn(**{input_key: batch})[output_key], [-1])
        auc.update_state(label, probability)
        acc.update_state(label, probability)
    return {"auc": float(auc.result()), "accuracy": float(acc.result())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-steps", type=int, default=1000, help="the reference pipeline hard-codes 1000")
    parser.add_argument("--eval-steps", type=int, default=150, help="the reference pipeline hard-codes 150")
    parser.add_argument("--out", help="keep workspaces and logs here (default: a temp dir)")
    args = parser.parse_args()
    if (args.train_steps, args.eval_steps) != (1000, 150):
        parser.error("the reference pipeline's steps are fixed at 1000/150; use those for a fair comparison")

    from data import taxi_sample

    out = Path(args.out or tempfile.mkdtemp(prefix="mlpipe-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    data_dir = taxi_sample.materialize()
    mlpipe_ws, ref_ws = out / "mlpipe", out / "reference"
    mlpipe = [
        sys.executable,
        "-m",
        "pipeline",
        "run",
        "--workspace",
        str(mlpipe_ws),
        "--data-root",
        str(data_dir),
        "--train-steps",
        str(args.train_steps),
        "--eval-steps",
        str(args.eval_steps),
        "--no-cache",
    ]
    reference = [sys.executable, "-c", REFERENCE_SCRIPT, str(ref_ws), str(data_dir)]

    print(f"data: {data_dir} (15,002 rows); train/eval steps {args.train_steps}/{args.eval_steps}; beam {BEAM_ARGS}")
    mlpipe_s = timed(mlpipe, out / "mlpipe.log")
    ref_s = timed(reference, out / "reference.log")

    def artifacts(ws, pattern):
        return glob.glob(str(ws / "pipeline_root" / pattern))

    # Each model on its own pipeline's eval split: the same rows (the same hash split of the same
    # CSV), encoded with that pipeline's column types (mlpipe declares codes as strings).
    mlpipe_q = score(
        artifacts(mlpipe_ws, "Trainer/model/*/Format-Serving")[0],
        "serving_default",
        "inputs",
        "scores",
        artifacts(mlpipe_ws, "CsvExampleGen/examples/*/Split-eval/*"),
    )
    ref_q = score(
        artifacts(ref_ws, "Trainer/model/*/Format-Serving")[0],
        "serving_default",
        "examples",
        "outputs",
        artifacts(ref_ws, "CsvExampleGen/examples/*/Split-eval/*"),
    )

    rows = [("mlpipe run", mlpipe_s, mlpipe_q), ("TFX taxi_pipeline_native_keras", ref_s, ref_q)]
    print(f"{'pipeline':<32} {'wall s':>8} {'eval AUC':>9} {'eval acc':>9}")
    for name, seconds, q in rows:
        print(f"{name:<32} {seconds:8.1f} {q['auc']:9.4f} {q['accuracy']:9.4f}")
    print(f"wall-time ratio mlpipe/reference: {mlpipe_s / ref_s:.2f}")
    (out / "result.json").write_text(json.dumps({n: {"seconds": s, **q} for n, s, q in rows}, indent=2))
    print(f"workspaces and logs: {out}")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # skip TF's noisy interpreter teardown
