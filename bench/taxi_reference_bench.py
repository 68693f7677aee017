"""mlpipe against TFX's reference taxi pipeline: same data, train steps and runner, side by side.

The reference is `tfx/examples/chicago_taxi_pipeline/taxi_pipeline_native_keras.py` from the
installed tfx package (its own `_create_pipeline` and module file). In one invocation, each in a
fresh workspace and its own process, under the same LocalDagRunner and Beam arguments:

  mlpipe       `mlpipe run` with mlpipe's own model (models/: richer features, the serving contract)
  byo          `mlpipe run` with TFX's own `taxi_utils_native_keras.py` as model.module_file and the
               reference's evaluation (overall slice, example_count + binary_accuracy), export as
               run_fn wrote it: identical work, so the difference is pipeline overhead
  reference    TFX's taxi_pipeline_native_keras.py
  mlpipe-sdist, byo-sdist (opt-in, --variants): the same mlpipe runs with TFX's `tfx_ephemeral`
               sdist restored (what every run did before pipeline/ops/beam_args.py)

Every model is scored on its own pipeline's eval split (the same 2:1 hash split of the same CSV) with
the same label (tip > 20% of fare): AUC and accuracy. Ratios are against the reference of this
invocation; per-component seconds come from each workspace's MLMD.

Usage: python bench/taxi_reference_bench.py [--variants mlpipe,byo,reference] [--out DIR]
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
STEPS = (1000, 150)  # the reference pipeline hard-codes these
VARIANTS = ("mlpipe", "byo", "reference", "mlpipe-sdist", "byo-sdist")

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

# `mlpipe run` with TFX's ephemeral sdist put back: the "before" of pipeline/ops/beam_args.py.
SDIST_SCRIPT = r"""
import sys
from pipeline.ops import beam_args
beam_args.needs_tfx_package = lambda beam: True
from pipeline import cli
sys.exit(cli.main(sys.argv[1:]))
"""


def byo_config(path: Path, data_dir: Path) -> Path:
    """mlpipe's config for TFX's own taxi module, evaluated as the reference evaluates."""
    from models import features

    module = (
        Path(__import__("tfx").__file__).parent / "examples" / "chicago_taxi_pipeline" / "taxi_utils_native_keras.py"
    )
    # The types CsvExampleGen infers on the taxi data (TFX's module expects integer area codes).
    types = {**features.COLUMN_TYPES}
    for key in ("pickup_community_area", "dropoff_community_area", "pickup_census_tract", "dropoff_census_tract"):
        types[key] = "int"
    columns = ", ".join(f'{k} = "{v}"' for k, v in types.items())
    path.write_text(
        f"""pipeline_name = "tfx-taxi"
model_name = "tfxtaxi"
[data]
root = "{data_dir}"
columns = {{{columns}}}
[evaluation]
value_metric = "binary_accuracy"
value_lower_bound = 0.6
change_metric = "binary_accuracy"
change_tolerance = 0.0
[model]
module_file = "{module}"
label_key = "tips_xf"
raw_label_keys = ["tips"]
prediction_key = "outputs"
slice_features = []
metrics = ["example_count", "binary_accuracy"]
serving_contract = false
"""
    )
    return path


def timed(cmd: list[str], log: Path) -> float:
    start = time.perf_counter()
    with open(log, "w") as f:
        subprocess.run(
            cmd, check=True, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO))
        )
    return time.perf_counter() - start


def component_seconds(workspace: Path, pipeline_name: str) -> dict[str, float]:
    from pipeline.metadata import queries as metadata

    store = metadata.open_store(workspace / "metadata.sqlite")
    run = metadata.pipeline_runs(store, pipeline_name)[0]
    return {e.node_id: e.seconds for e in metadata.run_executions(store, pipeline_name, run)}


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
    parser.add_argument(
        "--variants",
        default="mlpipe,byo,reference",
        help=f"comma-separated, run in this order (default mlpipe,byo,reference; any of {', '.join(VARIANTS)})",
    )
    parser.add_argument("--out", help="keep workspaces and logs here (default: a temp dir)")
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or "reference" not in variants:
        parser.error(f"--variants: choose from {', '.join(VARIANTS)}, including reference (got {args.variants})")

    from data import taxi_sample

    out = Path(args.out or tempfile.mkdtemp(prefix="mlpipe-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    data_dir = taxi_sample.materialize()
    steps = ["--train-steps", str(STEPS[0]), "--eval-steps", str(STEPS[1]), "--no-cache"]
    beam = ["--direct-running-mode", "in_memory", "--direct-num-workers", "1"]

    def mlpipe_cmd(variant: str, ws: Path) -> list[str]:
        head = (
            [sys.executable, "-c", SDIST_SCRIPT] if variant.endswith("-sdist") else [sys.executable, "-m", "pipeline"]
        )
        cmd = [*head, "run", "--workspace", str(ws), *steps, *beam]
        if variant.startswith("byo"):
            return [*cmd, "--config", str(byo_config(out / f"{variant}.toml", data_dir))]
        return [*cmd, "--data-root", str(data_dir)]

    print(f"data: {data_dir} (15,002 rows); train/eval steps {STEPS[0]}/{STEPS[1]}; beam {BEAM_ARGS}", flush=True)
    results = {}
    for variant in variants:
        ws = out / variant
        if variant == "reference":
            cmd = [sys.executable, "-c", REFERENCE_SCRIPT, str(ws), str(data_dir)]
        else:
            cmd = mlpipe_cmd(variant, ws)
        seconds = timed(cmd, out / f"{variant}.log")
        print(f"  {variant:<14} {seconds:7.1f} s", flush=True)
        results[variant] = {"seconds": seconds, "workspace": ws}

    def artifacts(ws, pattern):
        return glob.glob(str(ws / "pipeline_root" / pattern))

    pipeline_names = {"reference": "chicago_taxi_native_keras"}
    for variant, r in results.items():
        ws = r.pop("workspace")
        own_contract = variant.startswith("mlpipe")
        r.update(
            score(
                artifacts(ws, "Trainer/model/*/Format-Serving")[0],
                "serving_default",
                "inputs" if own_contract else "examples",
                "scores" if own_contract else "outputs",
                artifacts(ws, "CsvExampleGen/examples/*/Split-eval/*"),
            )
        )
        name = pipeline_names.get(variant, "tfx-taxi" if variant.startswith("byo") else "mlpipe-taxi")
        r["components"] = component_seconds(ws, name)

    ref_s = results["reference"]["seconds"]
    print(f"\n{'pipeline':<14} {'wall s':>8} {'vs ref':>7} {'eval AUC':>9} {'eval acc':>9}")
    for variant, r in results.items():
        print(f"{variant:<14} {r['seconds']:8.1f} {r['seconds'] / ref_s:6.2f}x {r['auc']:9.4f} {r['accuracy']:9.4f}")
    shown = (
        "CsvExampleGen",
        "StatisticsGen",
        "SchemaGen",
        "ExampleValidator",
        "Transform",
        "Trainer",
        "Evaluator",
        "Pusher",
    )
    print(f"\nper component (s, from MLMD)\n{'component':<18}" + "".join(f" {v:>13}" for v in results))
    for node in shown:
        print(f"{node:<18}" + "".join(f" {r['components'].get(node, float('nan')):13.1f}" for r in results.values()))
    print(f"{'sum of components':<18}" + "".join(f" {sum(r['components'].values()):13.1f}" for r in results.values()))
    (out / "result.json").write_text(json.dumps(results, indent=2))
    print(f"\nworkspaces and logs: {out}")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # skip TF's noisy interpreter teardown
