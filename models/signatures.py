"""The serving contract of every model mlpipe pushes, whatever the Trainer's run_fn exported.

Signatures (README "The pushed model's signatures"):
- ``serving_default``: serialized ``tf.Example`` strings (input ``inputs``) through the transform graph
  and the model; method ``tensorflow/serving/classify`` with output ``scores`` [batch, classes]
  (probabilities), or ``tensorflow/serving/regress`` with output ``outputs`` [batch] for regression.
- ``serving_raw`` (predict): one [batch] input per raw serving feature; "" (strings) or NaN (floats)
  marks a missing value of a feature that may be missing.
- ``transform_features``: serialized examples (input ``examples``) to the transformed features,
  label included (TFMA computes the label from it).

Two ways in: :func:`export_serving_model` for a Keras model in hand (mlpipe's taxi run_fn), and
:func:`rebuild` for a SavedModel some run_fn already wrote (the pipeline's post-training step). Both
build the signatures with the same code. Imports no pipeline code.
"""

import os
import shutil

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # tf.Transform's Keras layer is Keras 2.

import tensorflow as tf  # noqa: E402
from tensorflow.core.protobuf import saved_model_pb2  # noqa: E402

from models import keras_setup  # noqa: E402,F401  (AutoGraph leaves Keras 2's own code alone, as TF does Keras 3's)

SERVING_DEFAULT = "serving_default"
RAW_SIGNATURE = "serving_raw"
TRANSFORM_SIGNATURE = "transform_features"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"


class ServingContractError(ValueError):
    """The contract cannot be built; the message names the setting or the code to change."""


def output_key(task: str) -> str:
    """The output TF Serving's API reads: `scores` for classify, `outputs` for regress."""
    return "scores" if task == "classification" else "outputs"


def method_name(task: str) -> str:
    return CLASSIFY_METHOD if task == "classification" else REGRESS_METHOD


def dense_column_to_sparse(values):
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
    return tf.SparseTensor(tf.boolean_mask(indices, present), tf.boolean_mask(values, present), tf.stack([n, 1]))


def _raw_column(values, spec):
    """A serving_raw input [batch] as parse_example would give it for `spec`."""
    if isinstance(spec, tf.io.FixedLenFeature):
        return tf.reshape(values, [-1, *spec.shape])
    return dense_column_to_sparse(values)


def _prediction(outputs, task: str, logits: bool):
    """The model's one output as the contract's tensor: [batch, classes] scores, or [batch] values."""
    if isinstance(outputs, dict):
        if len(outputs) != 1:
            raise ServingContractError(
                f"the model returns {len(outputs)} outputs ({', '.join(sorted(outputs))}); the serving "
                "contract needs a model with one output (or set model.serving_contract = false)"
            )
        outputs = next(iter(outputs.values()))
    if isinstance(outputs, (list, tuple)):
        if len(outputs) != 1:
            raise ServingContractError(
                f"the model returns {len(outputs)} outputs; the serving contract needs a model with one "
                "output (or set model.serving_contract = false)"
            )
        outputs = outputs[0]
    outputs = tf.cast(outputs, tf.float32)
    if task == "regression":
        return tf.reshape(outputs, [-1])
    scores = tf.reshape(outputs, [tf.shape(outputs)[0], -1])
    if logits:
        scores = tf.sigmoid(scores) if scores.shape[-1] == 1 else tf.nn.softmax(scores)
    return scores


