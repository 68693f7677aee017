"""Each run's release report and each pushed version's model card (docs/release.md, Release report).

gather() reads everything from ML Metadata and the artifacts it points at: the data (statistics,
anomalies), TFMA's sliced metrics against the baseline with the thresholds, the verdict of every
gate (TFMA's blessing, the anomalies and drift gates, and generically any InfraBlessing artifact or
execution with a `verdict` property, so gates recorded by other components appear without code
here), the lineage, and what was pushed and why (the release decision). write() renders it as one
self-contained HTML page (pipeline/monitoring/release_report_html.py) and the model card as Markdown, under
config.reports_dir/<run>/.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Config
from pipeline.metadata import lineage as lineage_lib
from pipeline.metadata import queries as metadata
from pipeline.metadata import runs as runs_lib
from pipeline.metadata import thresholds, verdicts
from pipeline.metadata import versions as versions_lib
from pipeline.metadata.artifacts import read_anomalies, row_counts, split_names
from pipeline.metadata.snapshot import RegistryError, open_snapshot

REPORT_NAME = "release_report.html"
MODEL_CARD_NAME = "model_card.md"
GATE_ARTIFACT_TYPES = ("InfraBlessing",)  # TFX's (its `blessed` property); and any artifact with a `verdict`


def run_dir(config: Config, run_id: str) -> Path:
    return config.reports_dir / run_id  # the run id as `mlpipe runs` prints it (an ISO time)


def report_path(config: Config, run_id: str) -> Path:
    return run_dir(config, run_id) / REPORT_NAME


# --- data ----------------------------------------------------------------------------------------


def feature_statistics(statistics_uri: str | None, split: str = "train") -> list[dict]:
    """One row per feature of a StatisticsGen split: type, missing share, mean/std/min/max or unique."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    if not statistics_uri:
        return []
    path = Path(statistics_uri) / f"Split-{split}" / "FeatureStats.pb"
    if not path.is_file():
        return []
    stats = statistics_pb2.DatasetFeatureStatisticsList()
    stats.ParseFromString(path.read_bytes())
    rows = []
    for dataset in stats.datasets[:1]:
        for f in dataset.features:
            name = f.path.step[0] if f.path.step else f.name
            kind = f.WhichOneof("stats")
            common = (f.num_stats if kind == "num_stats" else f.string_stats).common_stats
            total = common.num_non_missing + common.num_missing
            row = {
                "feature": name,
                "type": statistics_pb2.FeatureNameStatistics.Type.Name(f.type),
                "missing": common.num_missing / total if total else 0.0,
            }
            if kind == "num_stats":
                s = f.num_stats
                row.update(mean=s.mean, std=s.std_dev, min=s.min, max=s.max, unique=None)
            else:
                row.update(mean=None, std=None, min=None, max=None, unique=f.string_stats.unique)
            rows.append(row)
    return sorted(rows, key=lambda r: r["feature"])


def _slice_name(slice_key) -> str:
    parts = []
    for k in slice_key.single_slice_keys:
        value = k.WhichOneof("kind")
        v = getattr(k, value) if value else ""
        parts.append(f"{k.column}={v.decode() if isinstance(v, bytes) else v}")
    return ", ".join(parts) or "overall"


def sliced_metrics(eval_uri: str | None) -> list[dict]:
    """[{"slice", "metrics": {name: {"candidate", "baseline"}}}], overall first, from TFMA's output."""
    if not eval_uri:
        return []
    from pipeline.metadata.evaluation import load_metrics  # tfma.load_metrics without importing TFMA (and TF)

    rows = []
    try:
        loaded = list(load_metrics(eval_uri))
    except Exception:  # a run that failed while writing its evaluation
        return []
    for per_slice in loaded:
        metrics: dict[str, dict] = {}
        for entry in per_slice.metric_keys_and_values:
            if entry.key.is_diff or not entry.value.HasField("double_value"):
                continue
            role = "baseline" if entry.key.model_name == "baseline" else "candidate"
            metrics.setdefault(entry.key.name, {"candidate": None, "baseline": None})[role] = (
                entry.value.double_value.value
            )
        rows.append({"slice": _slice_name(per_slice.slice_key), "metrics": dict(sorted(metrics.items()))})
    return sorted(rows, key=lambda r: (r["slice"] != "overall", _natural(r["slice"])))


