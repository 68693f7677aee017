"""The provenance chain of one published version, from the pushed directory back to the data
(`mlpipe lineage`, and the server's GET /v1/models/M/versions/V/lineage: ml_metadata only, no TFX)."""

from __future__ import annotations

import json
from typing import Any

from pipeline.metadata import queries as metadata
from pipeline.metadata import releases
from pipeline.metadata.artifacts import read_anomalies, row_counts, split_names
from pipeline.metadata.snapshot import RegistryError, Snapshot, json_prop
from pipeline.metadata.thresholds import recorded_thresholds
from pipeline.metadata.versions import (
    baseline_version,
    example_artifacts_of_model,
    original_version,
    pushed_versions,
    version_record,
)


def _drift_check(snap: Snapshot, statistics) -> dict | None:
    """The DriftCheck (pipeline/dag/components_drift.py) of these statistics against the previous span's, if any ran."""
    if statistics is None:
        return None
    for execution in sorted(_consumers_of_node(snap, statistics, "DriftCheck"), reverse=True):  # newest first
        if statistics.id not in snap.inputs.get(execution, {}).get("statistics", []):
            continue  # these statistics were that check's previous span
        for artifact in snap.output_artifacts(execution, "drift"):
            try:
                checks = json.loads(metadata.prop(artifact, "checks", "[]"))
            except ValueError:
                checks = []
            previous = metadata.prop(artifact, "previous_span", -1)
            return {
                "uri": artifact.uri,
                "mode": metadata.prop(artifact, "mode"),
                "state": snap.state(execution),
                "previous_span": None if previous in (None, -1) else int(previous),
                "alert": metadata.prop(artifact, "drift_alert") == 1,
                "alerts": [c for c in checks if c.get("alert")],
            }
    return None


def _consumers_of_node(snap: Snapshot, artifact, node_id: str) -> list[int]:
    return [i for i in snap.consumers.get(artifact.id, []) if snap.node(i) == node_id]


