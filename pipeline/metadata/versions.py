"""Published versions as ML Metadata recorded them: Pusher pushes and rollbacks, their models, blessings,
baselines and training spans (`mlpipe models`)."""

from __future__ import annotations

import dataclasses

from ml_metadata.proto import metadata_store_pb2

from pipeline.metadata import queries as metadata
from pipeline.metadata.snapshot import Snapshot, iso, version_str
from pipeline.metadata.thresholds import threshold_checks


@dataclasses.dataclass
class Version:
    version: str
    pushed_ms: int
    destination: str  # where the pusher wrote it (as recorded)
    pushed_model: metadata_store_pb2.Artifact
    execution_id: int  # the Pusher or rollback execution that published it
    model: metadata_store_pb2.Artifact | None
    blessing: metadata_store_pb2.Artifact | None
    rollback_of: str | None = None  # for a rollback: the version it re-published

    @property
    def is_rollback(self) -> bool:
        return self.rollback_of is not None


def pushed_versions(snap: Snapshot) -> list[Version]:
    """Every version that was published, oldest first: Pusher pushes and rollbacks."""
    versions: dict[str, Version] = {}
    for execution_id in sorted(snap.executions_by_node("Pusher") + sorted(snap.forced_ids)):  # + `bless --force`
        for artifact in snap.output_artifacts(execution_id, "pushed_model"):
            version = version_str(metadata.prop(artifact, "pushed_version"))
            if metadata.prop(artifact, "pushed") != 1 or version is None or version in versions:
                continue  # not pushed, or a cached execution re-announcing an earlier push
            models = snap.input_artifacts(execution_id, "model")
            blessings = snap.input_artifacts(execution_id, "model_blessing")
            versions[version] = Version(
                version=version,
                pushed_ms=snap.executions[execution_id].last_update_time_since_epoch,
                destination=metadata.prop(artifact, "pushed_destination", artifact.uri),
                pushed_model=artifact,
                execution_id=execution_id,
                model=models[0] if models else None,
                blessing=blessings[0] if blessings else None,
            )
    for execution_id in sorted(snap.rollback_ids):
        for artifact in snap.output_artifacts(execution_id, "pushed_model"):
            version = version_str(metadata.prop(artifact, "pushed_version"))
            source = versions.get(version_str(metadata.prop(snap.executions[execution_id], "to_version")))
            if version is None or version in versions or source is None:
                continue
            versions[version] = dataclasses.replace(
                source,
                version=version,
                pushed_ms=snap.executions[execution_id].create_time_since_epoch,
                destination=metadata.prop(artifact, "pushed_destination", artifact.uri),
                pushed_model=artifact,
                execution_id=execution_id,
                rollback_of=source.version,
            )
    return sorted(versions.values(), key=lambda v: int(v.version))


def original_version(versions: dict[str, Version], version: str) -> str:
    """The Pusher version a (chain of) rollback(s) re-published."""
    seen = set()
    while version in versions and versions[version].rollback_of and version not in seen:
        seen.add(version)
        version = versions[version].rollback_of
    return version


def baseline_version(snap: Snapshot, versions: list[Version], blessing) -> dict | None:
    """The baseline model the Evaluator compared against, and the version it was pushed as."""
    if blessing is None:
        return None
    model_id = metadata.prop(blessing, "baseline_model_id")
    if not model_id:
        return None
    pushed = [v.version for v in versions if v.model is not None and v.model.id == model_id and not v.is_rollback]
    return {
        "model_id": model_id,
        "model_uri": metadata.prop(blessing, "baseline_model"),
        "version": int(pushed[0]) if pushed else None,
    }


def example_artifacts_of_model(snap: Snapshot, model) -> list:
    """The Examples the Trainer's input was derived from (through Transform), or its direct input."""
    trainer = snap.producing_execution(model) if model is not None else None
    return metadata.training_examples(trainer, snap.input_artifacts, snap.producing_execution, snap.node)


def version_record(snap: Snapshot, versions: list[Version], v: Version, with_metrics: bool = True) -> dict:
    evaluator = snap.producing_execution(v.blessing) if v.blessing is not None else None
    checks = []
    if evaluator is not None and with_metrics:
        evaluations = snap.output_artifacts(evaluator, "evaluation")
        checks = threshold_checks(snap.executions[evaluator], evaluations[0].uri if evaluations else None)
    trainer = snap.producing_execution(v.model) if v.model is not None else None
    record = {
        "version": int(v.version),
        "pushed": iso(v.pushed_ms),
        "path": str(snap.config.serving_model_dir / v.version),
        "recorded_destination": v.destination,
        "run_id": snap.run_of.get(snap.producing_execution(v.pushed_model) or v.execution_id),
        "model_id": v.model.id if v.model is not None else None,
        "trainer_run_id": snap.run_of.get(trainer) if trainer is not None else None,
        "checks": checks,
        "baseline": baseline_version(snap, versions, v.blessing),
        "training_spans": metadata.examples_spans(example_artifacts_of_model(snap, v.model)),
        "rollback": None,
    }
    record.update(gate_fields(snap, evaluator, checks if with_metrics else None))
    if v.execution_id in snap.forced_ids:
        from pipeline.metadata import verdicts

        record["forced_blessing"] = verdicts.forced_record(snap.executions[v.execution_id])
    if v.is_rollback:
        e = snap.executions[v.execution_id]
        record["run_id"] = None
        record["rollback"] = {
            "execution_id": v.execution_id,
            "of_version": int(v.rollback_of),
            "replaced_version": metadata.prop(e, "from_version"),
            "reason": metadata.prop(e, "reason"),
            "user": metadata.prop(e, "user"),
        }
    return record


def gate_fields(snap: Snapshot, evaluator: int | None, checks: list | None) -> dict:
    """verdict (BLESSED / NOT_BLESSED / UNVALIDATED), gates (every gate of the candidate's run) and
    forced_blessing (None); `checks` None: not read (models without metrics). docs/release.md."""
    fields = {"verdict": None, "gates": [], "forced_blessing": None}
    if evaluator is None or checks is None:
        return fields
    from pipeline.metadata import verdicts

    fields["gates"] = verdicts.gate_results(snap.store, snap.run_of.get(evaluator), checks=checks)
    evaluation = [g for g in fields["gates"] if g["gate"] == verdicts.EVALUATION]
    fields["verdict"] = evaluation[0]["verdict"] if evaluation else None
    return fields


def list_models(snap: Snapshot, with_metrics: bool = True) -> list[dict]:
    """Every published version, newest first."""
    versions = pushed_versions(snap)
    return [version_record(snap, versions, v, with_metrics) for v in reversed(versions)]


def versions_trained_on_span(snap: Snapshot, span: int) -> list[int]:
    """Published versions whose training Examples include `span`."""
    return [
        int(v.version)
        for v in pushed_versions(snap)
        if span in metadata.examples_spans(example_artifacts_of_model(snap, v.model))
    ]
