"""The one CSV header check, shared by span writing (data/spans.py) and the pipeline's input checks.

It lives in data/, the bottom layer, so that data.spans and pipeline.dag.inputs both import it downward
(it was pipeline.dag.inputs <-> data.spans, an import circle). This module imports neither TFX nor TensorFlow.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

DEFAULT_WHERE = "models/features.py CSV_COLUMNS"  # where the expected columns come from, for messages


class InputDataError(ValueError):
    """The data directory or a CSV in it cannot be used; the message says what to do."""


def check_csv_header(path: Path, expected_columns: Sequence[str], where: str = DEFAULT_WHERE) -> None:
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
        raise InputDataError(f"{path}: {'; '.join(parts)} (the columns come from {where})")
