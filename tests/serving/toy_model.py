"""A small hand-written SavedModel with a predict, a classify and a regress signature.

Outputs depend on the version (a variable holds it), so a test can tell which version answered.
"""

from __future__ import annotations

import os
import shutil

import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"


class ToyModule(tf.Module):
    def __init__(self, version: int):
        super().__init__()
        self.bias = tf.Variable(float(version), name="bias")

    # serving_default (predict): y = 0.5 * x + version; one input, one output.
    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def half_plus(self, x):
        return {"y": 0.5 * x + self.bias}

    # multi (predict): several inputs and outputs, one of them bytes.
    @tf.function(
        input_signature=[
            tf.TensorSpec([None, 2], tf.float32, name="a"),
            tf.TensorSpec([None], tf.string, name="tag"),
            tf.TensorSpec([None], tf.int64, name="n"),
        ]
    )
    def multi(self, a, tag, n):
        return {
            "sum": tf.reduce_sum(a, axis=1) + self.bias,
            "tag_bytes": tf.strings.join([tag, tf.constant("!")]),
            "twice": n * 2,
        }

    # classify: x from a tf.Example -> two classes with softmax-free scores.
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify(self, inputs):
        x = tf.io.parse_example(inputs, {"x": tf.io.FixedLenFeature([1], tf.float32)})["x"]
        score = tf.sigmoid(x + self.bias)
        batch = tf.shape(x)[0]
        classes = tf.tile(tf.constant([["no", "yes"]]), [batch, 1])
        return {"classes": classes, "scores": tf.concat([1.0 - score, score], axis=1)}

    # regress: x from a tf.Example -> 2x + version.
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress(self, inputs):
        x = tf.io.parse_example(inputs, {"x": tf.io.FixedLenFeature([], tf.float32)})["x"]
        return {"outputs": 2.0 * x + self.bias}


def _set_methods(export_dir: str, methods: dict[str, str]) -> None:
    path = os.path.join(export_dir, "saved_model.pb")
    saved_model = saved_model_pb2.SavedModel()
    with open(path, "rb") as f:
        saved_model.ParseFromString(f.read())
    for meta_graph in saved_model.meta_graphs:
        for name, method in methods.items():
            meta_graph.signature_def[name].method_name = method
    with open(path, "wb") as f:
        f.write(saved_model.SerializeToString())


def export(export_dir: str, version: int) -> str:
    module = ToyModule(version)
    signatures = {
        "serving_default": module.half_plus,
        "multi": module.multi,
        "classify_x": module.classify,
        "regress_x": module.regress,
    }
    tf.saved_model.save(module, export_dir, signatures=signatures)
    _set_methods(export_dir, {"classify_x": CLASSIFY, "regress_x": REGRESS})
    return export_dir


_CACHE: dict[int, str] = {}


def copy_version(cache_dir: str, base_path: str, version: int) -> str:
    """Writes version `version` under base_path (exports once per version into cache_dir, then copies)."""
    if version not in _CACHE:
        _CACHE[version] = export(os.path.join(cache_dir, f"toy-{version}"), version)
    target = os.path.join(base_path, str(version))
    shutil.copytree(_CACHE[version], target)
    return target
