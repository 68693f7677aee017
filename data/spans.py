"""Span tools: the data root's span layout, and splitting a CSV into spans by time.

Layout: ``<data root>/span-<N>/*.csv`` with N = 1, 2, 3, ... (no zero padding), oldest first.
CsvExampleGen reads it with the input pattern ``span-{SPAN}/*.csv`` and records the span number
on each Examples artifact. A data root with ``*.csv`` files directly in it is the flat layout
(one dataset, no spans); when it has both, the flat files win and the span directories are ignored.

This module imports neither TFX nor TensorFlow.
"""

from __future__ import annotations

import csv
import datetime
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from data.csv_header import check_csv_header  # the one header check; imports no TFX

SPAN_DIR_PREFIX = "span-"
SPAN_PATTERN = "span-{SPAN}/*.csv"  # TFX input pattern, relative to the data root
SPAN_CSV_GLOB = "span-*/*.csv"
SPAN_FILE = "data.csv"
PERIODS = ("month", "quarter")
_SPAN_DIR = re.compile(r"^span-([1-9][0-9]*)$")


class SpanError(ValueError):
    """Spans cannot be written or read as asked; the message says what to do."""


def span_dir(root: str | os.PathLike, span: int) -> Path:
    return Path(root) / f"{SPAN_DIR_PREFIX}{span}"


def list_spans(root: str | os.PathLike) -> list[int]:
    """Span numbers under `root` whose directory holds at least one *.csv, ascending."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _SPAN_DIR.match(child.name)
        if match and child.is_dir() and any(child.glob("*.csv")):
            found.append(int(match.group(1)))
    return sorted(found)


def uses_spans(root: str | os.PathLike) -> bool:
    """True for the span layout: no *.csv directly in `root`, and at least one span-<N>/ with CSVs."""
    root = Path(root)
    return root.is_dir() and not any(root.glob("*.csv")) and bool(list_spans(root))


def period_of(timestamp: int, by: str) -> tuple[int, int]:
    """(year, month) or (year, quarter) of a unix timestamp in seconds, in UTC."""
    moment = datetime.datetime.fromtimestamp(timestamp, tz=datetime.timezone.utc)
    if by == "month":
        return moment.year, moment.month
    if by == "quarter":
        return moment.year, (moment.month - 1) // 3 + 1
    raise SpanError(f"unknown period {by!r} (use one of {', '.join(PERIODS)})")


def period_label(period: tuple[int, int], by: str) -> str:
    year, part = period
    return f"{year}-{part:02d}" if by == "month" else f"{year}-Q{part}"


@dataclass
class PlannedSpan:
    span: int
    period: str  # "2014-03" or "2014-Q1"
    rows: int
    path: Path
    action: str = "write"  # write, overwrite, skip (exists)


def split_csv(
    source: str | os.PathLike,
    root: str | os.PathLike,
    *,
    by: str,
    timestamp_column: str,
    expected_columns: Sequence[str],
    first_span: int = 1,
    limit: int | None = None,
    next_spans: int | None = None,
    force: bool = False,
    dry_run: bool = False,
) -> list[PlannedSpan]:
    """Writes the rows of `source` as spans under `root`, one span per period, chronological.

    Periods present in the data get consecutive span numbers from `first_span` (empty periods are
    skipped, not numbered). `limit` writes only the first N spans; `next_spans` writes the N earliest
    spans that do not exist yet (replaying history a span at a time). An existing span is never
    overwritten unless `force`. Each span is written to a hidden temp dir and renamed into place.
    """
    if by not in PERIODS:
        raise SpanError(f"unknown period {by!r} (use one of {', '.join(PERIODS)})")
    if first_span < 1:
        raise SpanError(f"--first-span must be >= 1, got {first_span}")
    for name, value in (("--limit", limit), ("--next", next_spans)):
        if value is not None and value < 1:
            raise SpanError(f"{name} must be >= 1, got {value}")
    source = Path(source)
    if not source.is_file():
        raise SpanError(f"no such CSV file: {source}")
    check_csv_header(source, expected_columns)
    header, groups = _group_rows(source, by, timestamp_column)

    root = Path(root)
    plan = []
    for index, period in enumerate(sorted(groups)):
        span = first_span + index
        path = span_dir(root, span)
        exists = path.exists()
        action = "overwrite" if exists and force else "skip" if exists else "write"
        plan.append(PlannedSpan(span, period_label(period, by), len(groups[period]), path, action))
    if limit is not None:
        plan = plan[:limit]
    if next_spans is not None:
        plan = [p for p in plan if p.action == "write"][:next_spans]
    else:
        clashes = [p for p in plan if p.action == "skip"]
        if clashes:
            names = ", ".join(p.path.name for p in clashes[:5]) + (" ..." if len(clashes) > 5 else "")
            raise SpanError(
                f"{len(clashes)} span(s) already exist under {root} ({names}); "
                "pass --force to overwrite them or --next N to add only new spans"
            )
    if dry_run:
        return plan
    root.mkdir(parents=True, exist_ok=True)
    by_label = {period_label(period, by): rows for period, rows in groups.items()}
    for item in plan:
        _write_span(item.path, header, by_label[item.period])
    return plan


def _group_rows(source: Path, by: str, timestamp_column: str):
    groups: dict[tuple[int, int], list[list[str]]] = {}
    with open(source, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        if timestamp_column not in header:
            raise SpanError(
                f"{source}: no column {timestamp_column!r} to split the rows by; name the column of unix seconds "
                "with data.timestamp_column in the config or --timestamp-column"
            )
        column = header.index(timestamp_column)
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                timestamp = int(float(row[column]))
            except (ValueError, IndexError):
                raise SpanError(
                    f"{source} line {line}: {timestamp_column} must be unix seconds, got "
                    f"{row[column] if column < len(row) else ''!r}"
                ) from None
            groups.setdefault(period_of(timestamp, by), []).append(row)
    if not groups:
        raise SpanError(f"{source} has no data rows")
    return header, groups


def _write_span(path: Path, header: list[str], rows: Iterable[list[str]]) -> None:
    """Writes path/data.csv via a hidden temp dir and a rename, so a span appears whole or not at all."""
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with open(tmp / SPAN_FILE, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    if path.exists():  # --force: move the old span aside, then swap
        old = path.parent / f".old-{path.name}-{os.getpid()}"
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(path)
