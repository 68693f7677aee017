"""The verdict of every release gate, read back from ML Metadata (docs/release.md).

Gates, in the order a run applies them:
- ``evaluation``: TFMA's thresholds (the Evaluator's ModelBlessing): BLESSED, NOT_BLESSED, or
  UNVALIDATED when no threshold was configured (tfx#5148), with each metric, slice, value, bound
  and baseline behind it;
- ``infra_validation``: the candidate loaded and queried by mlpipe's server code (InfraBlessing,
  pipeline/dag/infra_validator.py): PASSED or FAILED;
- ``replay``: candidate vs the serving champion on the last logged requests (mlpipe.ReplayVerdict,
  pipeline/dag/replay_gate.py): PASSED, FAILED or SKIPPED;
- ``override``: `mlpipe bless --force` (an mlpipe.ForcedBlessing execution): FORCED, with who, when, why.

Every gate result is a dict with the same keys: gate, verdict, reasons (list of str), numbers
(dict), artifact_id, execution_id. `gate_results(store, run_id)` lists those of one run.
"""

from __future__ import annotations

import json

from pipeline.metadata import queries as metadata

EVALUATION, INFRA, REPLAY, OVERRIDE = "evaluation", "infra_validation", "replay", "override"
BLESSED, NOT_BLESSED, UNVALIDATED = "BLESSED", "NOT_BLESSED", "UNVALIDATED"
FORCED = "FORCED"
NODE_GATES = {"Evaluator": EVALUATION, "InfraValidator": INFRA, "ReplayGate": REPLAY}
GATE_OUTPUT_KEYS = {EVALUATION: "blessing", INFRA: "blessing", REPLAY: "verdict"}


def _json(text, default):
    try:
        return json.loads(text) if text else default
    except ValueError:
        return default


def recorded_gate(artifact, execution_id: int | None = None) -> dict:
    """The result an mlpipe gate recorded on its output artifact (InfraBlessing, ReplayVerdict)."""
    return {
        "gate": metadata.custom_property(artifact, "gate"),
        "verdict": metadata.custom_property(artifact, "verdict"),
        "reasons": _json(metadata.custom_property(artifact, "reasons"), []),
        "numbers": _json(metadata.custom_property(artifact, "numbers"), {}),
        "artifact_id": artifact.id,
        "execution_id": execution_id,
    }


def evaluation_verdict(evaluator_execution, blessing, eval_uri: str | None, checks: list | None = None) -> dict:
    """BLESSED / NOT_BLESSED / UNVALIDATED with the checks (metric, slice, value, bound, baseline).

    `checks`: registry.threshold_checks already read for this Evaluator (else they are read here)."""
    from pipeline.metadata import thresholds as registry

    rules = registry.recorded_thresholds(evaluator_execution)
    if checks is None:
        checks = registry.threshold_checks(evaluator_execution, eval_uri) if rules else []
    checks = [dict(c) for c in checks] if rules else []
    for check in checks:
        check["slice"] = "overall"  # mlpipe gates the overall slice only (pipeline/dag/pipeline.py eval_config)
    if not rules:
        verdict = UNVALIDATED
        reasons = ["no thresholds configured (evaluation.thresholds = false): metrics computed, nothing judged"]
    elif blessing is not None and metadata.custom_property(blessing, "blessed") == 1:
        verdict = BLESSED
        reasons = [registry.describe_check(c) + " on slice overall" for c in checks]
    else:
        verdict = NOT_BLESSED
        reasons = [registry.describe_check(c) + " on slice overall" for c in checks if c["passed"] is False]
    return {
        "gate": EVALUATION,
        "verdict": verdict,
        "reasons": reasons,
        "numbers": {"checks": checks},
        "artifact_id": blessing.id if blessing is not None else None,
        "execution_id": evaluator_execution.id,
    }


