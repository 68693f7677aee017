"""What a pipeline run did, read back from MLMD: the run's summary and the lines `mlpipe run` prints of it."""

from __future__ import annotations

import dataclasses

from pipeline.config import Config
from pipeline.metadata import queries as metadata


@dataclasses.dataclass
class ComponentResult:
    node_id: str
    state: str  # ran, cached, failed, ... (metadata.STATE_NAMES)
    seconds: float


@dataclasses.dataclass
class RunSummary:
    run_id: str | None
    seconds: float
    completed: bool
    components: list[ComponentResult] = dataclasses.field(default_factory=list)
    blessed: bool | None = None
    checks: list = dataclasses.field(default_factory=list)  # evaluation.ThresholdCheck
    validation_failures: list = dataclasses.field(default_factory=list)  # TFMA's, one line each
    pushed_version: str | None = None
    pushed_path: str | None = None
    failed_component: str | None = None
    error: str | None = None
    warm_start: dict | None = None  # the Trainer's warm-start report (models/model.py warm_start), if it warm-started
    serving_contract: str | None = None  # what the pushed model's signatures are (README: the contract)
    release: dict | None = None  # release.mode's decision on the pushed version (pipeline/publish/approvals.py)
    report: str | None = None  # the run's release report (pipeline/monitoring/release_report.py)
    verdict: str | None = None  # BLESSED / NOT_BLESSED / UNVALIDATED (pipeline/metadata/verdicts.py)
    gates: list = dataclasses.field(default_factory=list)  # every gate's result (verdicts.gate_results)
    # The rows the Evaluator scored and the 95% intervals of its headline metrics (evaluation.evaluated_rows).
    evaluated: dict | None = None

    @property
    def fully_cached(self) -> bool:
        return bool(self.components) and all(
            c.state == "cached" for c in self.components if not c.node_id.endswith("_resolver")
        )

    @property
    def blocked_by(self) -> dict | None:
        """The infra or replay gate that kept a blessed candidate from being pushed."""
        from pipeline.metadata import verdicts

        return verdicts.blocking(self.gates)

    @property
    def outcome(self) -> str:
        if not self.completed:
            return "failed"
        if self.pushed_version:
            return "pushed"
        return "not_blessed" if self.blessed is False else "not_pushed"

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["outcome"] = self.outcome
        data["fully_cached"] = self.fully_cached
        return data

    def lines(self) -> list[str]:
        if not self.completed:
            where = f" at {self.failed_component}" if self.failed_component else ""
            return [f"Result: FAILED{where}: {self.error}", "Nothing was pushed."]
        cached = " (fully cached: nothing changed since the last run)" if self.fully_cached else ""
        if self.pushed_version and self.fully_cached:
            head = f"Result: BLESSED, already pushed as version {self.pushed_version}{cached}"
        elif self.pushed_version:
            head = f"Result: BLESSED and pushed as version {self.pushed_version}"
        elif self.blessed and self.blocked_by:
            b = self.blocked_by
            head = f"Result: BLESSED, but NOT PUSHED: {b['gate']} {b['verdict']}: {'; '.join(b['reasons'])}{cached}"
        elif self.blessed:
            head = f"Result: BLESSED, but nothing was pushed{cached}"
        elif self.verdict == "UNVALIDATED":
            head = (
                f"Result: UNVALIDATED (no thresholds configured), nothing pushed; "
                f"`mlpipe bless --force {self.run_id} --reason TEXT` pushes it{cached}"
            )
        else:
            failed = [c for c in self.checks if c.passed is False]
            from pipeline.metadata.evaluation import describe_failure

            reason = "; ".join(describe_failure(c.metric, c.value, c.bound, c.baseline) for c in failed)
            head = f"Result: NOT BLESSED, nothing pushed ({reason or 'thresholds not met'}){cached}"
        lines = [head] + [f"  {c.describe()}" for c in self.checks]
        if self.evaluated:
            from pipeline.metadata.evaluation import evaluated_line

            lines.append(evaluated_line(self.evaluated))
        lines += gate_lines(self.gates)
        if self.warm_start:
            lines += warm_start_lines(self.warm_start)
        if not self.blessed and self.validation_failures:
            lines += ["TFMA validation failures:"] + [f"  {m}" for m in self.validation_failures]
        if self.pushed_path:
            lines.append(f"Pushed model: {self.pushed_path}")
            if self.serving_contract:
                lines.append(f"Signatures: {self.serving_contract}")
        if self.release and self.release.get("status") != "auto":
            lines.append(release_line(self.release))
        if self.report:
            lines.append(f"Release report: {self.report}")
        return lines


def release_line(release: dict) -> str:
    if release.get("error"):
        return f"Release: FAILED: {release['error']}"
    status = release.get("decision") or release.get("status")
    if status == "pending":
        return f"Release: version {release['version']} is held (release.mode = manual): `mlpipe approve {release['version']} --reason TEXT` serves it"
    if status == "canary":
        return (
            f"Release: version {release['version']} is the canary ({release['canary_weight']}% of unlabelled traffic, "
            f"traffic.json); `mlpipe approve {release['version']} --reason TEXT` makes it stable"
        )
    return f"Release: version {release['version']} {status}: {release.get('reason')}"


