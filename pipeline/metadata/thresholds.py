"""The thresholds the Evaluator applied, read back from its recorded eval_config, with each metric's value
and verdict (`mlpipe runs`, `models`, `lineage`)."""

from __future__ import annotations

import json
import os
import re

from pipeline.config import THRESHOLD_METRICS, EvaluationConfig
from pipeline.metadata.snapshot import json_prop


def _metric_name(class_name: str, config_json: str | None) -> str:
    if config_json:
        try:
            name = json.loads(config_json).get("name")
            if name:
                return name
        except ValueError:
            pass
    for metric in THRESHOLD_METRICS:
        if metric.replace("_", "") == class_name.lower():
            return metric
    return class_name


def _get(d: dict, snake: str):
    """A field of proto JSON, written with either proto names (TFX does) or camelCase."""
    camel = re.sub(r"_([a-z])", lambda m: m.group(1).upper(), snake)
    return d.get(snake, d.get(camel))


def recorded_thresholds(evaluator_execution) -> list[dict]:
    """The thresholds in the Evaluator's recorded eval_config, one dict per rule."""
    eval_config = json_prop(evaluator_execution, "eval_config") or {}
    rules = []
    for spec in _get(eval_config, "metrics_specs") or []:
        for metric in spec.get("metrics", []):
            name = _metric_name(_get(metric, "class_name") or "", metric.get("config"))
            thresholds = [metric["threshold"]] if "threshold" in metric else []
            thresholds += [t.get("threshold", {}) for t in _get(metric, "per_slice_thresholds") or []]
            for threshold in thresholds:
                value = _get(threshold, "value_threshold")
                if value is not None:
                    rules.append(
                        {
                            "metric": name,
                            "kind": "value",
                            "lower_bound": _get(value, "lower_bound"),
                            "upper_bound": _get(value, "upper_bound"),
                        }
                    )
                change = _get(threshold, "change_threshold")
                if change is not None:
                    rules.append(
                        {
                            "metric": name,
                            "kind": "change",
                            "absolute": change.get("absolute"),
                            "relative": change.get("relative"),
                            "direction": change.get("direction"),
                        }
                    )
    return rules


def _metric_values(eval_uri: str) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TF's import chatter is not our output
    import logging

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    from pipeline.metadata import evaluation  # imports TFMA (slow): only when metrics are wanted

    try:
        return evaluation.overall_metrics(eval_uri)
    except Exception:  # a run that failed while writing its evaluation
        return {}


def rules_from_config(evaluation: EvaluationConfig) -> list[dict]:
    """The rules the eval spec made from this config (pipeline/dag/pipeline.py eval_config) applies, in the
    form recorded_thresholds() reads them back: the value threshold, then the change threshold."""
    return [
        {
            "metric": evaluation.value_metric,
            "kind": "value",
            "lower_bound": evaluation.value_lower_bound,
            "upper_bound": None,
        },
        {
            "metric": evaluation.change_metric,
            "kind": "change",
            "absolute": -evaluation.change_tolerance,
            "relative": None,
            "direction": "HIGHER_IS_BETTER",
        },
    ]


def check_rules(rules: list[dict], values: dict) -> list[dict]:
    """Each rule with the candidate's (and baseline's) value from TFMA's overall metrics, and the verdict
    (None: not applied, e.g. a change threshold with no baseline yet, or no value)."""
    has_baseline = any(model == "baseline" for _, model, _ in values)
    candidate = "candidate" if has_baseline else ""
    checks = []
    for rule in rules:
        value = values.get((rule["metric"], candidate, False))
        check = {
            "metric": rule["metric"],
            "kind": rule["kind"],
            "value": value,
            "bound": None,
            "baseline_value": None,
            "passed": None,
        }
        if rule["kind"] == "value":
            lower, upper = rule.get("lower_bound"), rule.get("upper_bound")
            check["bound"] = lower if lower is not None else upper
            if value is not None:
                check["passed"] = (lower is None or value >= lower) and (upper is None or value <= upper)
        else:
            baseline = values.get((rule["metric"], "baseline", False)) if has_baseline else None
            check["baseline_value"] = baseline
            absolute = rule.get("absolute")
            if baseline is not None and absolute is not None:
                higher = rule.get("direction", "HIGHER_IS_BETTER") != "LOWER_IS_BETTER"
                check["bound"] = baseline + absolute
                if value is not None:
                    check["passed"] = value >= check["bound"] if higher else value <= check["bound"]
        checks.append(check)
    return checks


def threshold_checks(evaluator_execution, eval_uri: str | None) -> list[dict]:
    """Each recorded threshold with the candidate's (and baseline's) value and the verdict."""
    return check_rules(recorded_thresholds(evaluator_execution), _metric_values(eval_uri) if eval_uri else {})


def config_threshold_checks(eval_uri: str, config: EvaluationConfig) -> list:
    """The config's thresholds (rules_from_config, the same rules the registry reads back from MLMD) against the
    Evaluator's output, as evaluation.ThresholdCheck."""
    from pipeline.metadata.evaluation import ThresholdCheck, overall_metrics

    checks = check_rules(rules_from_config(config), overall_metrics(eval_uri))
    return [
        ThresholdCheck(c["metric"], c["kind"], c["value"], c["bound"], c["baseline_value"], c["passed"]) for c in checks
    ]


def describe_check(check: dict) -> str:
    value = "n/a" if check["value"] is None else f"{check['value']:.4f}"
    if check["bound"] is None:
        rule = "no baseline: not applied" if check["kind"] == "change" else "no bound"
    elif check["kind"] == "change":
        rule = f">= {check['bound']:.4f} (baseline {check['baseline_value']:.4f} + change threshold)"
    else:
        rule = f">= {check['bound']:.4f}"
    verdict = {True: "pass", False: "FAIL", None: "skipped"}[check["passed"]]
    return f"{check['metric']} {value} {rule} {verdict}"
