"""One loaded version of a model: its SavedModel, its signatures, and a thread-safe way to run them."""

from __future__ import annotations

import itertools
import os
import threading
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from serving.errors import ServingError, from_exception, invalid  # noqa: F401

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")


def is_complete(version_dir: str) -> bool:
    """A version directory can be tried once its SavedModel proto is there (it is written last by savers)."""
    return any(os.path.isfile(os.path.join(version_dir, name)) for name in SAVED_MODEL_FILES)


def read_meta_graph(export_dir: str, tags: Sequence[str]):
    """The MetaGraphDef of `export_dir` whose tags include `tags` (read from the proto, no graph built)."""
    from google.protobuf import text_format
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    pb = os.path.join(export_dir, "saved_model.pb")
    if os.path.isfile(pb):
        with open(pb, "rb") as f:
            saved_model.ParseFromString(f.read())
    else:
        with open(os.path.join(export_dir, "saved_model.pbtxt")) as f:
            text_format.Parse(f.read(), saved_model)
    wanted = set(tags)
    for meta_graph in saved_model.meta_graphs:
        if wanted <= set(meta_graph.meta_info_def.tags):
            return meta_graph
    available = [sorted(m.meta_info_def.tags) for m in saved_model.meta_graphs]
    raise ValueError(f"no MetaGraphDef with tags {sorted(wanted)} in {export_dir} (it has {available})")


@dataclass(frozen=True)
class TensorSpecInfo:
    key: str  # the alias clients use
    dtype: np.dtype
    shape: tuple[int, ...] | None  # None: unknown rank; -1: any size


@dataclass
class Signature:
    name: str
    method_name: str
    inputs: dict[str, TensorSpecInfo]
    outputs: dict[str, TensorSpecInfo]
    proto: object  # tensorflow.SignatureDef
    function: Callable
    prebound: Callable | None = None  # the same function without per-call argument binding
    input_dtypes: dict | None = None  # {input key: numpy dtype}, resolved once per version

    def __post_init__(self):
        self.input_dtypes = {k: spec.dtype for k, spec in self.inputs.items()}


def _spec(key: str, tensor_info) -> TensorSpecInfo:
    import tensorflow as tf

    dtype = tf.dtypes.as_dtype(tensor_info.dtype)
    np_dtype = np.dtype(object) if dtype == tf.string else np.dtype(dtype.as_numpy_dtype)
    shape_proto = tensor_info.tensor_shape
    shape = None if shape_proto.unknown_rank else tuple(d.size for d in shape_proto.dim)
    return TensorSpecInfo(key, np_dtype, shape)


class _PreboundCall:
    """A signature's concrete function called with flat tensors in its own argument order.

    `function(**tensors)` binds the keyword arguments against the signature, casts and checks each
    tensor, and resolves the captured variable handles on every call; for a one-row request that is
    more Python time than the model. Here the order, the dtypes and the captured inputs are resolved
    once per loaded version, and a call goes straight to the function's graph (the path
    ConcreteFunction._call_flat takes when no gradient tape is recording). Inputs have been checked
    against the signature already (Servable.check_inputs).
    """

    def __init__(self, function, specs: Mapping[str, TensorSpecInfo]):
        import tensorflow as tf
        from tensorflow.python.eager import context, record
        from tensorflow.python.framework import ops

        self._function = function
        self._atomic = function._inference_function
        self._order = list(function._arg_keywords)
        self._captured = list(function.captured_inputs)
        expected = len(self._atomic.cached_definition.signature.input_arg)
        if sorted(self._order) != sorted(specs) or len(self._order) + len(self._captured) != expected:
            raise ValueError("signature arguments do not match its function's flat inputs")
        self._dtypes = [
            tf.string.as_datatype_enum if specs[k].dtype.kind == "O" else tf.as_dtype(specs[k].dtype).as_datatype_enum
            for k in self._order
        ]
        self._ctx = context.context()
        self._ctx.ensure_initialized()
        self._record = record
        self._eager_tensor = ops.EagerTensor
        # What ConcreteFunction -> AtomicFunction.call_flat -> context.call_function end in, resolved once:
        # the function's op name, its output count and the call attributes (executor, config).
        from tensorflow.python.eager import execute

        self._executes = execute  # execute.execute is swapped when op callbacks are registered
        self._name = self._atomic.name.decode("utf-8")
        self._num_outputs = len(self._atomic.function_type.flat_outputs)
        self._attrs = tuple(itertools.chain(*self._ctx.function_call_options.as_attrs().items()))
        self._pack = self._atomic.function_type.pack_output

    def __call__(self, inputs: Mapping[str, np.ndarray]):
        if self._record.could_possibly_record():  # a gradient tape is watching: the ordinary call
            import tensorflow as tf

            return self._function(
                **{k: tf.constant(v, dtype=tf.string if v.dtype.kind in "OSU" else None) for k, v in inputs.items()}
            )
        device = self._ctx.device_name
        tensor = self._eager_tensor
        args = [tensor(inputs[k], device, d) for k, d in zip(self._order, self._dtypes)]
        args += self._captured
        try:
            flat = self._executes.execute(self._name, self._num_outputs, args, self._attrs, self._ctx)
        except Exception:  # again through call_flat, for TF's error message (it names the failing op)
            return self._atomic.call_preflattened(args)
        return self._pack(flat)


