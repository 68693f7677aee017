"""TFRecord files and TF/TFX protos read without importing TensorFlow (which takes seconds to import).

The generated `_pb2` modules of TensorFlow, TF Serving and TFMA live inside packages whose
`__init__` imports `tensorflow`, so importing one costs the whole TF import. Their descriptors are
plain data, though: each `_pb2.py` holds its serialized FileDescriptorProto. `message_class` loads
those (and their dependencies) into a private descriptor pool, without executing the modules, and
returns ordinary protobuf message classes with the same fields. `tfrecords` reads TFRecord framing
(length, masked CRC32C of the length, data, masked CRC32C of the data) as TF's reader does, and
`make_ndarray` converts a TensorProto to numpy as `tf.make_ndarray` does.

Used by the read-only commands (`mlpipe models`, `lineage`, `monitor`) so they answer at once.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import os
import re
import struct
from pathlib import Path
from typing import Iterator

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory


class CorruptRecordError(Exception):
    """A TFRecord file's framing or checksum is wrong, or it ends inside a record (TF's DataLossError)."""


_SERIALIZED = re.compile(rb"AddSerializedFile\((b'(?:[^'\\]|\\.)*')\)", re.S)
_IMPORT = re.compile(rb"^from ([\w.]+) import (\w+_pb2) as ", re.M)


def _module_source(module: str) -> Path:
    """The file of a generated module such as 'tensorflow.core.framework.tensor_pb2', found without
    importing it or its packages."""
    top, _, rest = module.partition(".")
    spec = importlib.util.find_spec(top)  # a top-level lookup imports nothing
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"no package {top} for {module}")
    for location in spec.submodule_search_locations:
        candidate = Path(location, *rest.split(".")).with_suffix(".py")
        if candidate.is_file():
            return candidate
    raise ImportError(f"no generated module {module}")


@functools.lru_cache(maxsize=None)
def _pool() -> descriptor_pool.DescriptorPool:
    return descriptor_pool.DescriptorPool()


def _add_module(module: str, added: set[str]) -> None:
    """Adds the file descriptor of a generated module, after those of the modules it imports."""
    if module in added:
        return
    added.add(module)
    source = _module_source(module).read_bytes()
    match = _SERIALIZED.search(source)
    if match is None:
        raise ImportError(f"no serialized descriptor in {module}")
    for package, name in _IMPORT.findall(source[: match.start()]):
        _add_module(f"{package.decode()}.{name.decode()}", added)
    file_proto = descriptor_pb2.FileDescriptorProto.FromString(ast.literal_eval(match.group(1).decode("latin-1")))
    _pool().Add(file_proto)


_ADDED: set[str] = set()


@functools.lru_cache(maxsize=None)
def message_class(module: str, full_name: str):
    """The message class `full_name` (e.g. 'tensorflow.serving.PredictionLog') of the generated module
    `module` ('tensorflow_serving.apis.prediction_log_pb2'), built without importing that module's package."""
    _add_module(module, _ADDED)
    return message_factory.GetMessageClass(_pool().FindMessageTypeByName(full_name))


def _masked_crc(data: bytes) -> int:
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecords(path: str | os.PathLike, verify: bool = True) -> Iterator[bytes]:
    """The records of one (uncompressed) TFRecord file. Raises CorruptRecordError where the data is
    corrupted or truncated, after yielding the records before it (as TF's tf_record_iterator)."""
    with open(path, "rb") as f:
        offset = 0
        while True:
            header = f.read(12)
            if not header:
                return
            if len(header) < 12:
                raise CorruptRecordError(f"truncated record at {offset}")
            (length,) = struct.unpack("<Q", header[:8])
            if verify and struct.unpack("<I", header[8:])[0] != _masked_crc(header[:8]):
                raise CorruptRecordError(f"corrupted record at {offset}")
            data = f.read(length)
            footer = f.read(4)
            if len(data) < length or len(footer) < 4:
                raise CorruptRecordError(f"truncated record at {offset}")
            if verify and struct.unpack("<I", footer)[0] != _masked_crc(data):
                raise CorruptRecordError(f"corrupted record at {offset}")
            offset += 16 + length
            yield data


# TensorFlow's DataType enum values (tensorflow/core/framework/types.proto) and the TensorProto field
# that holds each one's values when tensor_content is empty.
_DTYPES = {
    1: ("float32", "float_val"),
    2: ("float64", "double_val"),
    3: ("int32", "int_val"),
    4: ("uint8", "int_val"),
    5: ("int16", "int_val"),
    6: ("int8", "int_val"),
    7: (object, "string_val"),
    9: ("int64", "int64_val"),
    10: ("bool", "bool_val"),
    17: ("uint16", "int_val"),
    22: ("uint32", "uint32_val"),
    23: ("uint64", "uint64_val"),
}


def make_ndarray(tensor):
    """A TensorProto as a numpy array, as tf.make_ndarray builds it (numeric, bool and string dtypes).
    Raises ValueError for other dtypes."""
    import numpy as np

    if tensor.dtype not in _DTYPES:
        raise ValueError(f"tensor dtype {tensor.dtype} is not supported")
    dtype, field = _DTYPES[tensor.dtype]
    shape = [d.size for d in tensor.tensor_shape.dim]
    num_elements = int(np.prod(shape, dtype=np.int64))
    if dtype is object:
        values = list(tensor.string_val)
        padding = num_elements - len(values)
        if padding > 0:
            values.extend([values[-1] if values else b""] * padding)
        return np.array(values, dtype=object).reshape(shape)
    if tensor.tensor_content:
        return np.frombuffer(tensor.tensor_content, dtype=dtype).copy().reshape(shape)
    values = np.fromiter(getattr(tensor, field), dtype=dtype)
    if values.size == 0:
        return np.zeros(shape, dtype)
    if values.size != num_elements:
        values = np.pad(values, (0, num_elements - values.size), "edge")
    return values.reshape(shape)
