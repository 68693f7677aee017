"""Reading the request logs back: decoded raw features (and the model's score) of every logged example.

It decodes with serving's own request-log naming and Input parsing (serving/request_log.py,
serving/inference.py), so it sits in pipeline/dag, the lowest layer that may import serving/ and the one
the replay gate lives in; the monitor and the late-label join (pipeline/monitoring) read it from above.
The TFRecords themselves are read by pipeline/metadata/tfrecords.py, without TensorFlow."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

SCORE = "__score__"  # key of the model's logged score in a decoded row (None when the response has none)
SCORE_OUTPUT = "scores"  # the models' score output (models/model.py OUTPUT_KEY, serving's CLASSIFY_SCORES)


@dataclasses.dataclass
class Traffic:
    """Decoded requests: one dict of raw feature values per example, grouped by model version."""

    rows: dict[int, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)
    requests: dict[int, int] = dataclasses.field(default_factory=dict)
    skipped: list[dict[str, str]] = dataclasses.field(default_factory=list)  # unreadable files/records

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    def all_rows(self) -> list[dict[str, Any]]:
        return [row for version in sorted(self.rows) for row in self.rows[version]]


def _example_class():
    """tf.Example, without importing TensorFlow (pipeline/metadata/tfrecords.py)."""
    from pipeline.metadata.tfrecords import message_class

    return message_class("tensorflow.core.example.example_pb2", "tensorflow.Example")


def example_row(example) -> dict[str, Any]:
    row = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        values = list(getattr(feature, kind).value) if kind else []
        row[name] = values[0] if values else None
    return row


def _clean(value):
    """A tensor element as a plain value; '' and NaN (the raw signature's 'missing') become None."""
    if isinstance(value, bytes):
        return value or None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def decode_request(kind: str, request) -> list[dict[str, Any]]:
    """The examples of one logged request as {raw feature: value or None}.

    predict: one tensor per raw feature (the `serving_raw` signature), or one string tensor of
    serialized tf.Examples (`serving_default` through Predict); classify/regress: tf.Examples.
    """
    from pipeline.metadata.tfrecords import make_ndarray
    from serving.inference import serialized_examples

    example_class = _example_class()
    if kind in ("classify", "regress"):
        return [example_row(example_class.FromString(b)) for b in serialized_examples(request.input)]
    inputs = {name: make_ndarray(tensor) for name, tensor in request.inputs.items()}
    if len(inputs) == 1:
        ((name, array),) = inputs.items()
        if name in ("inputs", "examples") and array.dtype == object:
            return [example_row(example_class.FromString(b)) for b in array.reshape(-1)]
    columns = {name: array.reshape(-1) for name, array in inputs.items()}
    size = max((len(a) for a in columns.values()), default=0)
    return [{name: _clean(a[i]) if i < len(a) else None for name, a in columns.items()} for i in range(size)]


def decode_scores(kind: str, response, count: int) -> list[float | None]:
    """The model's score of each example of a logged response (the probability output), or Nones.

    classify: the last class's score of each classification (one score per example for the models'
    one-column `scores`); regress: the value; predict: the `scores` output (or the only one), one per row.
    """
    scores: list[float | None] = []
    if kind == "classify":
        scores = [float(c.classes[-1].score) if c.classes else None for c in response.result.classifications]
    elif kind == "regress":
        scores = [float(r.value) for r in response.result.regressions]
    elif response.outputs:
        from pipeline.metadata.tfrecords import make_ndarray

        name = SCORE_OUTPUT if SCORE_OUTPUT in response.outputs else next(iter(response.outputs))
        array = make_ndarray(response.outputs[name])
        if array.ndim == 2:
            array = array[:, -1]
        scores = [float(v) for v in array.reshape(-1)]
    if len(scores) != count:
        return [None] * count
    return scores


def read_traffic(log_dir: Path, since: float | None, until: float | None) -> Traffic:
    """The decoded requests logged in [since, until) under `log_dir`; unreadable parts are skipped and listed."""
    from google.protobuf.message import DecodeError

    from pipeline.metadata.tfrecords import CorruptRecordError, message_class, tfrecords
    from serving.request_log import log_files

    prediction_log = message_class("tensorflow_serving.apis.prediction_log_pb2", "tensorflow.serving.PredictionLog")
    traffic = Traffic()
    for path in log_files(str(log_dir)):
        bad_records = 0
        try:
            for raw in tfrecords(path):
                try:
                    record = prediction_log.FromString(raw)
                except DecodeError:
                    bad_records += 1
                    continue
                stamp = float(record.log_metadata.timestamp_secs)
                if (since is not None and stamp < since) or (until is not None and stamp >= until):
                    continue
                kind = record.WhichOneof("log_type")
                if kind not in ("predict_log", "classify_log", "regress_log"):
                    continue
                try:
                    rows = decode_request(kind[:-4], getattr(record, kind).request)
                    for row, score in zip(rows, decode_scores(kind[:-4], getattr(record, kind).response, len(rows))):
                        row[SCORE] = score
                except Exception:  # tensors or examples this decoder cannot read: count, go on
                    bad_records += 1
                    continue
                version = int(record.log_metadata.model_spec.version.value)
                traffic.rows.setdefault(version, []).extend(rows)
                traffic.requests[version] = traffic.requests.get(version, 0) + 1
        except CorruptRecordError as e:  # corrupted or truncated: keep what was read before it
            traffic.skipped.append({"path": path, "reason": f"corrupted TFRecord data ({e})"})
        except OSError as e:
            traffic.skipped.append({"path": path, "reason": f"{e.strerror or e}: {path}"})
        if bad_records:
            traffic.skipped.append({"path": path, "reason": f"{bad_records} record(s) are not readable PredictionLogs"})
    return traffic
