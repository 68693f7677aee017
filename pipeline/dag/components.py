"""mlpipe's own pipeline pieces: the anomalies gate and the baseline-model resolver strategy."""
# No `from __future__ import annotations`: TFX's @component reads the annotations as types.

from typing import Dict, List

from tfx.types import artifact_utils

from pipeline.dag import tfx_api as tfx
from pipeline.metadata import artifacts


class DataAnomaliesError(RuntimeError):
    """ExampleValidator found anomalies; the message lists them, one per line."""


def read_anomalies(anomalies_artifact) -> Dict[str, List[str]]:
    """Returns {split: ["feature 'x': description", ...]} for an ExampleAnomalies artifact, splits with any."""
    splits = artifact_utils.decode_split_names(anomalies_artifact.split_names)
    found = artifacts.read_anomalies(anomalies_artifact.uri, splits, required=True)
    return {split: lines for split, lines in found.items() if lines}


def format_anomalies(found: Dict[str, List[str]]) -> str:
    lines = [f"data anomalies found by ExampleValidator ({sum(map(len, found.values()))}):"]
    for split, entries in found.items():
        lines.extend(f"  [{split}] {entry}" for entry in entries)
    return "\n".join(lines)


@tfx.dsl.components.component
def AnomaliesGate(
    anomalies: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleAnomalies],
) -> None:
    """Fails the run when ExampleValidator reported any anomaly, so nothing is trained on bad data."""
    found = read_anomalies(anomalies)
    if found:
        raise DataAnomaliesError(format_anomalies(found))


class BaselineModelStrategy(tfx.dsl.experimental.ResolverStrategy):
    """The latest blessed model other than the current candidate.

    Like TFX's LatestBlessedModelStrategy, but it also takes the candidate (channel `candidate`) and
    never offers it as its own baseline. So a re-run with unchanged inputs, whose Trainer is cached,
    resolves the same baseline as the first run, and the Evaluator and Pusher are cached as well.
    """

    def resolve_artifacts(self, store, input_dict):
        candidates = input_dict.get("candidate", [])
        candidate_ids = {a.id for a in candidates}
        blessed = {
            b.get_int_custom_property("current_model_id"): b
            for b in input_dict.get("model_blessing", [])
            if b.get_int_custom_property("blessed") == 1
        }
        for model in sorted(input_dict.get("model", []), key=lambda a: a.id, reverse=True):
            if model.id in blessed and model.id not in candidate_ids:
                return {"model": [model], "model_blessing": [blessed[model.id]], "candidate": candidates}
        return {"model": [], "model_blessing": [], "candidate": candidates}
