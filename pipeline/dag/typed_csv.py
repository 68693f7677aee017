"""CsvExampleGen with declared column types (pipeline/dag/dataset.py column_types: config, pinned schema or default).

TFX's CsvExampleGen infers each column's type from the files of the current run. With spans, a
column that is empty in one span (no type) and holds integers in another gets different encodings
in different Examples artifacts, and a rolling window over them fails to parse. Declaring the types
makes every span encode alike. Only the type inference is replaced; reading, CSV parsing and the
conversion to tf.Example are TFX's own.
"""

import logging

import apache_beam as beam
from google.protobuf import struct_pb2
from tfx.components.example_gen import component
from tfx.components.example_gen.csv_example_gen import executor as csv_executor
from tfx.dsl.components.base import executor_spec
from tfx.dsl.io import fileio
from tfx.proto import example_gen_pb2
from tfx.types import standard_component_specs
from tfx.utils import io_utils, proto_utils
from tfx_bsl.coders import csv_decoder

from pipeline.dag import inputs
from pipeline.dag import tfx_api as tfx

_COLUMN_TYPES = {
    "int": csv_decoder.ColumnType.INT,
    "float": csv_decoder.ColumnType.FLOAT,
    "string": csv_decoder.ColumnType.STRING,
}
TYPES_KEY = "column_types"


def column_infos(column_names, column_types):
    unknown = [name for name in column_names if name not in column_types]
    if unknown:
        raise ValueError(f"no declared type for column(s) {', '.join(unknown)} (data.columns or data.schema)")
    return [csv_decoder.ColumnInfo(name, _COLUMN_TYPES[column_types[name]]) for name in column_names]


def types_config(column_types) -> example_gen_pb2.CustomConfig:
    """ExampleGen's custom_config carrying the column types (so they are part of its cache key)."""
    struct = struct_pb2.Struct()
    struct.update({TYPES_KEY: dict(sorted(column_types.items()))})
    config = example_gen_pb2.CustomConfig()
    config.custom_config.Pack(struct)
    return config


def types_from_exec_properties(exec_properties) -> dict:
    value = exec_properties.get(standard_component_specs.CUSTOM_CONFIG_KEY)
    config = value if isinstance(value, example_gen_pb2.CustomConfig) else example_gen_pb2.CustomConfig()
    if isinstance(value, str):
        proto_utils.json_to_proto(value, config)
    struct = struct_pb2.Struct()
    if not config.custom_config.Unpack(struct) or TYPES_KEY not in struct:
        raise ValueError("TypedCsvExampleGen needs the column types in its custom_config")
    return dict(struct[TYPES_KEY])


def row_parses(cells, kinds) -> bool:
    """False for a row ExampleGen cannot encode (a value not of its column's type, or the wrong number
    of values): such rows are skipped. mlpipe's input check (pipeline/dag/inputs.py) has already refused
    the data unless they are within data.max_bad_row_fraction."""
    if not cells:
        return True  # a blank line: TFX's converter skips it
    ok = len(cells) == len(kinds) and all(
        inputs.parse_problem(c.decode("utf-8", "replace") if isinstance(c, bytes) else str(c), kind) is None
        for c, kind in zip(cells, kinds)
    )
    if not ok:
        beam.metrics.Metrics.counter("mlpipe", "bad_rows_skipped").inc()
        logging.warning("ExampleGen: skipping a row with a value that does not parse as its column's type: %s", cells)
    return ok


class _TypedCsvToExample(csv_executor._CsvToExample):
    def __init__(self, exec_properties, split_pattern):
        super().__init__(exec_properties, split_pattern)
        self._column_types = types_from_exec_properties(exec_properties)

    def expand(self, pipeline):
        csv_files = fileio.glob(self._csv_pattern)
        if not csv_files:
            raise RuntimeError(f"Split pattern {self._csv_pattern} does not match any files.")
        column_names = io_utils.load_csv_column_names(csv_files[0])
        for csv_file in csv_files[1:]:
            if io_utils.load_csv_column_names(csv_file) != column_names:
                raise RuntimeError(f"Files in same split {self._csv_pattern} have different header.")
        infos = column_infos(column_names, self._column_types)
        return (
            pipeline
            | "CreateFilenames" >> beam.Create(csv_files)
            | "ReadFromText" >> beam.ParDo(csv_executor._ReadCsvRecordsFromTextFile())
            | "ParseCSVLine" >> beam.ParDo(csv_decoder.ParseCSVLine(delimiter=","))
            | "ExtractParsedCSVLines" >> beam.Keys()
            | "SkipBadRows" >> beam.Filter(row_parses, [self._column_types[name] for name in column_names])
            | "ToTFExample" >> beam.ParDo(csv_executor._ParsedCsvToTfExample(), infos)
        )


class TypedCsvExampleGenExecutor(csv_executor.Executor):
    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        return _TypedCsvToExample


class TypedCsvExampleGen(tfx.components.CsvExampleGen):
    """CsvExampleGen whose executor types the columns as `column_types` says ({column: int|float|string})."""

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(TypedCsvExampleGenExecutor)

    def __init__(self, column_types, **kwargs):
        # CsvExampleGen's own __init__ takes no custom_config; its base (FileBasedExampleGen) does.
        component.FileBasedExampleGen.__init__(self, custom_config=types_config(column_types), **kwargs)
