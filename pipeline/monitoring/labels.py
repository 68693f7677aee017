"""Late labels (`mlpipe monitor --labels`): the label files, the keyed predictions of the request logs, the join.

A label file is a CSV with a key column (`monitoring.label_key_column`, default `request_key`) and the
raw label column (`monitoring.label_column`, default the model's raw label, `tips`). An example's key
is the value of its feature `monitoring.request_key_feature` when that is set and the example has it,
else its request's key (serving/request_log.py: the client's `X-Request-Id`, or the generated one the
server answered with) for a one-example request, and `<request key>/<i>` (i from 0) for the i-th
example of a longer one. Nothing is dropped silently: every label row is matched, unmatched, a
duplicate, outside retention or missing its key/label, and each count is reported.
"""

from __future__ import annotations

import csv
import dataclasses
import re
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.monitoring.window import MonitorError

_GENERATED_KEY = re.compile(r"^([0-9a-f]{11})-[0-9a-f]{16}(?:/\d+)?$")  # serving/request_log.py new_request_key


@dataclasses.dataclass
class Prediction:
    key: str
    timestamp: float
    version: int
    row: dict[str, Any]  # raw features as logged
    score: float | None


@dataclasses.dataclass
class Labels:
    values: dict[str, str]  # key -> label cell (the first one seen)
    files: list[str]
    counts: dict[str, int]


def label_column(config: Config) -> str:
    return config.monitoring.label_column or config.model.raw_label_keys[0]


def read_labels(config: Config, path: Path) -> Labels:
    """The label rows of a CSV file or of every *.csv in a directory; bad files are one-line MonitorErrors."""
    files = [path] if path.is_file() else sorted(path.glob("*.csv")) if path.is_dir() else []
    if not files:
        raise MonitorError(f"no label CSV at {path}: give a CSV file or a directory of *.csv files")
    key_col, label_col = config.monitoring.label_key_column, label_column(config)
    values: dict[str, str] = {}
    counts = {"rows": 0, "duplicates": 0, "conflicting_duplicates": 0, "missing_key": 0, "missing_label": 0}
    for file in files:
        with open(file, newline="") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            for wanted, setting in ((key_col, "label_key_column"), (label_col, "label_column")):
                if wanted not in columns:
                    raise MonitorError(
                        f"{file} has no column {wanted!r} (monitoring.{setting}); its columns: "
                        f"{', '.join(columns) or 'none'}"
                    )
            for row in reader:
                counts["rows"] += 1
                key, label = (row.get(key_col) or "").strip(), (row.get(label_col) or "").strip()
                if not key:
                    counts["missing_key"] += 1
                elif not label:
                    counts["missing_label"] += 1
                elif key in values:
                    counts["duplicates"] += 1
                    counts["conflicting_duplicates"] += values[key] != label
                else:
                    values[key] = label
    return Labels(values, [str(f) for f in files], counts)


def example_keys(request_key: str, rows: list[dict], key_feature: str) -> list[str | None]:
    """Each example's key (module docstring); None when it has none."""
    keys: list[str | None] = []
    for i, row in enumerate(rows):
        value = row.get(key_feature) if key_feature else None
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        if value not in (None, ""):
            keys.append(str(value))
        elif not request_key:
            keys.append(None)
        else:
            keys.append(request_key if len(rows) == 1 else f"{request_key}/{i}")
    return keys


def keyed_predictions(config: Config, log_dir: Path) -> tuple[dict[str, list[Prediction]], dict[str, Any]]:
    """Every logged example with a key, by key; and counts of what was read (unkeyed examples, repeated keys)."""
    from pipeline.dag.request_logs import decode_request, decode_scores
    from serving.request_log import log_files, read_logs

    if not log_files(str(log_dir)):
        raise MonitorError(f"no request logs under {log_dir}: serve with --request_log_sampling_rate > 0 first")
    by_key: dict[str, list[Prediction]] = {}
    counts: dict[str, Any] = {"records": 0, "examples": 0, "unkeyed_examples": 0, "repeated_keys": 0, "bad_records": 0}
    oldest = None
    for record in read_logs(str(log_dir)):
        counts["records"] += 1
        oldest = record.timestamp if oldest is None else min(oldest, record.timestamp)
        try:
            rows = decode_request(record.kind, record.request)
            scores = decode_scores(record.kind, record.response, len(rows))
        except Exception:  # tensors this decoder cannot read: counted, not joined
            counts["bad_records"] += 1
            continue
        version = int(record.model_spec.version.value)
        for key, row, score in zip(
            example_keys(record.request_key, rows, config.monitoring.request_key_feature), rows, scores
        ):
            counts["examples"] += 1
            if key is None:
                counts["unkeyed_examples"] += 1
                continue
            if key in by_key:
                counts["repeated_keys"] += 1
            by_key.setdefault(key, []).append(Prediction(key, record.timestamp, version, row, score))
    counts["oldest_record"] = oldest
    return by_key, counts


def join(labels: Labels, predictions: dict[str, list[Prediction]], oldest_kept: float, oldest_logged: float | None):
    """(matched [(Prediction, label cell)], counts): a label joins every logged prediction of its key (a
    request answered by two versions, e.g. a re-sent one, counts for each) made at or after `oldest_kept`."""
    matched = []
    counts = {"matched": 0, "unmatched": 0, "outside_retention": 0}
    for key, label in labels.values.items():
        found = predictions.get(key, [])
        kept = [p for p in found if p.timestamp >= oldest_kept]
        if kept:
            counts["matched"] += 1
            matched += [(p, label) for p in kept]
            continue
        stamp = _GENERATED_KEY.match(key)
        made = int(stamp.group(1), 16) / 1000 if stamp else None  # a generated key says when it was made
        gone = made is not None and (made < oldest_kept or (oldest_logged is not None and made < oldest_logged))
        counts["outside_retention" if found or gone else "unmatched"] += 1
    return matched, counts
