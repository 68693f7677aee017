"""Reads the Evaluator's TFMA output: each thresholded metric against its bound.

The output is read as TFMA's own loaders read it (the `metrics*` / `validations*` TFRecord files of
the evaluation directory), without importing TFMA or TensorFlow (pipeline/metadata/tfrecords.py), so the
commands that show metrics answer at once.
"""

from __future__ import annotations

import dataclasses
import glob
import math
import os
from typing import Iterator

_TFMA_PROTOS = "tensorflow_model_analysis.proto."


@dataclasses.dataclass
class ThresholdCheck:
    metric: str
    kind: str  # "value" or "change"
    value: float | None  # the candidate's value on the overall slice
    bound: float | None  # the value the metric had to reach; None when a change check had no baseline
    baseline: float | None = None
    passed: bool | None = None  # None: not applied (no baseline yet)

    def describe(self) -> str:
        value = "n/a" if self.value is None else f"{self.value:.4f}"
        if self.kind == "value":
            rule = f">= {self.bound:.4f} (value threshold)"
        elif self.baseline is None:
            rule = "no blessed baseline yet: change threshold not applied"
        else:
            rule = f">= {self.bound:.4f} (baseline {self.baseline:.4f} - tolerance)"
        verdict = {True: "pass", False: "FAIL", None: "skipped"}[self.passed]
        return f"{self.metric:<16} {value:>8}  {rule:<56} {verdict}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def describe_failure(metric: str, value: float | None, bound: float | None, baseline: float | None = None) -> str:
    """Why one threshold refused the candidate, e.g. 'auc 0.6012 < 0.7000 (baseline 0.7100 - tolerance 0.0100)'."""
    if value is None:
        return f"{metric} missing"
    text = f"{metric} {value:.4f} < {bound:.4f}"
    if baseline is not None:
        text += f" (baseline {baseline:.4f} - tolerance {baseline - bound:.4f})"
    return text


def _records(output_path: str, key: str) -> Iterator[bytes]:
    """The records of TFMA's output `key` ('metrics', 'validations') as tfma.load_metrics finds them:
    `<dir>/<key>*.tfrecord`, else `<dir>/<key>*`."""
    from pipeline.metadata.tfrecords import tfrecords

    if os.path.isdir(output_path):
        output_path = os.path.join(output_path, key)
    paths = glob.glob(glob.escape(output_path) + "*.tfrecord") or glob.glob(glob.escape(output_path) + "*")
    for path in paths:
        yield from tfrecords(path)


def load_metrics(eval_uri: str):
    """TFMA's MetricsForSlice records of an evaluation (tfma.load_metrics, without importing TFMA)."""
    from pipeline.metadata.tfrecords import message_class

    metrics_for_slice = message_class(
        _TFMA_PROTOS + "metrics_for_slice_pb2", "tensorflow_model_analysis.MetricsForSlice"
    )
    for record in _records(eval_uri, "metrics"):
        yield metrics_for_slice.FromString(record)


def overall_metrics(eval_uri: str) -> dict[tuple[str, str, bool], float]:
    """{(metric name, model name, is_diff): value} for the overall (unsliced) slice."""
    values = {}
    for per_slice in load_metrics(eval_uri):
        if per_slice.slice_key.single_slice_keys:
            continue
        for entry in per_slice.metric_keys_and_values:
            if entry.value.HasField("double_value"):
                key = (entry.key.name, entry.key.model_name, entry.key.is_diff)
                values[key] = entry.value.double_value.value
    return values


def validation_failures(eval_uri: str) -> list[str]:
    """TFMA's record of the thresholds that failed, one line each (empty when blessed)."""
    from pipeline.metadata.tfrecords import message_class

    validation_result = message_class(
        _TFMA_PROTOS + "validation_result_pb2", "tensorflow_model_analysis.ValidationResult"
    )
    records = list(_records(eval_uri, "validations"))
    if len(records) != 1:  # as tfma.load_validation_result
        raise ValueError(f"{len(records)} validation results in {eval_uri}, expected 1")
    result = validation_result.FromString(records[0])
    messages = []
    for per_slice in result.metric_validations_per_slice:
        where = (
            ", ".join(
                f"{k.column}={k.bytes_value.decode() if k.HasField('bytes_value') else k.int64_value or k.float_value}"
                for k in per_slice.slice_key.single_slice_keys
            )
            or "overall"
        )
        for failure in per_slice.failures:
            value = failure.metric_value.double_value.value
            messages.append(f"{failure.metric_key.name} = {value:.4f} on slice {where} {failure.message}".rstrip())
    return messages


# 95% confidence intervals of the headline metrics, from the rows the Evaluator scored (docs/performance.md).
_Z95 = 1.959963984540054


def wilson_interval(p: float, n: int, z: float = _Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion `p` observed on `n` rows (binary accuracy)."""
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def auc_interval(auc: float, positives: int, negatives: int, z: float = _Z95) -> tuple[float, float]:
    """Normal interval of a ROC AUC with Hanley & McNeil's (1982) standard error."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    variance = (auc * (1 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc)) / (
        positives * negatives
    )
    half = z * math.sqrt(max(variance, 0.0))
    return max(0.0, auc - half), min(1.0, auc + half)


def evaluated_rows(eval_uri: str, rows: int | None, population: int | None) -> dict:
    """{"rows", "population", "intervals": {metric: {"value", "low", "high", "method"}}} for the candidate's
    overall accuracy (binary or sparse categorical: Wilson) and auc (Hanley-McNeil, class balance from TFMA's mean_label)."""
    values = overall_metrics(eval_uri)
    candidate = "candidate" if any(model == "baseline" for _, model, _ in values) else ""
    n = rows if rows is not None else int(values.get(("example_count", candidate, False), 0))
    intervals = {}
    for name in ("binary_accuracy", "sparse_categorical_accuracy"):  # proportions of the rows
        accuracy = values.get((name, candidate, False))
        if n > 0 and accuracy is not None:
            low, high = wilson_interval(accuracy, n)
            intervals[name] = {"value": accuracy, "low": low, "high": high, "method": "wilson"}
    auc, mean_label = values.get(("auc", candidate, False)), values.get(("mean_label", candidate, False))
    if n > 0 and auc is not None and mean_label is not None:
        positives = round(mean_label * n)
        if 0 < positives < n:
            low, high = auc_interval(auc, positives, n - positives)
            intervals["auc"] = {"value": auc, "low": low, "high": high, "method": "hanley_mcneil"}
    return {"rows": n, "population": population if population is not None else n, "intervals": intervals}


def evaluated_line(evaluated: dict) -> str:
    """'Evaluated on N of M eval rows: auc 0.9483 (95% CI 0.9450-0.9516), ...'."""
    rows, population = evaluated["rows"], evaluated["population"]
    head = (
        f"Evaluated on all {rows} eval rows" if rows >= population else f"Evaluated on {rows} of {population} eval rows"
    )
    parts = [
        f"{name} {i['value']:.4f} (95% CI {i['low']:.4f}-{i['high']:.4f})"
        for name, i in sorted(evaluated["intervals"].items())
    ]
    return head + (": " + ", ".join(parts) if parts else "")