def _natural(text: str) -> list:
    """trip_start_hour=2 before trip_start_hour=10."""
    import re

    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)]


# --- gates ---------------------------------------------------------------------------------------


def _verdict_of(item) -> str | None:
    verdict = metadata.prop(item, "verdict")
    if verdict:
        return str(verdict)
    blessed = metadata.prop(item, "blessed")
    if blessed is None:
        return None
    return "BLESSED" if int(blessed) == 1 else "NOT_BLESSED"


def generic_gates(store, run_execution_ids: list[int], artifact_ids: set[int], skip: set[int]) -> list[dict]:
    """Gates recorded in MLMD by anyone: InfraBlessing or `verdict` artifacts output by the run's executions, and
    executions with a `verdict` property (of the run, or recorded later about its artifacts)."""
    gates = []
    events = metadata.events_of(store, run_execution_ids)
    outputs = {e.artifact_id for e in events if e.type in metadata.OUTPUT_EVENTS}
    for a in metadata.artifacts_by_id(store, outputs).values():
        if a.id in skip or not (a.type in GATE_ARTIFACT_TYPES or metadata.prop(a, "verdict")):
            continue
        verdict = _verdict_of(a)
        if verdict is not None:
            gates.append(_gate(a.type, verdict, a, f"artifact {a.id}: {a.uri}"))
    candidates = {e.id: e for e in store.get_executions_by_id(run_execution_ids)} if run_execution_ids else {}
    if artifact_ids:  # executions about the run's artifacts (e.g. an audited override recorded later)
        for event in store.get_events_by_artifact_ids(sorted(artifact_ids)):
            if event.execution_id not in candidates:
                candidates.update({e.id: e for e in store.get_executions_by_id([event.execution_id])})
    for e in sorted(candidates.values(), key=lambda e: e.id):
        verdict = metadata.prop(e, "verdict")
        if verdict:
            gates.append(_gate(e.type, str(verdict), e, f"execution {e.id}"))
    return gates


def _gate(name: str, verdict: str, item, where: str) -> dict:
    details = {
        k: metadata.prop(item, k)
        for k in sorted(set(item.custom_properties) | set(item.properties))
        if k not in ("verdict", "blessed") and not k.startswith("__") and metadata.prop(item, k) not in (None, "")
    }
    return {"gate": name, "verdict": verdict, "where": where, "details": details}


# --- everything about one run --------------------------------------------------------------------


