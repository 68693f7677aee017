"""TF Serving's REST JSON mapping (util/json_tensor.cc): JSON <-> numpy arrays and tf.Examples.

Values are checked against the signature's dtypes the way TF Serving checks them, with the
same error wording, so clients see the same 400s for the same mistakes.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any, Mapping

import numpy as np

from serving.errors import invalid

try:  # a C JSON codec when the environment has one (it is in the lock as a dependency of the stack)
    import orjson as _orjson
except ImportError:  # pragma: no cover
    _orjson = None

B64_KEY = "b64"
BYTES_SUFFIX = "_bytes"

_INT_RANGES = {
    "int8": (-(2**7), 2**7 - 1),
    "uint8": (0, 2**8 - 1),
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}
# numpy dtype name -> TF's DataTypeString, for messages.
_TF_NAMES = {
    "float32": "float",
    "float64": "double",
    "float16": "half",
    "int8": "int8",
    "uint8": "uint8",
    "int16": "int16",
    "uint16": "uint16",
    "int32": "int32",
    "uint32": "uint32",
    "int64": "int64",
    "uint64": "uint64",
    "bool": "bool",
    "object": "string",
}


def tf_type_name(dtype: np.dtype) -> str:
    return _TF_NAMES.get(np.dtype(dtype).name, np.dtype(dtype).name)


def parse_body(body: bytes) -> dict:
    """Parses a request body; NaN and +/-Infinity are accepted, as in TF Serving."""
    if not body:
        raise invalid("JSON Parse error: The document is empty")
    if _orjson is not None:
        try:
            doc = _orjson.loads(body)
        except _orjson.JSONDecodeError:
            doc = None  # NaN/Infinity tokens, huge integers or a real error: json below decides, with its messages
        if isinstance(doc, dict):
            return doc
    try:
        doc = json.loads(body)
    except UnicodeDecodeError as e:
        raise invalid(f"JSON Parse error: Invalid encoding in string at offset: {e.start}") from None
    except json.JSONDecodeError as e:
        raise invalid(f"JSON Parse error: {e.msg} at offset: {e.pos}") from None
    except RecursionError:
        raise invalid("JSON Parse error: document nested too deeply") from None
    if not isinstance(doc, dict):
        raise invalid(f"JSON Value: {_short(doc)} Is not object")
    return doc


def signature_name(doc: Mapping[str, Any]) -> str:
    value = doc.get("signature_name", "")
    if not isinstance(value, str):
        raise invalid(
            f"JSON Value: {_short(doc)} not formatted correctly. 'signature_name' key must be a string value."
        )
    return value


def _short(value: Any, limit: int = 200) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _json_type(value: Any) -> str:
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(B64_KEY), str)


def _decode_b64(value: Any) -> bytes:
    if not _is_b64(value):
        raise invalid(f"JSON Value: {_short(value)} not formatted correctly for base64 data")
    text = value[B64_KEY]
    # Standard or web-safe alphabet, padding optional (what absl::Base64Unescape accepts).
    normalized = text.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(normalized + "=" * (-len(normalized) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise invalid("Unable to base64 decode") from None


def _type_error(value: Any, dtype: np.dtype) -> Exception:
    return invalid(
        f"JSON Value: {_short(value)} Type: {_json_type(value)} is not of expected type: {tf_type_name(dtype)}"
    )


def _to_float(value: float | int) -> float:
    try:
        return float(value)
    except OverflowError:  # an integer past the double range: rapidjson reads it as +/-inf
        return math.inf if value > 0 else -math.inf


def _convert_scalar(value: Any, dtype: np.dtype) -> Any:
    kind = dtype.kind
    if kind == "f":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(value, dtype)
        # Any JSON number is accepted and rounded to the dtype (json_tensor.cc AddValueToTensor, DT_FLOAT:
        # val.GetFloat()); TF Serving dropped its "without loss of precision" check in commit 57dac6cd.
        return _to_float(value)
    if kind in "iu":
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(value, dtype)
        lo, hi = _INT_RANGES[dtype.name]
        if not lo <= value <= hi:
            raise _type_error(value, dtype)
        return value
    if kind == "b":
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        return value
    if kind == "O":
        if isinstance(value, str):
            return value.encode("utf-8", "surrogatepass")
        if isinstance(value, dict):
            return _decode_b64(value)
        raise _type_error(value, dtype)
    raise invalid(f"Conversion of JSON Value: {_short(value)} to type: {tf_type_name(dtype)} is not supported")


def _dense_shape(value: Any) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value: Any, level: int, shape: list[int], dtype: np.dtype, out: list) -> None:
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise invalid(
                f"JSON Value: {_short(value)} found at incorrect level: {level + 1} in the JSON DOM. "
                f"Expected at level: {rank}"
            )
        if isinstance(value, dict) and dtype.kind != "O":
            raise _type_error(value, dtype)
        out.append(_convert_scalar(value, dtype))
        return
    if level >= rank:
        raise invalid(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise invalid(
            f"Encountered list at unexpected size: {len(value)} at level: {level} expected size: {shape[level]}"
        )
    for item in value:
        _fill(item, level + 1, shape, dtype, out)


def to_array(value: Any, dtype: np.dtype) -> np.ndarray:
    """A JSON value (scalar or nested lists) as a dense array of `dtype`; ragged lists are a 400."""
    dtype = np.dtype(dtype)
    shape = _dense_shape(value)
    flat: list = []
    try:
        _fill(value, 0, shape, dtype, flat)
    except RecursionError:
        raise invalid("JSON value is nested too deeply") from None
    if dtype.kind == "O":
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
    else:
        with np.errstate(over="ignore"):  # numbers past float32's range become +/-inf, as in TF Serving
            array = np.array(flat, dtype=dtype)
    return array.reshape(shape)


def predict_inputs(doc: Mapping[str, Any], input_dtypes: Mapping[str, np.dtype]) -> tuple[str, dict[str, np.ndarray]]:
    """Reads `instances` (row format) or `inputs` (columnar); returns (format, {input name: array})."""
    if not input_dtypes:
        raise invalid("Failed to get input map for signature")
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise invalid(
            f"JSON Value: {_short(doc)} Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist "
        )
    if has_instances:
        return "row", _from_instances(doc["instances"], input_dtypes, doc)
    if has_inputs:
        return "columnar", _from_inputs(doc["inputs"], input_dtypes)
    raise invalid("Missing 'inputs' or 'instances' key")


def _is_element_object(value: Any) -> bool:
    return isinstance(value, dict) and not _is_b64(value)


_SCALAR_TYPES = {"f": (float, int), "i": (int,), "u": (int,), "b": (bool,), "O": (str,)}


def _fast_column(values: list, dtype: np.dtype) -> np.ndarray | None:
    """A column of plain JSON scalars of the right type as an array, or None to take the checked path."""
    kind = dtype.kind
    allowed = _SCALAR_TYPES.get(kind)
    if allowed is None or not all(type(v) in allowed for v in values):  # type(): bools are not ints here
        return None
    if kind == "O":
        array = np.empty(len(values), dtype=object)
        array[:] = [v.encode("utf-8", "surrogatepass") for v in values]
        return array
    if kind in "iu":
        lo, hi = _INT_RANGES[dtype.name]
        if not (lo <= min(values) and max(values) <= hi):
            return None
    if kind == "f":
        with np.errstate(over="ignore"):  # past float32's range: +/-inf, as in TF Serving
            return np.array(values, dtype=dtype)
    return np.array(values, dtype=dtype)


def _fast_instances(instances: list, dtypes: Mapping[str, np.dtype]) -> dict[str, np.ndarray] | None:
    """Row format where every instance is an object of scalars with exactly the signature's inputs (the
    common case), converted with the dtypes resolved once: one array per dtype (all float inputs
    together, all int64 ones, ...), each input a row of it; None for anything else."""
    n = len(dtypes)
    for element in instances:
        if type(element) is not dict or len(element) != n:
            return None
    groups: dict[np.dtype, list[str]] = {}
    for name, dtype in dtypes.items():
        groups.setdefault(dtype, []).append(name)
    rows = len(instances)
    arrays: dict[str, np.ndarray] = {}
    try:
        for dtype, names in groups.items():
            block = _fast_column([element[name] for name in names for element in instances], dtype)
            if block is None:
                return None
            arrays.update(zip(names, block.reshape(len(names), rows)))
    except (KeyError, UnicodeEncodeError, OverflowError, ValueError):
        return None
    return {name: arrays[name] for name in dtypes}


def _from_instances(instances: Any, dtypes: Mapping[str, np.dtype], doc: Any) -> dict[str, np.ndarray]:
    if isinstance(instances, list) and instances and len(dtypes) > 1:
        fast = _fast_instances(instances, dtypes)
        if fast is not None:
            return fast
    if not isinstance(instances, list):
        raise invalid(f"JSON Value: {_short(doc)} Excepting 'instances' to be an list/array")
    if not instances:
        raise invalid(f"JSON Value: {_short(doc)} No values in 'instances' array")
    if not isinstance(instances[0], dict) and len(dtypes) > 1:
        raise invalid(
            "instances is a plain list, but expecting list of objects as multiple input tensors required as per tensorinfo_map"
        )
    objects = _is_element_object(instances[0])
    names = sorted(dtypes)
    columns: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for i, element in enumerate(instances):
        if objects:
            if not _is_element_object(element):
                raise invalid(f"Expecting object but got list at item {i} of input list")
            for key, value in element.items():
                if key not in dtypes:
                    raise invalid(
                        f"Failed to process element: {i} key: {key} of 'instances' list. "
                        f"Error: JSON object: does not have named input: {key}"
                    )
                columns[key].append(_instance_item(value, key, dtypes[key], columns[key], i))
            if set(element) != set(names):
                raise invalid(
                    f"Failed to process element: {i} of 'instances' list. JSON object: {_short(element)} "
                    f"keys must be equal to: {','.join(names)}"
                )
        else:
            if _is_element_object(element):
                raise invalid(f"Expecting value/list but got object at item {i} of input list")
            name = names[0]
            columns[name].append(_instance_item(element, name, dtypes[name], columns[name], i))
    return {name: np.stack(parts) for name, parts in columns.items()}


def _instance_item(value: Any, name: str, dtype: np.dtype, previous: list[np.ndarray], index: int) -> np.ndarray:
    try:
        array = to_array(value, dtype)
    except Exception as e:
        message = getattr(e, "message", str(e))
        raise invalid(f"Failed to process element: {index} key: {name} of 'instances' list. Error: {message}") from None
    if previous and previous[0].shape != array.shape:
        if previous[0].size != array.size:
            raise invalid(
                f"Failed to process element: {index} key: {name} of 'instances' list. "
                f"Error: Expecting tensor size: {previous[0].size} but got: {array.size}"
            )
        raise invalid(
            f"Failed to process element: {index} key: {name} of 'instances' list. Error: Expecting shape "
            f"[{','.join(map(str, previous[0].shape))}] but got: [{','.join(map(str, array.shape))}]"
        )
    return array


def _from_inputs(value: Any, dtypes: Mapping[str, np.dtype]) -> dict[str, np.ndarray]:
    if not isinstance(value, dict) or _is_b64(value):
        if len(dtypes) > 1:
            raise invalid(
                "inputs is a plain value/list, but expecting an object as multiple input tensors required as per tensorinfo_map"
            )
        name = next(iter(dtypes))
        return {name: to_array(value, dtypes[name])}
    arrays = {}
    for name in sorted(dtypes):
        if name not in value:
            raise invalid(f"Missing named input: {name} in 'inputs' object.")
        arrays[name] = to_array(value[name], dtypes[name])
    return arrays


# ---- responses ----------------------------------------------------------------------------------


def _float_values(array: np.ndarray) -> list:
    """Shortest decimal that round-trips the float32 value (0.2, not 0.20000000298), as TF Serving writes."""
    if array.dtype == np.float64:
        return array.tolist()
    texts = array.astype(np.float32).astype(str)
    floats = np.array([float(t) for t in texts.ravel()], dtype=object).reshape(array.shape)
    return floats.tolist()


def _string_value(value: bytes, as_b64: bool) -> Any:
    if not as_b64:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            pass  # Not text: JSON can only carry it as base64.
    return {B64_KEY: base64.b64encode(value).decode("ascii")}


def to_json_value(array: np.ndarray, name: str) -> Any:
    """A tensor as nested JSON lists; string tensors named `*_bytes` come out as {"b64": ...}."""
    array = np.asarray(array)
    kind = array.dtype.kind
    if kind == "f":
        return _float_values(array)
    if kind in "iub":
        return array.tolist()
    if kind in "OSU":
        as_b64 = name.endswith(BYTES_SUFFIX)
        flat = [_string_value(v if isinstance(v, bytes) else str(v).encode(), as_b64) for v in array.ravel().tolist()]
        out = np.empty(len(flat), dtype=object)
        out[:] = flat
        return out.reshape(array.shape).tolist()
    raise invalid(f"Failed to write JSON value for tensor type: {array.dtype}")


def predict_response(outputs: Mapping[str, np.ndarray], fmt: str) -> dict:
    """`predictions` (row format) or `outputs` (columnar); a single output is given without its name."""
    if not outputs:
        raise invalid("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    if fmt == "columnar":
        if len(names) == 1:
            return {"outputs": to_json_value(outputs[names[0]], names[0])}
        return {"outputs": {n: to_json_value(outputs[n], n) for n in names}}
    batch = None
    for name in names:
        shape = np.shape(outputs[name])
        if not shape:
            raise invalid(f"Tensor name: {name} has no shape information ")
        if batch is not None and shape[0] != batch:
            raise invalid(f"Tensor name: {name} has inconsistent batch size: {shape[0]} expecting: {batch}")
        batch = shape[0]
    values = {n: to_json_value(outputs[n], n) for n in names}
    if len(names) == 1:
        return {"predictions": values[names[0]]}
    return {"predictions": [{n: values[n][i] for n in names} for i in range(batch)]}


def dumps(doc: Any) -> bytes:
    if _orjson is not None:
        try:
            payload = _orjson.dumps(doc)
        except TypeError:  # e.g. integers past 64 bits
            payload = b"null"
        # orjson writes NaN and +/-inf as null; responses have no nulls of their own, so a null means
        # "write it again with json", which gives TF Serving's bare NaN / Infinity tokens.
        if b"null" not in payload:
            return payload
    return json.dumps(doc, allow_nan=True).encode("utf-8")


# ---- classify / regress examples ----------------------------------------------------------------


def _feature_kind_error(name: str, kind: str) -> Exception:
    return invalid(f"Unexpected element type in feature: {name} expecting type: {kind}")


def _add_to_feature(value: Any, name: str, lists: dict[str, list]) -> None:
    def kind(expected: str) -> list:
        present = [k for k, v in lists.items() if v]
        if present and present[0] != expected:
            raise _feature_kind_error(name, {"bytes": "bytes", "float": "float", "int64": "int64"}[present[0]])
        return lists[expected]

    if value is None or isinstance(value, list):
        raise invalid(f"Feature: {name} has element with unexpected JSON type: {_json_type(value)}")
    if isinstance(value, bool):
        kind("int64").append(1 if value else 0)
    elif isinstance(value, dict):
        if not _is_b64(value):
            raise invalid(f"Feature: {name} has element with unexpected JSON type: {_json_type(value)}")
        kind("bytes").append(_decode_b64(value))
    elif isinstance(value, str):
        kind("bytes").append(value.encode("utf-8", "surrogatepass"))
    elif isinstance(value, float):
        kind("float").append(value)  # rounded to float32 by the proto, as val.GetFloat() does (57dac6cd)
    else:
        target = kind("int64")
        if value > 2**63 - 1:
            raise invalid(f"Feature: {name} has uint64 element. Only int64 is supported.")
        if value < -(2**63):
            raise invalid(f"Feature: {name} has element out of the int64 range.")
        target.append(value)


def to_example(obj: Any):
    """A JSON object {feature: value or list} as a tf.train.Example (ints -> int64, decimals -> float)."""
    from tensorflow.core.example import example_pb2

    if not isinstance(obj, dict):
        raise invalid(f"Example must be JSON object but got JSON {_json_type(obj)}")
    example = example_pb2.Example()
    for name, content in obj.items():
        lists: dict[str, list] = {"bytes": [], "float": [], "int64": []}
        for value in content if isinstance(content, list) else [content]:
            _add_to_feature(value, name, lists)
        feature = example.features.feature[name]
        if lists["bytes"]:
            feature.bytes_list.value.extend(lists["bytes"])
        elif lists["float"]:
            feature.float_list.value.extend(lists["float"])
        elif lists["int64"]:
            feature.int64_list.value.extend(lists["int64"])
    return example


def classify_regress_input(doc: Mapping[str, Any], method: str):
    """`examples` (and optional `context`) of a :classify/:regress body as a tensorflow.serving.Input."""
    from tensorflow_serving.apis import input_pb2

    request_input = input_pb2.Input()
    if "context" in doc:
        request_input.example_list_with_context.context.CopyFrom(to_example(doc["context"]))
    if "examples" not in doc:
        raise invalid(
            f"JSON Value: {_short(doc)} When method is {method}, key 'examples' is expected and was not found"
        )
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise invalid(f"JSON Value: {_short(doc)} Expecting 'examples' value to be an list/array")
    if not examples:
        raise invalid(f"JSON Value: {_short(doc)} 'examples' value is an empty array")
    target = (
        request_input.example_list_with_context.examples if "context" in doc else request_input.example_list.examples
    )
    for obj in examples:
        target.add().CopyFrom(to_example(obj))
    return request_input


def classification_response(result) -> dict:
    """ClassificationResult as {"results": [[[label, score], ...], ...]}."""
    if not result.classifications:
        raise invalid("Cannot convert empty ClassificationResults to JSON")
    rows = []
    for classifications in result.classifications:
        scores = _float_values(np.array([c.score for c in classifications.classes], dtype=np.float32))
        rows.append([[c.label, s] for c, s in zip(classifications.classes, scores)])
    return {"results": rows}


def regression_response(result) -> dict:
    if not result.regressions:
        raise invalid("Cannot convert empty RegressionResults to JSON")
    return {"results": _float_values(np.array([r.value for r in result.regressions], dtype=np.float32))}