def lineage(snap: Snapshot, version: int) -> dict:
    """The provenance chain of one published version, from the pushed directory back to the data."""
    versions = pushed_versions(snap)
    by_version = {v.version: v for v in versions}
    v = by_version.get(str(version))
    if v is None:
        known = ", ".join(by_version) or "none yet"
        raise RegistryError(
            f"version {version} was never pushed (known versions: {known}); see `mlpipe models`", code=2
        )
    config = snap.config
    source = by_version[original_version(by_version, v.version)]
    record = version_record(snap, versions, v)
    pusher = source.execution_id
    chain: dict[str, Any] = {"version": int(v.version), "published": record}
    chain["pushed"] = {
        "path": record["path"],
        "exists": (config.serving_model_dir / v.version).is_dir(),
        "artifact_id": v.pushed_model.id,
        "uri": v.pushed_model.uri,
    }
    chain["pusher"] = snap.execution_summary(pusher)
    chain["rollback"] = record["rollback"]
    # Evaluation.
    evaluator = snap.producing_execution(source.blessing) if source.blessing is not None else None
    chain["evaluation"] = {
        "execution": snap.execution_summary(evaluator),
        "blessed": metadata.prop(source.blessing, "blessed") == 1 if source.blessing is not None else None,
        "blessing_uri": source.blessing.uri if source.blessing is not None else None,
        "checks": record["checks"] if not v.is_rollback else version_record(snap, versions, source)["checks"],
        "thresholds": recorded_thresholds(snap.executions[evaluator]) if evaluator is not None else [],
        "baseline": baseline_version(snap, versions, source.blessing),
        "verdict": record["verdict"],
    }
    chain["gates"] = record["gates"]  # every gate of the candidate's run, then `bless --force` overrides
    chain["forced_blessing"] = record["forced_blessing"]
    # Model and Trainer.
    model = source.model
    trainer = snap.producing_execution(model) if model is not None else None
    trainer_exec = snap.executions.get(trainer) if trainer is not None else None
    custom_config = json_prop(trainer_exec, "custom_config") if trainer_exec is not None else None
    custom_config = custom_config if isinstance(custom_config, dict) else {}
    chain["model"] = {
        "artifact_id": model.id if model is not None else None,
        "uri": model.uri if model is not None else None,
        "trainer": snap.execution_summary(trainer),
        "train_args": json_prop(trainer_exec, "train_args") if trainer_exec is not None else None,
        "eval_args": json_prop(trainer_exec, "eval_args") if trainer_exec is not None else None,
        "hyperparameters": {
            k: v_ for k, v_ in custom_config.items() if k not in ("models_fingerprint", "git_commit", "mlpipe_model")
        },
        "model_settings": custom_config.get("mlpipe_model"),  # [model]: module file or import paths, label, ...
        "models_fingerprint": custom_config.get("models_fingerprint"),
        "git_commit": custom_config.get("git_commit")
        or (metadata.prop(trainer_exec, "git_commit") if trainer_exec is not None else None),
        "run_fn": metadata.prop(trainer_exec, "run_fn") if trainer_exec is not None else None,
        "warm_started_from": None,
    }
    base_models = snap.input_artifacts(trainer, "base_model") if trainer is not None else []
    if base_models:
        pushed = [
            x.version for x in versions if x.model is not None and x.model.id == base_models[0].id and not x.is_rollback
        ]
        chain["model"]["warm_started_from"] = {
            "model_id": base_models[0].id,
            "uri": base_models[0].uri,
            "version": int(pushed[0]) if pushed else None,
        }
    # Transform.
    graphs = snap.input_artifacts(trainer, "transform_graph") if trainer is not None else []
    transform = snap.producing_execution(graphs[0]) if graphs else None
    transform_exec = snap.executions.get(transform) if transform is not None else None
    transform_config = json_prop(transform_exec, "custom_config") if transform_exec is not None else None
    chain["transform"] = {
        "graph_uri": graphs[0].uri if graphs else None,
        "execution": snap.execution_summary(transform),
        "preprocessing_fn": metadata.prop(transform_exec, "preprocessing_fn") if transform_exec is not None else None,
        "models_fingerprint": transform_config.get("models_fingerprint")
        if isinstance(transform_config, dict)
        else None,
    }
    # Examples, with their statistics, schema and anomalies.
    examples = []
    for artifact in example_artifacts_of_model(snap, model):
        gen = snap.producing_execution(artifact)
        gen_exec = snap.executions.get(gen) if gen is not None else None
        stats_execs = _consumers_of_node(snap, artifact, "StatisticsGen")
        statistics = None
        for i in stats_execs:
            out = snap.output_artifacts(i, "statistics")
            if out:
                statistics = out[0]
                break
        examples.append(
            {
                "artifact_id": artifact.id,
                "uri": artifact.uri,
                "span": metadata.span_of(artifact),
                "version": metadata.prop(artifact, "version"),
                "splits": split_names(artifact),
                "row_counts": row_counts(statistics),
                "input_base": metadata.prop(gen_exec, "input_base") if gen_exec is not None else None,
                "input_fingerprint": metadata.prop(gen_exec, "input_fingerprint") if gen_exec is not None else None,
                "example_gen": snap.execution_summary(gen),
                "statistics_uri": statistics.uri if statistics is not None else None,
                "drift_check": _drift_check(snap, statistics),
            }
        )
    chain["examples"] = examples
    schemas = snap.input_artifacts(trainer, "schema") if trainer is not None else []
    schema = schemas[0] if schemas else None
    schema_gen = snap.producing_execution(schema) if schema is not None else None
    chain["schema"] = {
        "uri": schema.uri if schema is not None else None,
        "produced_by": snap.execution_summary(schema_gen),
    }
    anomalies_rec = []
    if schema is not None:
        for validator in _consumers_of_node(snap, schema, "ExampleValidator"):
            for artifact in snap.output_artifacts(validator, "anomalies"):
                stats_in = snap.input_artifacts(validator, "statistics")
                if examples and stats_in and stats_in[0].uri not in {e["statistics_uri"] for e in examples}:
                    continue  # validated other data
                anomalies_rec.append(
                    {"uri": artifact.uri, "by_split": read_anomalies(artifact.uri, split_names(artifact))}
                )
    chain["anomalies"] = list({a["uri"]: a for a in anomalies_rec}.values())
    chain["release"] = releases.status_of(releases.release_states(config), version)  # docs/release.md
    return chain