def _signatures(call_model, tft_layer, raw_spec, raw_label_keys, serving_features, task, logits):
    key = output_key(task)
    serving_spec = {k: v for k, v in raw_spec.items() if k not in raw_label_keys}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def serve_examples(inputs):
        parsed = tf.io.parse_example(inputs, serving_spec)
        return {key: _prediction(call_model(tft_layer(parsed)), task, logits)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def transform_features(examples):
        return tft_layer(tf.io.parse_example(examples, raw_spec))

    raw_keys = list(serving_features or serving_spec)
    raw_inputs = [tf.TensorSpec([None], raw_spec[k].dtype, name=k) for k in raw_keys]

    @tf.function(input_signature=raw_inputs)
    def serve_raw(*columns):
        parsed = {k: _raw_column(v, raw_spec[k]) for k, v in zip(raw_keys, columns)}
        return {key: _prediction(call_model(tft_layer(parsed)), task, logits)}

    return {SERVING_DEFAULT: serve_examples, RAW_SIGNATURE: serve_raw, TRANSFORM_SIGNATURE: transform_features}


def _check_keys(raw_spec, raw_label_keys, serving_features):
    columns = ", ".join(sorted(raw_spec))
    for k in raw_label_keys:
        if k not in raw_spec:
            raise ServingContractError(
                f"model.raw_label_keys: {k!r} is not a raw feature (the raw features: {columns})"
            )
    for k in serving_features or ():
        if k not in raw_spec or k in raw_label_keys:
            raise ServingContractError(
                f"model.serving_features: {k!r} is not a raw feature other than the label (the raw features: {columns})"
            )


def export_serving_model(
    model, tf_transform_output, export_dir, *, raw_label_keys, serving_features=(), task="classification", logits=False
):
    """Saves the Keras `model` with the transform graph and the contract's three signatures.

    `raw_label_keys`: raw columns absent at serving time (the label's sources). `serving_features`: the
    inputs of serving_raw, in order; empty = every raw feature but the label's.
    """
    raw_spec = tf_transform_output.raw_feature_spec()
    _check_keys(raw_spec, raw_label_keys, serving_features)
    model.tft_layer = tf_transform_output.transform_features_layer()
    signatures = _signatures(model, model.tft_layer, raw_spec, raw_label_keys, serving_features, task, logits)
    # Without Keras's per-layer call traces (save_traces=False): the SavedModel keeps the signatures and
    # the variables, and 190 functions instead of 308 for the taxi model, so the export and every load of
    # it (Evaluator, InfraValidator, serving) trace and read fewer (docs/performance.md).
    model.save(export_dir, save_format="tf", signatures=signatures, save_traces=False)
    # As tf.saved_model.save wrote it: no keras_metadata.pb. With it, TFMA's model-type probe
    # (tf.keras.models.load_model) succeeds and the Evaluator rebuilds the model as Keras, which is slower.
    os.remove(os.path.join(export_dir, "keras_metadata.pb"))
    mark_method(export_dir, SERVING_DEFAULT, method_name(task))


def mark_method(export_dir, signature_name, method):
    """TF2 exports every signature as 'predict'; TF Serving's Classify/Regress APIs need theirs."""
    path = os.path.join(export_dir, "saved_model.pb")
    saved_model = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(path, "rb") as f:
        saved_model.ParseFromString(f.read())
    for meta_graph in saved_model.meta_graphs:
        meta_graph.signature_def[signature_name].method_name = method
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(saved_model.SerializeToString())


def has_contract(export_dir, task="classification") -> bool:
    """Whether the SavedModel at `export_dir` already has the three signatures, serving_default's method right."""
    path = os.path.join(export_dir, "saved_model.pb")
    if not tf.io.gfile.exists(path):
        return False
    saved_model = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(path, "rb") as f:
        saved_model.ParseFromString(f.read())
    for meta_graph in saved_model.meta_graphs:
        sigs = meta_graph.signature_def
        if all(k in sigs for k in (SERVING_DEFAULT, RAW_SIGNATURE, TRANSFORM_SIGNATURE)):
            return (
                sigs[SERVING_DEFAULT].method_name == method_name(task)
                and output_key(task) in sigs[SERVING_DEFAULT].outputs
            )
    return False


def _input_structure(loaded):
    """The input structure (TensorSpecs) of the loaded model's call function, or None if it has none."""
    call = getattr(loaded, "__call__", None)
    for concrete in getattr(call, "concrete_functions", None) or ():
        args, _ = concrete.structured_input_signature
        if args and isinstance(args[0], (dict, list, tuple, tf.TensorSpec, tf.SparseTensorSpec)):
            return args[0]
    return None


def _adapt(value, spec):
    """A transformed feature shaped and typed as the model's input `spec` (Keras casts; a loaded model does not)."""
    if isinstance(spec, tf.SparseTensorSpec) or isinstance(value, tf.SparseTensor):
        return value
    value = tf.cast(value, spec.dtype)
    if spec.shape.rank is not None and value.shape.rank != spec.shape.rank and spec.shape[1:].is_fully_defined():
        value = tf.reshape(value, [-1, *spec.shape[1:]])
    return value


def model_caller(loaded, transformed_keys):
    """A function transformed-features dict -> outputs, calling a loaded (Keras) SavedModel.

    Raises ServingContractError when the SavedModel has no callable model or its inputs are not
    transformed features.
    """
    structure = _input_structure(loaded)
    if structure is None:
        raise ServingContractError(
            "the SavedModel run_fn wrote has no callable model (a Keras model saved with "
            "tf.saved_model.save(model, fn_args.serving_model_dir) has one); export a Keras model, or set "
            "model.serving_contract = false to push run_fn's export as it is"
        )
    specs = (
        structure
        if isinstance(structure, dict)
        else {s.name: s for s in (structure if isinstance(structure, (list, tuple)) else [structure])}
    )
    unknown = [k for k in specs if k not in transformed_keys]
    if unknown:
        raise ServingContractError(
            f"the model's input(s) {', '.join(map(str, unknown))} are not outputs of preprocessing_fn "
            f"(it has: {', '.join(sorted(transformed_keys))}); the contract feeds the model the transformed "
            "features by name (or set model.serving_contract = false)"
        )

    def call(transformed):
        if isinstance(structure, dict):
            return loaded({k: _adapt(transformed[k], s) for k, s in structure.items()})
        if isinstance(structure, (list, tuple)):
            return loaded([_adapt(transformed[s.name], s) for s in structure])
        return loaded(_adapt(transformed[structure.name], structure))

    return call


def rebuild(
    export_dir,
    tf_transform_output,
    *,
    raw_label_keys,
    serving_features=(),
    task="classification",
    logits=False,
    keep_original=None,
):
    """Re-exports the SavedModel a run_fn wrote at `export_dir` with the contract's signatures, in place.

    The model is the loaded SavedModel's callable (the Keras model); the transform graph comes from
    `tf_transform_output`. run_fn's own export is moved to `keep_original` (or deleted).
    """
    raw_spec = tf_transform_output.raw_feature_spec()
    _check_keys(raw_spec, raw_label_keys, serving_features)
    if not tf.io.gfile.exists(os.path.join(export_dir, "saved_model.pb")):
        raise ServingContractError(
            "run_fn wrote no SavedModel to fn_args.serving_model_dir; save the trained model there "
            "(tf.saved_model.save(model, fn_args.serving_model_dir))"
        )
    loaded = tf.saved_model.load(export_dir)
    transformed_keys = set(tf_transform_output.transformed_feature_spec())
    call = model_caller(loaded, transformed_keys)
    loaded.mlpipe_tft_layer = tf_transform_output.transform_features_layer()
    signatures = _signatures(call, loaded.mlpipe_tft_layer, raw_spec, raw_label_keys, serving_features, task, logits)
    staging = export_dir.rstrip("/") + ".contract"
    try:
        tf.saved_model.save(loaded, staging, signatures=signatures)
    except ServingContractError:
        raise
    except Exception as e:  # tracing the signatures failed: the model does not take these features
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ServingContractError(
            f"cannot build the serving signatures around run_fn's model ({first}); check model.task, "
            "model.raw_label_keys and model.serving_features, or set model.serving_contract = false"
        ) from e
    mark_method(staging, SERVING_DEFAULT, method_name(task))
    if keep_original:
        shutil.rmtree(keep_original, ignore_errors=True)
        shutil.move(export_dir, keep_original)
    else:
        shutil.rmtree(export_dir)
    shutil.move(staging, export_dir)
