"""CsvExampleGen with declared column types (pipeline/inputs.py column_types()).

TFX's CsvExampleGen infers each column's type from the files of the current run. With spans, a
column that is empty in one span (no type) and holds integers in another gets different encodings
in different Examples artifacts, and a rolling window over them fails to parse. Declaring the types
makes every span encode alike. Only the type inference is replaced; reading, CSV parsing and the
conversion to tf.Example are TFX's own.
"""

import logging

import apache_beam as beam
from tfx import v1 as tfx
from tfx.components.example_gen.csv_example_gen import executor as csv_executor
from tfx.dsl.components.base import executor_spec
from tfx.dsl.io import fileio
from tfx.utils import io_utils
from tfx_bsl.coders import csv_decoder

from pipeline import inputs

_COLUMN_TYPES = {
    "int": csv_decoder.ColumnType.INT,
    "float": csv_decoder.ColumnType.FLOAT,
    "string": csv_decoder.ColumnType.STRING,
}


def column_infos(column_names):
    types = inputs.column_types()
    unknown = [name for name in column_names if name not in types]
    if unknown:
        raise ValueError(f"no declared type for column(s) {', '.join(unknown)} (models/features.py COLUMN_TYPES)")
    return [csv_decoder.ColumnInfo(name, _COLUMN_TYPES[types[name]]) for name in column_names]


def row_parses(cells, kinds) -> bool:
    """False for a row ExampleGen cannot encode (a value not of its column's type, or the wrong number
    of values): such rows are skipped. mlpipe's input check (pipeline/inputs.py) has already refused
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
    def expand(self, pipeline):
        csv_files = fileio.glob(self._csv_pattern)
        if not csv_files:
            raise RuntimeError(f"Split pattern {self._csv_pattern} does not match any files.")
        column_names = io_utils.load_csv_column_names(csv_files[0])
        for csv_file in csv_files[1:]:
            if io_utils.load_csv_column_names(csv_file) != column_names:
                raise RuntimeError(f"Files in same split {self._csv_pattern} have different header.")
        infos = column_infos(column_names)
        return (
            pipeline
            | "CreateFilenames" >> beam.Create(csv_files)
            | "ReadFromText" >> beam.ParDo(csv_executor._ReadCsvRecordsFromTextFile())
            | "ParseCSVLine" >> beam.ParDo(csv_decoder.ParseCSVLine(delimiter=","))
            | "ExtractParsedCSVLines" >> beam.Keys()
            | "SkipBadRows" >> beam.Filter(row_parses, [inputs.column_types()[name] for name in column_names])
            | "ToTFExample" >> beam.ParDo(csv_executor._ParsedCsvToTfExample(), infos)
        )


class TypedCsvExampleGenExecutor(csv_executor.Executor):
    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        return _TypedCsvToExample


class TypedCsvExampleGen(tfx.components.CsvExampleGen):
    """CsvExampleGen whose executor takes column types from models/features.py."""

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(TypedCsvExampleGenExecutor)