def gate_lines(gates: list[dict]) -> list[str]:
    """'Gates:' and one line per gate (with the numbers behind infra and replay verdicts)."""
    from pipeline.metadata import verdicts

    if not gates:
        return []
    lines = ["Gates:"]
    for gate in gates:
        lines.append(f"  {verdicts.describe(gate)}")
        numbers = verdicts.numbers_line(gate)
        if numbers:
            lines.append(f"    {numbers}")
    return lines


def warm_start_lines(report: dict) -> list[str]:
    """What the Trainer carried over from the base model, and what it could not."""

    def loss(key):
        return "n/a" if report.get(key) is None else f"{report[key]:.4f}"

    lines = [
        f"Warm start: {len(report['carried'])} weights carried over from {report['base_model']}"
        + (", all of them" if not report["not_carried"] else "")
    ]
    lines.append(
        f"  loss before training {loss('loss_warm')} (cold start {loss('loss_cold')}; "
        f"the base model's final loss {loss('base_final_loss')})"
    )
    new = {k: v["new"] for k, v in report.get("vocabularies", {}).items() if v["new"]}
    if new:
        lines.append("  new in this window (fresh rows): " + ", ".join(f"{k} {n} token(s)" for k, n in new.items()))
    for item in report["not_carried"]:
        lines.append(f"  not carried over: {item['weight']} ({item['reason']})")
    return lines


def _training_report(store, trainer_execution_id: int) -> dict:
    """The Trainer's TRAINING_REPORT (models/model.py writes it) from its model_run directory ({} if none)."""
    import json
    import os

    from models import TRAINING_REPORT  # not models.model: that imports Keras and tf.Transform

    for model_run in metadata.outputs(store, trainer_execution_id).get("model_run", []):
        try:
            with open(os.path.join(model_run.uri, TRAINING_REPORT)) as f:
                return json.load(f)
        except (OSError, ValueError):
            pass
    return {}


def contract_description(config: Config) -> str:
    m = config.model
    if not m.serving_contract:
        return "as run_fn exported them (model.serving_contract = false: no serving_raw unless run_fn made one)"
    method = "classify" if m.task == "classification" else "regress"
    return f"serving_default ({method}, output {m.evaluated_output}), serving_raw, transform_features"


def summarize(config: Config, started: float, seconds: float) -> RunSummary:
    """Builds the run's summary from MLMD: the newest run that began after `started`."""
    from pipeline.metadata import evaluation, thresholds

    store = metadata.open_store(config)
    runs = metadata.pipeline_runs(store, config.pipeline_name) if store else []
    runs = [r for r in runs if r.create_time_since_epoch >= int(started * 1000) - 1000]
    if not runs:
        return RunSummary(run_id=None, seconds=seconds, completed=False, error="the run recorded nothing in MLMD")
    run_context = runs[0]
    executions = metadata.run_executions(store, config.pipeline_name, run_context)
    summary = RunSummary(
        run_id=run_context.name,
        seconds=seconds,
        completed=all(e.state in ("ran", "cached") for e in executions),
        components=[ComponentResult(e.node_id, e.state, e.seconds) for e in executions],
    )
    by_node = {e.node_id: e for e in executions}
    failed = [e for e in executions if e.state == "failed"]
    if failed:
        summary.failed_component = failed[0].node_id
    if "Evaluator" in by_node:
        out = metadata.outputs(store, by_node["Evaluator"].execution.id)
        if out.get("blessing"):
            summary.blessed = metadata.custom_property(out["blessing"][0], "blessed") == 1
        if out.get("evaluation") and config.evaluation.thresholds:  # else: UNVALIDATED, nothing judged
            summary.checks = thresholds.config_threshold_checks(out["evaluation"][0].uri, config.evaluation)
            summary.validation_failures = evaluation.validation_failures(out["evaluation"][0].uri)
        if out.get("evaluation"):
            sample = metadata.inputs(store, by_node["Evaluator"].execution.id).get("examples", [])
            rows, population = (
                (metadata.custom_property(sample[0], k) for k in ("eval_sample", "eval_population"))
                if sample
                else (None, None)
            )
            summary.evaluated = evaluation.evaluated_rows(out["evaluation"][0].uri, rows, population)
    if "Trainer" in by_node:
        trainer = by_node["Trainer"].execution.id
        summary.warm_start = _training_report(store, trainer).get("warm_start")
        base_models = metadata.inputs(store, trainer).get("base_model", [])
        if summary.warm_start and base_models:
            base_trainer = metadata.producer_execution_id(store, base_models[0].id)
            if base_trainer is not None:
                summary.warm_start["base_final_loss"] = _training_report(store, base_trainer).get("final_loss")
    from pipeline.metadata import verdicts

    summary.gates = verdicts.gate_results(store, run_context.name)
    evaluation = [g for g in summary.gates if g["gate"] == verdicts.EVALUATION]
    summary.verdict = evaluation[0]["verdict"] if evaluation else None
    if "Pusher" in by_node:
        out = metadata.outputs(store, by_node["Pusher"].execution.id)
        for pushed in out.get("pushed_model", []):
            if metadata.custom_property(pushed, "pushed") == 1:
                summary.pushed_version = metadata.custom_property(pushed, "pushed_version")
                summary.pushed_path = metadata.custom_property(pushed, "pushed_destination")
                summary.serving_contract = contract_description(config)
    return summary