def gather(config: Config, run_id: str) -> dict:
    """What the report shows about run `run_id` (raises RegistryError for an unknown run)."""
    from pipeline.publish import approvals

    snap = open_snapshot(config)
    rows = {r["run_id"]: r for r in runs_lib.list_runs(snap)} if snap is not None else {}
    if run_id not in rows:
        known = ", ".join(list(rows)[:5]) or "none yet"
        raise RegistryError(f"no run {run_id!r} in {config.workspace_path} (newest: {known})", code=2)
    row = rows[run_id]
    ids = sorted(i for i, r in snap.run_of.items() if r == run_id and i in snap.executions)
    nodes = {snap.node(i): i for i in ids}
    report: dict = {
        "run_id": run_id,
        "pipeline": config.pipeline_name,
        "model": config.model_name,
        "outcome": runs_lib.describe_run(row),
        "run": row,
        "components": [snap.execution_summary(i) for i in ids],
    }
    # Data: the Examples this run's StatisticsGen described, and the ExampleValidator's anomalies.
    stats_exec = nodes.get("StatisticsGen")
    statistics = snap.output_artifacts(stats_exec, "statistics") if stats_exec is not None else []
    examples = snap.input_artifacts(stats_exec, "examples") if stats_exec is not None else []
    validator = nodes.get("ExampleValidator")
    anomalies = snap.output_artifacts(validator, "anomalies") if validator is not None else []
    report["data"] = {
        "examples_uri": examples[0].uri if examples else None,
        "span": int(metadata.prop(examples[0], "span", 0) or 0) if examples else None,
        "row_counts": row_counts(statistics[0]) if statistics else {},
        "statistics_uri": statistics[0].uri if statistics else None,
        "features": feature_statistics(statistics[0].uri) if statistics else [],
        "anomalies": read_anomalies(anomalies[0].uri, split_names(anomalies[0])) if anomalies else {},
        "training_spans": row["spans"],
    }
    # Evaluation: sliced metrics against the baseline, with the recorded thresholds.
    evaluator = nodes.get("Evaluator")
    evaluation = snap.output_artifacts(evaluator, "evaluation") if evaluator is not None else []
    blessing = snap.output_artifacts(evaluator, "blessing") if evaluator is not None else []
    eval_uri = evaluation[0].uri if evaluation else None
    versions = versions_lib.pushed_versions(snap)
    report["evaluation"] = {
        "uri": eval_uri,
        "thresholds": thresholds.recorded_thresholds(snap.executions[evaluator]) if evaluator is not None else [],
        "checks": thresholds.threshold_checks(snap.executions[evaluator], eval_uri) if evaluator is not None else [],
        "baseline": versions_lib.baseline_version(snap, versions, blessing[0] if blessing else None),
        "slices": sliced_metrics(eval_uri),
    }
    # Gates: TFMA's blessing, the anomalies gate, the drift check, then whatever else MLMD holds.
    gates = []
    if blessing:
        gates.append(
            {
                "gate": "Evaluator (TFMA thresholds)",
                "verdict": "BLESSED" if metadata.prop(blessing[0], "blessed") == 1 else "NOT_BLESSED",
                "where": f"artifact {blessing[0].id}: {blessing[0].uri}",
                "details": {
                    c["metric"]: thresholds.describe_check(c)[len(c["metric"]) + 1 :]
                    for c in report["evaluation"]["checks"]
                },
            }
        )
    elif evaluator is None:
        gates.append({"gate": "Evaluator (TFMA thresholds)", "verdict": "NOT_RUN", "where": "", "details": {}})
    for node in ("AnomaliesGate", "DriftCheck"):
        if node in nodes:
            state = snap.state(nodes[node])
            verdict = {"ran": "PASSED", "cached": "PASSED", "failed": "BLOCKED"}.get(state, state.upper())
            gates.append({"gate": node, "verdict": verdict, "where": f"execution {nodes[node]}", "details": {}})
    model_artifacts = {a for i in ids for ids_ in snap.outputs.get(i, {}).values() for a in ids_}
    skip = {blessing[0].id} if blessing else set()
    gates += generic_gates(snap.store, ids, model_artifacts, skip)
    report["gates"] = gates
    # What was pushed and why.
    version = row.get("pushed_version")
    states = approvals.release_states(config)
    release = approvals.status_of(states, int(version)) if version else None
    report["push"] = {
        "version": int(version) if version else None,
        # the mode the version was released under (its first decision), not today's config
        "release_mode": (release["decisions"][0]["mode"] if release["decisions"] else "auto")
        if release
        else config.release.mode,
        "release": release,
        "why": _why(row, gates),
    }
    report["lineage"] = lineage_lib.lineage(snap, int(version)) if version else None
    return report


def _why(row: dict, gates: list[dict]) -> str:
    if row["outcome"] == "pushed":
        passed = [g["gate"] for g in gates if g["verdict"] in verdicts.LETS_THROUGH]
        return f"every gate passed ({', '.join(passed) or 'none recorded'}); the Pusher pushed the blessed model"
    if row["outcome"] == "not_blessed":
        failed = [g["gate"] for g in gates if g["verdict"] not in verdicts.LETS_THROUGH]
        return f"nothing pushed: {', '.join(failed) or 'a gate'} refused the candidate"
    return f"nothing pushed: the run is {row['outcome']}" + (f" ({row['error']})" if row.get("error") else "")


