"""Reads the Evaluator's TFMA output: each thresholded metric against its bound."""

from __future__ import annotations

import dataclasses

import tensorflow_model_analysis as tfma

from pipeline.config import EvaluationConfig


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


def overall_metrics(eval_uri: str) -> dict[tuple[str, str, bool], float]:
    """{(metric name, model name, is_diff): value} for the overall (unsliced) slice."""
    values = {}
    for per_slice in tfma.load_metrics(eval_uri):
        if per_slice.slice_key.single_slice_keys:
            continue
        for entry in per_slice.metric_keys_and_values:
            if entry.value.HasField("double_value"):
                key = (entry.key.name, entry.key.model_name, entry.key.is_diff)
                values[key] = entry.value.double_value.value
    return values


def threshold_checks(eval_uri: str, config: EvaluationConfig) -> list[ThresholdCheck]:
    """The config's thresholds (metadata/thresholds.py, the same rules the registry reads back from MLMD)
    against the Evaluator's output."""
    from pipeline.metadata import thresholds

    checks = thresholds.check_rules(thresholds.rules_from_config(config), overall_metrics(eval_uri))
    return [
        ThresholdCheck(c["metric"], c["kind"], c["value"], c["bound"], c["baseline_value"], c["passed"]) for c in checks
    ]


def validation_failures(eval_uri: str) -> list[str]:
    """TFMA's record of the thresholds that failed, one line each (empty when blessed)."""
    result = tfma.load_validation_result(eval_uri)
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
