"""Predict, Classify and Regress on one servable, with TF Serving's rules for each signature kind.

REST and gRPC both end here; warm-up replays logged requests through the same functions.
"""

from __future__ import annotations

import time
from typing import Mapping, Sequence

import numpy as np

from serving.errors import invalid
from serving.servable import CLASSIFY_METHOD, REGRESS_METHOD, Servable, Signature

CLASSIFY_INPUTS = "inputs"
CLASSIFY_CLASSES = "classes"
CLASSIFY_SCORES = "scores"
REGRESS_OUTPUTS = "outputs"


def predict(
    servable: Servable, signature_name: str, inputs: Mapping[str, np.ndarray], output_filter: Sequence[str] = ()
) -> tuple[Signature, dict[str, np.ndarray]]:
    signature = servable.signature(signature_name)
    wanted = list(output_filter)
    if len(set(wanted)) != len(wanted):
        duplicate = next(k for k in wanted if wanted.count(k) > 1)
        raise invalid(f"duplicate output tensor alias: {duplicate}")
    for key in wanted:
        if key not in signature.outputs:
            raise invalid(
                f"output tensor alias not found in signature: {key} Outputs expected to be in the set "
                f"{{{','.join(sorted(signature.outputs))}}}."
            )
    outputs = _run(servable, "Predict", signature, inputs)
    if wanted:
        outputs = {k: outputs[k] for k in wanted}
    return signature, outputs


def serialized_examples(request_input) -> list[bytes]:
    """tensorflow.serving.Input as serialized tf.Examples; context features are merged into each example."""
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        examples = [e.SerializeToString() for e in request_input.example_list.examples]
    elif kind == "example_list_with_context":
        context = request_input.example_list_with_context.context
        examples = []
        for example in request_input.example_list_with_context.examples:
            merged = type(example)()
            merged.CopyFrom(context)
            for name, feature in example.features.feature.items():
                merged.features.feature[name].CopyFrom(feature)
            examples.append(merged.SerializeToString())
    else:
        examples = []
    if not examples:
        raise invalid("Input is empty.")
    return examples


def _example_signature(servable: Servable, signature_name: str, method: str, kind: str) -> Signature:
    signature = servable.signature(signature_name)
    if signature.method_name != method:
        raise invalid(
            f"Expected {kind} signature method_name to be {method}. Was: {signature.method_name} "
            f"(use :predict for signature '{signature.name}')"
        )
    if len(signature.inputs) != 1:
        raise invalid("Expected one input Tensor.")
    spec = next(iter(signature.inputs.values()))
    if spec.dtype.kind != "O":
        raise invalid(f"Expected input Tensor of the {kind} signature to be DT_STRING (serialized tf.Example)")
    return signature


def _run(servable: Servable, api: str, signature: Signature, inputs) -> dict[str, np.ndarray]:
    """The model call, timed into TF Serving's runtime_latency when it succeeds (predict_util.cc:113)."""
    start = time.perf_counter()
    outputs = servable.run(signature, inputs)
    if servable.metrics is not None:
        servable.metrics.tf_serving.runtime(servable.model_name, api, time.perf_counter() - start)
    return outputs


def _run_examples(servable: Servable, api: str, signature: Signature, examples: list[bytes]) -> dict[str, np.ndarray]:
    key = next(iter(signature.inputs))
    batch = np.empty(len(examples), dtype=object)
    batch[:] = examples
    return _run(servable, api, signature, {key: batch})


