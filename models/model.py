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

import json
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # tf.Transform's Keras layer is Keras 2.

import tensorflow as tf  # noqa: E402
import tensorflow_transform as tft  # noqa: E402
import tf_keras as keras  # noqa: E402
from tfx_bsl.public.tfxio import TensorFlowDatasetOptions  # noqa: E402

from models import TRAINING_REPORT, features, signatures  # noqa: E402

SERVING_DEFAULT = signatures.SERVING_DEFAULT
RAW_SIGNATURE = signatures.RAW_SIGNATURE
TRANSFORM_SIGNATURE = signatures.TRANSFORM_SIGNATURE
OUTPUT_KEY = signatures.output_key("classification")
CLASSIFY_METHOD = signatures.CLASSIFY_METHOD

DEFAULT_HPARAMS = {"batch_size": 64, "learning_rate": 0.001, "hidden_units": [64, 32], "seed": 42}
EMBEDDING_DIM = 8
# Every categorical feature gets this many ids, whatever the window's vocabulary holds (at most
# VOCAB_SIZE tokens, then OOV_BUCKETS): layer shapes stay the same from one span window to the next,
# so a warm start can carry every weight over.
CATEGORICAL_IDS = features.VOCAB_SIZE + features.OOV_BUCKETS
OUTPUT_LAYER = "output"
PROBE_BATCHES = 10  # batches the loss probes (before and after a warm start, after training) average over


def embedding_layer_name(key):
    return f"{key}_embedding"


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
        wide.append(keras.layers.CategoryEncoding(num_tokens=CATEGORICAL_IDS)(inputs[name]))
        embedded = keras.layers.Embedding(CATEGORICAL_IDS, EMBEDDING_DIM, name=embedding_layer_name(key))(inputs[name])
        deep.append(keras.layers.Flatten()(embedded))
    x = keras.layers.concatenate(deep)
    for i, units in enumerate(hidden_units):  # named, so that a warm start matches weights by name
        x = keras.layers.Dense(units, activation="relu", name=f"hidden_{i}")(x)
    merged = keras.layers.concatenate([x, keras.layers.concatenate(wide)])
    # The categorical one-hot blocks come last in `merged`: warm_start relies on it.
    output = keras.layers.Dense(1, activation="sigmoid", name=OUTPUT_LAYER)(merged)
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
        model,
        tf_transform_output,
        export_dir,
        raw_label_keys=(features.RAW_LABEL,),
        serving_features=features.MODEL_FEATURES,
    )


def input_dataset(file_pattern, data_accessor, tf_transform_output, batch_size, seed):
    return data_accessor.tf_dataset_factory(
        file_pattern,
        TensorFlowDatasetOptions(batch_size=batch_size, label_key=features.LABEL, shuffle_seed=seed),
        tf_transform_output.transformed_metadata.schema,
    ).repeat()


def read_vocabulary(path):
    """A tf.Transform vocabulary file: one token per line, the most frequent first."""
    with tf.io.gfile.GFile(path, "rb") as f:
        return [line.rstrip(b"\n") for line in f]


def _row_map(old_vocab, new_vocab):
    """[(new row, old row)] for the tokens in both vocabularies and for the OOV buckets."""
    old_index = {token: i for i, token in enumerate(old_vocab)}
    pairs = [(j, old_index[t]) for j, t in enumerate(new_vocab) if t in old_index]
    pairs += [(len(new_vocab) + b, len(old_vocab) + b) for b in range(features.OOV_BUCKETS)]
    return pairs


def _remap(value, fresh, pairs, offset=0):
    """`fresh` with rows offset+new taken from `value`'s rows offset+old (a token's row follows the token)."""
    out = fresh.copy()
    for new, old in pairs:
        out[offset + new] = value[offset + old]
    return out


def saved_trainable_weights(model_dir):
    """{weight name: value} of the trainable variables of the SavedModel at `model_dir`.

    Found by walking its object graph, so it reads exports with Keras's layer traces (the loaded object
    has `trainable_variables`) and without them (export_serving_model's, where it has not).
    """
    loaded = tf.saved_model.load(model_dir)  # held: TrackableView keeps only a weak reference
    weights = {}
    for obj in tf.train.TrackableView(loaded).descendants():
        if isinstance(obj, tf.Variable) and obj.trainable:
            weights.setdefault(obj.name, obj.numpy())
    return weights


