"""The replay gate: the candidate and the serving champion re-score the last logged requests.

A second gate beside TFMA's: TFMA compares the models on the eval split; this compares them on
what clients really sent (`mlpipe serve --request_log_sampling_rate`, serving/request_log.py).
Both models are loaded by serving's ModelManager (pipeline/dag/loading.py) and answer each logged
request through serving/inference.py; the mean |score difference|, the share of decisions that
flip at 0.5 and the p95 latency ratio are held to [replay_gate]. No logs or no champion: SKIPPED,
with the reason. The result is an `mlpipe.ReplayVerdict` artifact (properties gate, verdict,
reasons, numbers, blessed) that the Pusher requires (pipeline/publish/pusher.py).
"""
# No `from __future__ import annotations`: TFX's @component reads the annotations as types.

import collections
import json
import os
import time
from typing import List, Optional, Tuple

import numpy as np

from pipeline.dag import loading
from pipeline.dag import tfx_api as tfx
from pipeline.publish.pusher import ReplayVerdict

GATE = "replay"
CHAMPION_LABEL = "stable"  # the label that names the champion when set; else the latest version


def champion(workspace: str, model_name: str) -> Tuple[Optional[int], str]:
    """(version, path) of what the server serves now: the `stable` label if set, else the latest version.

    Read when the gate runs, not when the pipeline is built: a cached gate is one whose candidate
    was judged already (the gate runs again when the candidate changes)."""
    from pipeline.config import Config
    from pipeline.metadata.snapshot import RegistryError
    from pipeline.publish import versions as registry

    config = Config(workspace=workspace, model_name=model_name)
    on_disk = registry.serving_versions(config)
    try:
        labelled = registry.read_labels(config).get(CHAMPION_LABEL)
    except RegistryError:
        labelled = None
    version = labelled if labelled in on_disk else (on_disk[-1] if on_disk else None)
    return version, str(config.serving_model_dir / str(version)) if version is not None else ""


def last_requests(log_dir: str, count: int) -> list:
    from serving.request_log import read_logs

    if not os.path.isdir(log_dir):
        return []
    return list(collections.deque(read_logs(log_dir), maxlen=count))


def _answer(servable, record):
    """(scores per example, milliseconds) of one logged request re-run on `servable`."""
    from pipeline.dag.request_logs import decode_request, decode_scores
    from serving import inference

    run = {
        "predict": inference.predict_from_proto,
        "classify": inference.classify_from_proto,
        "regress": inference.regress_from_proto,
    }[record.kind]
    started = time.perf_counter()
    response = run(servable, record.request)
    ms = (time.perf_counter() - started) * 1000.0
    return decode_scores(record.kind, response, len(decode_request(record.kind, record.request))), ms


def replay(candidate, champion_servable, records: list) -> dict:
    """Both models answer every record; the numbers the gate judges."""
    deltas, flips, lat_candidate, lat_champion = [], 0, [], []
    candidate_errors, first_error, compared = 0, None, 0
    for servable in (champion_servable, candidate):  # one untimed call each: a first call pays TF's tracing
        try:
            _answer(servable, records[0])
        except Exception:  # counted in the loop below
            pass
    for record in records:
        try:
            old, ms_old = _answer(champion_servable, record)
        except Exception:  # the champion cannot answer it either (e.g. a malformed request): not compared
            continue
        compared += 1
        try:
            new, ms_new = _answer(candidate, record)
        except Exception as e:
            candidate_errors += 1
            first_error = first_error or f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
            continue
        lat_champion.append(ms_old)
        lat_candidate.append(ms_new)
        for a, b in zip(old, new):
            if a is None or b is None:
                continue
            deltas.append(abs(a - b))
            flips += (a >= 0.5) != (b >= 0.5)

    def p(values, q):
        return float(np.percentile(values, q)) if values else None

    numbers = {
        "requests": len(records),
        "compared_requests": compared,
        "examples": len(deltas),
        "candidate_errors": candidate_errors,
        "first_error": first_error,
        "mean_abs_delta": float(np.mean(deltas)) if deltas else None,
        "max_abs_delta": float(np.max(deltas)) if deltas else None,
        "flipped_fraction": flips / len(deltas) if deltas else None,
        "candidate_p50_ms": p(lat_candidate, 50),
        "candidate_p95_ms": p(lat_candidate, 95),
        "champion_p50_ms": p(lat_champion, 50),
        "champion_p95_ms": p(lat_champion, 95),
    }
    if numbers["candidate_p95_ms"] and numbers["champion_p95_ms"]:
        numbers["p95_latency_ratio"] = numbers["candidate_p95_ms"] / numbers["champion_p95_ms"]
    else:
        numbers["p95_latency_ratio"] = None
    return numbers