def classify(servable: Servable, signature_name: str, request_input):
    """Returns (signature, ClassificationResult): one list of (label, score) per example."""
    from tensorflow_serving.apis import classification_pb2

    signature = _example_signature(servable, signature_name, CLASSIFY_METHOD, "classification")
    if len(signature.outputs) not in (1, 2) or not (
        CLASSIFY_CLASSES in signature.outputs or CLASSIFY_SCORES in signature.outputs
    ):
        raise invalid(
            f'Expected classification signature outputs to contain at least one of "{CLASSIFY_CLASSES}" or '
            f'"{CLASSIFY_SCORES}". Signature was: {sorted(signature.outputs)}'
        )
    examples = serialized_examples(request_input)
    outputs = _run_examples(servable, "Classify", signature, examples)
    classes, scores = outputs.get(CLASSIFY_CLASSES), outputs.get(CLASSIFY_SCORES)
    n = len(examples)
    for name, value in ((CLASSIFY_CLASSES, classes), (CLASSIFY_SCORES, scores)):
        if value is None:
            continue
        if value.ndim != 2:
            raise invalid(f"Expected Tensor shape: [batch_size num_classes] but got {list(value.shape)}")
        if value.shape[0] != n:
            raise invalid(f"Expected {name} output batch size of {n}, got {value.shape[0]}")
    if classes is not None and scores is not None and classes.shape != scores.shape:
        raise invalid(f"Tensors class and score should match in shape: {list(classes.shape)} vs {list(scores.shape)}")
    result = classification_pb2.ClassificationResult()
    width = (classes if classes is not None else scores).shape[1]
    for i in range(n):
        row = result.classifications.add()
        for j in range(width):
            item = row.classes.add()
            if classes is not None:
                label = classes[i, j]
                item.label = label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label)
            if scores is not None:
                item.score = float(scores[i, j])
    return signature, result


def regress(servable: Servable, signature_name: str, request_input):
    """Returns (signature, RegressionResult): one value per example."""
    from tensorflow_serving.apis import regression_pb2

    signature = _example_signature(servable, signature_name, REGRESS_METHOD, "regression")
    if REGRESS_OUTPUTS not in signature.outputs or len(signature.outputs) != 1:
        raise invalid(f'Expected one output Tensor named "{REGRESS_OUTPUTS}", found {sorted(signature.outputs)}')
    examples = serialized_examples(request_input)
    values = _run_examples(servable, "Regress", signature, examples)[REGRESS_OUTPUTS]
    n = len(examples)
    if not (values.shape == (n,) or values.shape == (n, 1)):
        raise invalid(
            f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got {list(values.shape)}"
        )
    result = regression_pb2.RegressionResult()
    for value in values.reshape(n):
        result.regressions.add().value = float(value)
    return signature, result


def signature_def_map(servable: Servable):
    from tensorflow_serving.apis import get_model_metadata_pb2

    message = get_model_metadata_pb2.SignatureDefMap()
    for name, signature in servable.meta_graph.signature_def.items():
        if name in servable.signatures:
            message.signature_def[name].CopyFrom(signature)
    return message


# DataType -> (TensorProto value field, numpy dtype) for the common input types (types.proto numbers).
_VALUE_FIELDS = {
    1: ("float_val", np.dtype(np.float32)),  # DT_FLOAT
    2: ("double_val", np.dtype(np.float64)),  # DT_DOUBLE
    3: ("int_val", np.dtype(np.int32)),  # DT_INT32
    9: ("int64_val", np.dtype(np.int64)),  # DT_INT64
    7: ("string_val", np.dtype(object)),  # DT_STRING
    10: ("bool_val", np.dtype(bool)),  # DT_BOOL
}


def _block(values, dtype: np.dtype) -> np.ndarray:
    """A flat array of a repeated field's values (strings as Python objects)."""
    if dtype.kind == "O":
        block = np.empty(len(values), dtype=object)
        block[:] = values
        return block
    return np.array(values, dtype=dtype)


def _fast_tensor_to_array(tensor_proto) -> np.ndarray | None:
    """tf.make_ndarray's answer for a fully given tensor of a common type, without its per-call overhead;
    None for anything else (repeated-last-value fill, unknown rank, other types)."""
    spec = _VALUE_FIELDS.get(tensor_proto.dtype)
    shape_proto = tensor_proto.tensor_shape
    if spec is None or shape_proto.unknown_rank:
        return None
    field, dtype = spec
    shape = [d.size for d in shape_proto.dim]
    if any(d < 0 for d in shape):
        return None
    n = 1
    for d in shape:
        n *= d
    if tensor_proto.tensor_content:
        if dtype.kind == "O" or len(tensor_proto.tensor_content) != n * dtype.itemsize:
            return None
        return np.frombuffer(tensor_proto.tensor_content, dtype=dtype).copy().reshape(shape)
    values = getattr(tensor_proto, field)
    if len(values) != n:
        return None
    return _block(list(values), dtype).reshape(shape)  # list(): numpy reads a repeated field slowly