def _prebind(function, specs):
    try:
        return _PreboundCall(function, specs)
    except Exception:  # a function this TF version lays out differently: keep the ordinary call
        return None


class Servable:
    """A SavedModel version loaded with tf.saved_model.load; `run` calls one signature."""

    def __init__(self, model_name: str, version: int, path: str, tags: Sequence[str] = ("serve",)):
        import tensorflow as tf

        self.model_name = model_name
        self.version = version
        self.path = path
        self.tags = list(tags)
        self.meta_graph = read_meta_graph(path, self.tags)
        self._loaded = tf.saved_model.load(path, tags=self.tags)
        self.signatures: dict[str, Signature] = {}
        for name, sig_def in self.meta_graph.signature_def.items():
            if name not in self._loaded.signatures:
                continue  # e.g. the TF1 "__saved_model_init_op" entry
            self.signatures[name] = Signature(
                name=name,
                method_name=sig_def.method_name,
                inputs={k: _spec(k, v) for k, v in sig_def.inputs.items()},
                outputs={k: _spec(k, v) for k, v in sig_def.outputs.items()},
                proto=sig_def,
                function=self._loaded.signatures[name],
            )
            self.signatures[name].prebound = _prebind(self.signatures[name].function, self.signatures[name].inputs)
        self._lock = threading.Lock()
        self.runner: Callable | None = None  # set by the batching layer to route calls through it
        self.metrics = None  # the server's Metrics, for TF Serving's runtime_latency

    def signature(self, name: str) -> Signature:
        key = name or DEFAULT_SIGNATURE
        if key not in self.signatures:
            raise invalid(
                f'Serving signature name: "{key}" not found in signature def '
                f"(this model has: {', '.join(sorted(self.signatures)) or 'none'})",
            )
        return self.signatures[key]

    def check_inputs(self, signature: Signature, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Names, dtypes and shapes against the signature; TF Serving's wording for the name mismatch."""
        sent, wanted = set(inputs), set(signature.inputs)
        if sent != wanted:
            raise invalid(
                f"input size does not match signature: {len(sent)}!={len(wanted)} "
                f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(wanted))}}}). "
                f"Sent extra: {{{','.join(sorted(sent - wanted))}}}. "
                f"Missing but required: {{{','.join(sorted(wanted - sent))}}}."
            )
        checked = {}
        for key, array in inputs.items():
            spec = signature.inputs[key]
            array = np.asarray(array)
            if spec.dtype.kind == "O":
                if array.dtype.kind not in "OSU":
                    raise invalid(f"Input '{key}' expects dtype string but got {array.dtype}")
            elif array.dtype != spec.dtype:  # no silent casts, as in TF Serving
                raise invalid(f"Input '{key}' expects dtype {spec.dtype} but got {array.dtype}")
            if spec.shape is not None:
                ok = len(spec.shape) == array.ndim and all(d < 0 or d == a for d, a in zip(spec.shape, array.shape))
                if not ok:
                    want = "[" + ",".join("?" if d < 0 else str(d) for d in spec.shape) + "]"
                    raise invalid(
                        f"Input '{key}' has shape [{','.join(map(str, array.shape))}] but the signature "
                        f"'{signature.name}' expects {want}"
                    )
            checked[key] = array
        return checked

    def call(self, signature: Signature, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs the signature function directly (the batching layer calls this with merged inputs)."""
        import tensorflow as tf

        try:
            if signature.prebound is not None:
                result = signature.prebound(inputs)
            else:
                tensors = {
                    k: tf.constant(v, dtype=tf.string if v.dtype.kind in "OSU" else None) for k, v in inputs.items()
                }
                result = signature.function(**tensors)
            return {k: v.numpy() for k, v in result.items()}
        except ServingError:
            raise
        except Exception as e:
            raise from_exception(e) from None

    def run(self, signature: Signature, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Checked inputs in, all outputs out; goes through the batcher when batching is on."""
        checked = self.check_inputs(signature, inputs)
        if self.runner is not None:
            return self.runner(self, signature, checked)
        return self.call(signature, checked)

    def release(self) -> None:
        """Drops the loaded graph so its memory can be reclaimed."""
        self.signatures = {}
        self._loaded = None
