"""Checks the input data before a run, so that bad input fails with one clear line and runs nothing.

One validator for `mlpipe run`, `mlpipe retrain` and `mlpipe ingest`: the header must name the
declared columns, and every value must parse as its column's declared type the way ExampleGen
encodes it (pipeline/dag/typed_csv.py); an empty cell is a missing value. The declared types come from
pipeline/dag/dataset.py `column_types(config)`, the one function every reader of them calls.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Mapping

# The CSV header check and its error live in data/ (the bottom layer, below data.spans and this module).
from data.csv_header import DEFAULT_WHERE, InputDataError, check_csv_header  # noqa: F401  (re-exported)

CSV_PATTERN = "*.csv"
TYPE_NAMES = ("int", "float", "string")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def parse_problem(value: str, kind: str) -> str | None:
    """Why `value` cannot be encoded as `kind` (what ExampleGen does: int(), float(), bytes), or None
    if it can. An empty cell is a missing value and always fine."""
    if value == "" or kind == "string":
        return None
    if kind == "int":
        try:
            number = int(value)
        except ValueError:
            return "is not an integer"
        return None if INT64_MIN <= number <= INT64_MAX else "is outside the int64 range"
    if kind == "float":
        try:
            float(value)
        except ValueError:
            return "is not a number"
        return None
    raise InputDataError(f"unknown column type {kind!r} (use one of {', '.join(TYPE_NAMES)})")


@dataclasses.dataclass
class BadRow:
    path: Path
    line: int  # 1-based line number in the file (the header is line 1)
    column: str | None  # None: the row has the wrong number of values
    value: str
    problem: str

    def describe(self) -> str:
        if self.column is None:
            return f"{self.path} line {self.line}: {self.problem}"
        return f"{self.path} line {self.line}, column {self.column}: {self.value!r} {self.problem}"


@dataclasses.dataclass
class DataCheck:
    """What the check found: the files, their data rows, and the rows ExampleGen will skip."""

    files: list[Path]
    rows: int = 0
    bad_rows: int = 0
    first_bad: BadRow | None = None

    def add(self, other: "DataCheck") -> None:
        self.files += [f for f in other.files if f not in self.files]
        self.rows += other.rows
        self.bad_rows += other.bad_rows
        self.first_bad = self.first_bad or other.first_bad


def check_csv_dir(
    root: str | Path, types: Mapping[str, str], max_bad_row_fraction: float = 0.0, where: str = DEFAULT_WHERE
) -> DataCheck:
    """Checks the CSV files a run reads under `root` (flat: every *.csv; span layout: the newest span)."""
    root = Path(root)
    if not root.is_dir():
        raise InputDataError(f"data directory {root} does not exist (set --data-root or data.root)")
    files = sorted(root.glob(CSV_PATTERN))
    if not files:  # span layout (data/spans.py): check the newest span, the one this run ingests
        from data import spans

        if spans.list_spans(root):
            files = sorted(spans.span_dir(root, spans.list_spans(root)[-1]).glob(CSV_PATTERN))
    if not files:
        raise InputDataError(f"data directory {root} has no {CSV_PATTERN} files (nor span-<N>/*.csv)")
    return check_csv_files(files, types, max_bad_row_fraction, where)


def check_csv_files(
    files: list[Path], types: Mapping[str, str], max_bad_row_fraction: float = 0.0, where: str = DEFAULT_WHERE
) -> DataCheck:
    """Header and values of each file; raises InputDataError naming the first bad value when more than
    `max_bad_row_fraction` of all data rows have one (0: any bad value)."""
    total = DataCheck(files=[])
    for path in files:
        check_csv_header(path, list(types), where)
        total.add(_check_values(Path(path), types, stop_at_first=max_bad_row_fraction <= 0))
        if total.bad_rows and max_bad_row_fraction <= 0:
            break
    if total.bad_rows > max_bad_row_fraction * total.rows:
        if max_bad_row_fraction <= 0:
            tail = "fix or remove the row (data.max_bad_row_fraction = 0 allows no bad rows)"
        else:
            tail = (
                f"fix or remove the rows ({total.bad_rows} of {total.rows} rows are bad; "
                f"data.max_bad_row_fraction = {max_bad_row_fraction:g} allows {int(max_bad_row_fraction * total.rows)})"
            )
        raise InputDataError(f"{total.first_bad.describe()}; {tail}")
    return total


def _check_values(path: Path, types: Mapping[str, str], stop_at_first: bool) -> DataCheck:
    result = DataCheck(files=[path])
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        kinds = [types[name] for name in header]
        for row in reader:
            if not row:  # a blank line: ExampleGen skips it too
                continue
            result.rows += 1
            bad = None
            if len(row) != len(header):
                bad = BadRow(path, reader.line_num, None, "", f"has {len(row)} values, the header has {len(header)}")
            else:
                for name, kind, value in zip(header, kinds, row):
                    problem = parse_problem(value, kind)
                    if problem:
                        bad = BadRow(path, reader.line_num, name, value, f"{problem} (declared {kind})")
                        break
            if bad:
                result.bad_rows += 1
                result.first_bad = result.first_bad or bad
                if stop_at_first:
                    break
    return result