def _grouped_arrays(inputs) -> dict[str, np.ndarray] | None:
    """A request's tensors when every one is of a common type with its values in the typed field and all
    tensors of a dtype share a shape (a request's usual form): each dtype's values are gathered in one
    pass and converted as one block, each input a row of it, which is what `tensor_to_array` would give
    tensor by tensor at a third of the cost; None for anything else."""
    groups: dict[int, tuple[list, list, tuple]] = {}
    order = []
    for name, tensor in inputs.items():
        enum = tensor.dtype
        spec = _VALUE_FIELDS.get(enum)
        if spec is None or tensor.tensor_content:
            return None
        shape_proto = tensor.tensor_shape
        dims = shape_proto.dim
        if not dims:  # a scalar: per tensor, as a 0-d array
            return None
        if len(dims) == 1:
            shape = (dims[0].size,)
            n = shape[0]
        else:
            shape = tuple([d.size for d in dims])
            n = 1
            for d in shape:
                n *= d
        if shape_proto.unknown_rank or n < 0 or any(d < 0 for d in shape):
            return None
        values = getattr(tensor, spec[0])
        if len(values) != n:
            return None
        group = groups.get(enum)
        if group is None:
            group = groups[enum] = ([], [], shape)
        elif group[2] != shape:
            return None
        group[0].append(name)
        group[1].extend(values)
        order.append(name)
    arrays = {}
    for enum, (names, values, shape) in groups.items():
        block = _block(values, _VALUE_FIELDS[enum][1])
        arrays.update(zip(names, block.reshape((len(names), *shape))))
    return {name: arrays[name] for name in order}


def request_arrays(inputs) -> dict[str, np.ndarray]:
    """A PredictRequest's `inputs` map as {name: array}, in the map's order."""
    grouped = _grouped_arrays(inputs)
    if grouped is not None:
        return grouped
    return {k: tensor_to_array(v) for k, v in inputs.items()}


def tensor_to_array(tensor_proto) -> np.ndarray:
    import tensorflow as tf

    fast = _fast_tensor_to_array(tensor_proto)
    if fast is not None:
        return fast
    try:
        return tf.make_ndarray(tensor_proto)
    except Exception as e:  # a TensorProto whose content does not match its shape or dtype
        raise invalid(f"Invalid TensorProto: {e}") from None


_OUTPUT_FIELDS = {dtype: (enum, field) for enum, (field, dtype) in _VALUE_FIELDS.items() if dtype.kind != "O"}


def _fast_array_to_tensor(array: np.ndarray):
    """A numeric output as a TensorProto with its values in the typed field (float_val, int64_val, ...),
    the way TF Serving writes outputs (Tensor::AsProtoField), without tf.make_tensor_proto's per-call
    overhead; None for other dtypes."""
    spec = _OUTPUT_FIELDS.get(array.dtype)
    if spec is None:
        return None
    from tensorflow.core.framework import tensor_pb2

    enum, field = spec
    proto = tensor_pb2.TensorProto(dtype=enum)
    for d in array.shape:
        proto.tensor_shape.dim.add().size = d
    getattr(proto, field).extend(array.ravel().tolist())
    return proto


def array_to_tensor(array: np.ndarray):
    import tensorflow as tf

    array = np.asarray(array)
    fast = _fast_array_to_tensor(array)
    if fast is not None:
        return fast
    if array.dtype.kind in "OSU":
        return tf.make_tensor_proto(array, dtype=tf.string)
    return tf.make_tensor_proto(array)