def forced_record(execution) -> dict:
    """An `mlpipe bless --force` execution as a gate result (verdict FORCED, who/when/why)."""
    props = {k: v.string_value for k, v in execution.custom_properties.items()}
    return {
        "gate": OVERRIDE,
        "verdict": FORCED,
        "reasons": [props.get("reason", "")],
        "numbers": {
            "user": props.get("user"),
            "time": props.get("time"),
            "run_id": props.get("run_id"),
            "version": int(props["version"]) if props.get("version") else None,
            "overridden": props.get("overridden"),
        },
        "artifact_id": None,
        "execution_id": execution.id,
    }


def forced_blessings(store, run_id: str | None = None) -> list[dict]:
    """Every `mlpipe bless --force`, oldest first (of one run's candidate when `run_id` is given)."""
    found = [forced_record(e) for e in metadata.executions_of_type(store, metadata.FORCED_BLESSING_EXECUTION_TYPE)]
    found = [f for f in found if run_id is None or f["numbers"]["run_id"] == run_id]
    return sorted(found, key=lambda f: f["execution_id"])


def _node_id(store, execution) -> str:
    for context in store.get_contexts_by_execution(execution.id):
        if context.type == "node":
            return context.name.rsplit(".", 1)[-1]
    return execution.type.rsplit(".", 1)[-1]


def gate_results(store, run_id: str, checks: list | None = None) -> list[dict]:
    """The verdict of each gate of run `run_id` (a pipeline run context name), in gate order, then overrides.

    A gate that did not run (disabled, or the run failed before it) is absent. `checks`: the
    Evaluator's threshold checks when the caller has read them already.
    """
    run = store.get_context_by_type_and_name("pipeline_run", run_id) if store is not None and run_id else None
    if run is None:
        return []
    results = {}
    for execution in sorted(store.get_executions_by_context(run.id), key=lambda e: e.id):
        gate = NODE_GATES.get(_node_id(store, execution))
        if gate is None:
            continue
        out = metadata.outputs(store, execution.id)
        artifacts = out.get(GATE_OUTPUT_KEYS[gate], [])
        if gate == EVALUATION:
            evaluations = out.get("evaluation", [])
            results[gate] = evaluation_verdict(
                execution, artifacts[0] if artifacts else None, evaluations[0].uri if evaluations else None, checks
            )
        elif artifacts:
            results[gate] = recorded_gate(artifacts[0], execution.id)
    ordered = [results[g] for g in (EVALUATION, INFRA, REPLAY) if g in results]
    return ordered + forced_blessings(store, run_id)


def describe(result: dict) -> str:
    """One line: 'replay: FAILED (mean |score delta| 0.21 > 0.1)'."""
    reasons = "; ".join(r for r in result["reasons"] if r)
    return f"{result['gate']}: {result['verdict']}" + (f" ({reasons})" if reasons else "")


def numbers_line(result: dict) -> str:
    """The numbers behind an infra or replay verdict, in one line ('' when there are none)."""
    n = result["numbers"]
    if result["gate"] == INFRA and n.get("signatures"):
        parts = [
            f"{s['signature']} {s['requests'] - s['errors']}/{s['requests']} ok"
            + (f", p95 {s['p95_ms']:.1f} ms" if s["p95_ms"] is not None else "")
            for s in n["signatures"]
        ]
        return f"load {n.get('load_seconds', 0):.1f} s; " + "; ".join(parts) + f" (budget {n['max_latency_ms']:g} ms)"
    if result["gate"] == REPLAY and n.get("mean_abs_delta") is not None:
        ratio = n.get("p95_latency_ratio")
        return (
            f"{n['examples']} examples of the last {n['requests']} requests vs version {n.get('champion_version')}: "
            f"mean |delta| {n['mean_abs_delta']:.4f} (max {n['max_mean_abs_delta']:g}), flipped "
            f"{n['flipped_fraction']:.2%} (max {n['max_flipped_fraction']:.0%}), p95 latency ratio "
            f"{'n/a' if ratio is None else format(ratio, '.2f')} (max {n['max_p95_latency_ratio']:g})"
        )
    return ""


def blocking(results: list[dict]) -> dict | None:
    """The first infra or replay gate that blocked the push (FAILED), if any."""
    return next((r for r in results if r["gate"] in (INFRA, REPLAY) and r["verdict"] == "FAILED"), None)