# --- writing ---------------------------------------------------------------------------------------


def model_card(config: Config, report: dict) -> str:
    """The pushed version's model card (Markdown): intended use, data window, metrics by slice, limitations."""
    from pipeline.monitoring.release_report_html import fmt_metric  # the report page's number format

    card = config.model_card
    push, lineage = report["push"], report["lineage"] or {}
    lines = [f"# Model card: {config.model_name} version {push['version']}", ""]
    lines += ["## Model details", "", f"- pipeline: {config.pipeline_name}, run {report['run_id']}"]
    model = lineage.get("model") or {}
    lines.append(f"- model: {model.get('uri')} (trainer run {(model.get('trainer') or {}).get('run_id')})")
    lines.append(f"- hyperparameters: {model.get('hyperparameters')}")
    if card.owners:
        lines.append(f"- owners: {card.owners}")
    lines += ["", "## Intended use", "", card.intended_use or "(not stated: set model_card.intended_use)", ""]
    lines += ["## Data window", ""]
    for ex in lineage.get("examples") or []:
        counts = ", ".join(f"{k} {v} rows" for k, v in ex["row_counts"].items()) or "row counts unknown"
        lines.append(f"- span {ex['span']} from {ex['input_base']}: {counts}")
    lines += ["", "## Metrics by slice", ""]
    names = sorted({m for s in report["evaluation"]["slices"] for m in s["metrics"]})
    if names:
        lines.append("| slice | " + " | ".join(names) + " |")
        lines.append("|---" * (len(names) + 1) + "|")
        for s in report["evaluation"]["slices"]:
            cells = [fmt_metric(s["metrics"].get(n, {}).get("candidate")) for n in names]
            lines.append(f"| {s['slice']} | " + " | ".join(cells) + " |")
    lines += ["", "## Limitations", "", card.limitations or "(not stated: set model_card.limitations)", ""]
    if card.ethical_considerations:
        lines += ["## Ethical considerations", "", card.ethical_considerations, ""]
    return "\n".join(lines)


def write(config: Config, run_id: str) -> Path:
    """Writes the run's report (and, when it pushed, the version's model card); returns the report's path."""
    from pipeline.monitoring import release_report_html as report_html

    report = gather(config, run_id)
    directory = run_dir(config, run_id)
    directory.mkdir(parents=True, exist_ok=True)
    card = None
    if report["push"]["version"] is not None:
        card = directory / MODEL_CARD_NAME
        card.write_text(model_card(config, report))
    path = directory / REPORT_NAME
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(report_html.render(report, model_card_name=card.name if card else None))
    tmp.replace(path)
    return path


def find(config: Config, what: str | None) -> tuple[str, int | None]:
    """(run id, version) a `mlpipe report [RUN|VERSION]` argument names; newest run by default."""
    snap = open_snapshot(config)
    if snap is None or not snap.runs:
        raise RegistryError(f"no pipeline has run in {config.workspace_path} yet: no report", code=2)
    if what is None:
        return snap.runs[0].name, None
    if what.isdigit():
        versions = versions_lib.pushed_versions(snap)
        by_version = {v.version: v for v in versions}
        if what not in by_version:
            known = ", ".join(by_version) or "none yet"
            raise RegistryError(f"version {what} was never pushed (known versions: {known})", code=2)
        source = by_version[versions_lib.original_version(by_version, what)]
        run_id = snap.run_of.get(source.execution_id)
        return run_id, int(what)
    if what not in {r.name for r in snap.runs}:
        raise RegistryError(
            f"no run {what!r} (newest: {snap.runs[0].name}); give a run id from `mlpipe runs` or a version", code=2
        )
    return what, None