def predict_from_proto(servable: Servable, request):
    """A PredictRequest run on `servable`; returns a PredictResponse (model_spec filled)."""
    from tensorflow_serving.apis import predict_pb2

    inputs = request_arrays(request.inputs)
    signature, outputs = predict(servable, request.model_spec.signature_name, inputs, list(request.output_filter))
    response = predict_pb2.PredictResponse()
    fill_model_spec(response.model_spec, servable, signature.name)
    for key, value in outputs.items():
        response.outputs[key].CopyFrom(array_to_tensor(value))
    return response


def classify_from_proto(servable: Servable, request):
    from tensorflow_serving.apis import classification_pb2

    signature, result = classify(servable, request.model_spec.signature_name, request.input)
    response = classification_pb2.ClassificationResponse()
    fill_model_spec(response.model_spec, servable, signature.name)
    response.result.CopyFrom(result)
    return response


def regress_from_proto(servable: Servable, request):
    from tensorflow_serving.apis import regression_pb2

    signature, result = regress(servable, request.model_spec.signature_name, request.input)
    response = regression_pb2.RegressionResponse()
    fill_model_spec(response.model_spec, servable, signature.name)
    response.result.CopyFrom(result)
    return response


def multi_inference(servable: Servable, request):
    """A MultiInferenceRequest: classify/regress tasks over one Input, on one model (multi_inference.cc Infer).

    The checks and their wording follow TF Serving; each task is one model call here (TF Serving runs
    the union of their outputs in one Session::Run), which gives the same results.
    """
    from tensorflow_serving.apis import inference_pb2

    from serving.errors import Code, ServingError
    from serving.servable import DEFAULT_SIGNATURE

    seen = set()
    for task in request.tasks:
        if not task.model_spec.name:
            raise invalid("Found ModelSpec with an empty model name.")
        if task.model_spec.name != servable.model_name:
            raise invalid("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
        signature_name = task.model_spec.signature_name or DEFAULT_SIGNATURE
        if signature_name in seen:
            raise invalid(f"Duplicate evaluation of signature: {signature_name}")
        seen.add(signature_name)
        if signature_name not in servable.signatures:
            raise invalid(f"Requested signature not found in model graph: {signature_name}")
        if task.method_name not in (CLASSIFY_METHOD, REGRESS_METHOD):
            raise ServingError(Code.UNIMPLEMENTED, f"Unsupported signature method_name: {task.method_name}")
    response = inference_pb2.MultiInferenceResponse()
    for task in request.tasks:
        result = response.results.add()
        if task.method_name == CLASSIFY_METHOD:
            signature, classification = classify(servable, task.model_spec.signature_name, request.input)
            result.classification_result.CopyFrom(classification)
        else:
            signature, regression = regress(servable, task.model_spec.signature_name, request.input)
            result.regression_result.CopyFrom(regression)
        fill_model_spec(result.model_spec, servable, signature.name)
    return response


def fill_model_spec(model_spec, servable: Servable, signature_name: str | None = None) -> None:
    model_spec.name = servable.model_name
    model_spec.version.value = servable.version
    if signature_name is not None:
        model_spec.signature_name = signature_name


WARMUP_FILE = ("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000


def warm_up(servable: Servable, iterations: int = 1) -> int:
    """Replays assets.extra/tf_serving_warmup_requests (TFRecord of PredictionLog); returns requests run.

    Any failing record fails the load, as in TF Serving, so a version never serves cold or broken.
    """
    import os

    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = os.path.join(servable.path, *WARMUP_FILE)
    if not os.path.isfile(path):
        return 0
    count = 0
    for record in tf.compat.v1.io.tf_record_iterator(path):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(record)
        kind = log.WhichOneof("log_type")
        if count >= MAX_WARMUP_RECORDS:
            raise ValueError(f"{path} has more than {MAX_WARMUP_RECORDS} warm-up records")
        for _ in range(max(1, iterations)):
            if kind == "predict_log":
                predict_from_proto(servable, log.predict_log.request)
            elif kind == "classify_log":
                classify_from_proto(servable, log.classify_log.request)
            elif kind == "regress_log":
                regress_from_proto(servable, log.regress_log.request)
            else:
                raise ValueError(
                    f"unsupported warm-up record type {kind!r} in {path} (use predict, classify or regress logs)"
                )
        count += 1
    return count
