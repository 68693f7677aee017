"""Checks the input data before a run, so that bad input fails with one clear line and runs nothing."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

CSV_PATTERN = "*.csv"


class InputDataError(ValueError):
    """The data directory or a CSV in it cannot be used; the message says what to do."""


def check_csv_dir(
    root: str | Path, expected_columns: Sequence[str], where: str = "models/features.py CSV_COLUMNS"
) -> list[Path]:
    """Returns the CSV files under `root` after checking each one's header against `expected_columns`."""
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
    for path in files:
        check_csv_header(path, expected_columns, where)
    return files


def check_csv_header(path: Path, expected_columns: Sequence[str], where: str = "models/features.py CSV_COLUMNS") -> None:
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            raise InputDataError(f"{path} is empty (expected a header row and data rows)")
        if next(reader, None) is None:
            raise InputDataError(f"{path} has a header but no data rows")
    missing = [c for c in expected_columns if c not in header]
    extra = [c for c in header if c not in expected_columns]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing column(s) {', '.join(missing)}")
        if extra:
            parts.append(f"unexpected column(s) {', '.join(extra)}")
        raise InputDataError(
            f"{path}: {'; '.join(parts)} (the columns come from {where})"
        )