def warm_start(model, base_model_dir, vocabularies=None):
    """Initializes `model` from the SavedModel at `base_model_dir`, weight by weight (matched by name).

    `vocabularies` ({categorical feature: this window's tokens}) turns on token-by-token mapping:
    the base model's rows for a token (its embedding row, its weight in the output layer's one-hot
    block) go to that token's row in this window's vocabulary, whatever its rank; tokens new in this
    window keep their fresh initialization. The base model's vocabularies are its `assets/<feature>`.

    Returns a report: `carried` and `not_carried` ([{"weight", "reason"}]) weight names, and per
    feature the tokens `kept` and `new`. A weight that cannot be carried keeps its initialization.
    """
    source = saved_trainable_weights(base_model_dir)
    report = {"base_model": str(base_model_dir), "carried": [], "not_carried": [], "vocabularies": {}}
    maps = {}
    for key, new_vocab in (vocabularies or {}).items():
        path = os.path.join(base_model_dir, "assets", key)
        if not tf.io.gfile.exists(path):
            continue  # no mapping: its weights are carried only if they need none (reported below)
        old_vocab = read_vocabulary(path)
        maps[key] = _row_map(old_vocab, new_vocab)
        report["vocabularies"][key] = {
            "kept": len(maps[key]) - features.OOV_BUCKETS,
            "new": len(new_vocab) - (len(maps[key]) - features.OOV_BUCKETS),
        }
    output_kernel = f"{OUTPUT_LAYER}/kernel:0"
    for weight in model.trainable_weights:
        name, fresh = weight.name, weight.numpy()
        value = source.get(name)
        if value is None:
            report["not_carried"].append({"weight": name, "reason": "the base model has no weight of that name"})
            continue
        if value.shape != fresh.shape:
            report["not_carried"].append(
                {"weight": name, "reason": f"shape {list(value.shape)} in the base model, {list(fresh.shape)} now"}
            )
            continue
        if vocabularies is not None:
            key = next((k for k in vocabularies if name == f"{embedding_layer_name(k)}/embeddings:0"), None)
            if key is not None:
                if key not in maps:
                    report["not_carried"].append(
                        {"weight": name, "reason": f"the base model has no vocabulary for {key}"}
                    )
                    continue
                value = _remap(value, fresh, maps[key])
            elif name == output_kernel:
                categorical = list(features.CATEGORICAL_FEATURES)  # in the order build_model lays them out
                missing = [k for k in categorical if k not in maps]
                if missing:
                    report["not_carried"].append(
                        {"weight": name, "reason": f"the base model has no vocabulary for {', '.join(missing)}"}
                    )
                    continue
                first = value.shape[0] - len(categorical) * CATEGORICAL_IDS  # the one-hot blocks are last
                remapped = value.copy()
                remapped[first:] = fresh[first:]
                for i, k in enumerate(categorical):
                    remapped = _remap(value, remapped, maps[k], offset=first + i * CATEGORICAL_IDS)
                value = remapped
        weight.assign(value)
        report["carried"].append(name)
    return report


def probe_loss(model, dataset):
    """The model's loss on the first PROBE_BATCHES batches of `dataset` (no weights change)."""
    return float(model.evaluate(dataset, steps=PROBE_BATCHES, verbose=0, return_dict=True)["loss"])


def run_fn(fn_args):
    """TFX Trainer entry point: trains on transformed examples and exports the serving model."""
    hp = hparams(fn_args.custom_config)
    keras.utils.set_random_seed(hp["seed"])
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    train = input_dataset(fn_args.train_files, fn_args.data_accessor, tf_transform_output, hp["batch_size"], hp["seed"])
    evaluation = input_dataset(
        fn_args.eval_files, fn_args.data_accessor, tf_transform_output, hp["batch_size"], hp["seed"]
    )
    model = build_model(tf_transform_output, hp["hidden_units"], hp["learning_rate"])
    report = {"warm_start": None}
    if fn_args.base_model:  # the Trainer's optional base_model input (the pipeline's training.warm_start)
        cold = probe_loss(model, train)
        vocabularies = {k: tf_transform_output.vocabulary_by_name(k) for k in features.CATEGORICAL_FEATURES}
        report["warm_start"] = warm_start(model, fn_args.base_model, vocabularies)
        report["warm_start"].update(loss_cold=cold, loss_warm=probe_loss(model, train))
        print(f"warm start: {json.dumps(report['warm_start'])}")
    model.fit(
        train,
        steps_per_epoch=fn_args.train_steps,
        validation_data=evaluation,
        validation_steps=fn_args.eval_steps,
        verbose=2,
    )
    report["final_loss"] = probe_loss(model, train)
    export_serving_model(model, tf_transform_output, fn_args.serving_model_dir)
    if getattr(fn_args, "model_run_dir", None):
        tf.io.gfile.makedirs(fn_args.model_run_dir)
        with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, TRAINING_REPORT), "w") as f:
            f.write(json.dumps(report))