def judge(numbers: dict, max_mean_abs_delta: float, max_flipped_fraction: float, max_ratio: float) -> List[str]:
    reasons = []
    if numbers["candidate_errors"]:
        reasons.append(
            f"the candidate failed {numbers['candidate_errors']} of {numbers['compared_requests']} logged requests "
            f"the champion answered: {numbers['first_error']}"
        )
    checks = (
        ("mean |score delta|", numbers["mean_abs_delta"], max_mean_abs_delta),
        ("flipped decisions", numbers["flipped_fraction"], max_flipped_fraction),
        ("p95 latency ratio", numbers["p95_latency_ratio"], max_ratio),
    )
    for what, value, bound in checks:
        if value is not None and value > bound:
            reasons.append(f"{what} {value:.4f} > {bound:g}")
    return reasons


def record(verdict_artifact, verdict: str, reasons: List[str], numbers: dict) -> None:
    from pipeline.dag.results import record_verdict

    text = json.dumps({"gate": GATE, "verdict": verdict, "reasons": reasons, "numbers": numbers}, indent=1)
    record_verdict(verdict_artifact, GATE, verdict, reasons, numbers, file_name="verdict.json", text=text)


@tfx.dsl.components.component
def ReplayGate(
    model: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Model],
    verdict: tfx.dsl.components.OutputArtifact[ReplayVerdict],
    model_name: tfx.dsl.components.Parameter[str],
    request_log_dir: tfx.dsl.components.Parameter[str],
    workspace: tfx.dsl.components.Parameter[str],
    last_requests_count: tfx.dsl.components.Parameter[int],
    max_mean_abs_delta: tfx.dsl.components.Parameter[float],
    max_flipped_fraction: tfx.dsl.components.Parameter[float],
    max_p95_latency_ratio: tfx.dsl.components.Parameter[float],
) -> None:
    """Re-scores the last logged requests with the candidate and the champion; FAILED blocks the push."""
    from tfx.utils import path_utils

    champion_version, champion_path = champion(workspace, model_name)
    bounds = {
        "max_mean_abs_delta": max_mean_abs_delta,
        "max_flipped_fraction": max_flipped_fraction,
        "max_p95_latency_ratio": max_p95_latency_ratio,
        "champion_version": champion_version,
    }
    records = last_requests(request_log_dir, last_requests_count)
    if not records:
        record(verdict, "SKIPPED", [f"no request logs under {request_log_dir}"], bounds)
        return
    if champion_version is None:
        record(verdict, "SKIPPED", ["no champion: nothing is served yet"], bounds)
        return
    model_path = path_utils.serving_model_path(model.uri)
    try:
        with loading.served(champion_path, model_name, copy=False) as (champion_servable, _):
            with loading.served(model_path, model_name, request_log_dir) as (candidate, _):
                numbers = replay(candidate, champion_servable, records)
    except loading.LoadError as e:
        record(verdict, "FAILED", [str(e)], bounds)
        return
    numbers.update(bounds)
    reasons = judge(numbers, max_mean_abs_delta, max_flipped_fraction, max_p95_latency_ratio)
    record(verdict, "FAILED" if reasons else "PASSED", reasons, numbers)
