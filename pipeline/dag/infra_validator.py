"""InfraValidator without Docker: the candidate is loaded by mlpipe's own server code and queried.

TFX's InfraValidator starts TF Serving in Docker (or Kubernetes); here the candidate is laid out as
the Pusher would push it and loaded by serving's ModelManager (pipeline/dag/loading.py: same loader,
same warm-up), then every signature answers real eval-split examples, one request each, through
serving/inference.py. The result is TFX's InfraBlessing (custom property `blessed`, file
INFRA_BLESSED or INFRA_NOT_BLESSED, as InfraValidator writes it), which the Pusher requires.
mlpipe also records `verdict`, `reasons` and `numbers` on it (pipeline/metadata/verdicts.py reads them).
"""
# No `from __future__ import annotations`: TFX's @component reads the annotations as types.

import math
import os
import time
from typing import Dict, List

import numpy as np
from tfx.types import artifact_utils

from pipeline.dag import loading
from pipeline.dag import tfx_api as tfx

GATE = "infra_validation"
BLESSED_FILE, NOT_BLESSED_FILE = "INFRA_BLESSED", "INFRA_NOT_BLESSED"  # TFX infra_validator/executor.py


def eval_examples(examples_artifact, count: int, split: str = "eval") -> List[bytes]:
    """The first `count` serialized tf.Examples of the split (ExampleGen's gzipped TFRecords)."""
    import tensorflow as tf

    uri = artifact_utils.get_split_uri([examples_artifact], split)
    files = sorted(os.path.join(uri, n) for n in os.listdir(uri))
    found: List[bytes] = []
    for path in files:
        for record in tf.data.TFRecordDataset(path, compression_type="GZIP").take(count - len(found)):
            found.append(record.numpy())
        if len(found) >= count:
            break
    return found


def _feature_value(example, key: str):
    feature = example.features.feature.get(key)
    kind = feature.WhichOneof("kind") if feature is not None else None
    values = list(getattr(feature, kind).value) if kind else []
    return values[0] if values else None


def _raw_inputs(signature, example) -> Dict[str, np.ndarray] | None:
    """One example as the typed tensors of a raw-features predict signature; None if an int is missing."""
    inputs = {}
    for key, spec in signature.inputs.items():
        value = _feature_value(example, key)
        if spec.dtype.kind == "O":
            value = value if isinstance(value, bytes) else (b"" if value is None else str(value).encode())
            array = np.array([value], dtype=object)
        elif spec.dtype.kind == "f":
            array = np.array([math.nan if value is None else float(value)], dtype=spec.dtype)
        else:
            if value is None:
                return None
            array = np.array([int(float(value))], dtype=spec.dtype)
        if spec.shape is not None and len(spec.shape) == 2:
            array = array.reshape(1, 1)
        inputs[key] = array
    return inputs


def requests_for(signature, serialized: List[bytes]) -> list:
    """(callable, description) per example: one request each, through serving/inference.py."""
    from tensorflow.core.example import example_pb2
    from tensorflow_serving.apis import input_pb2

    from serving import inference
    from serving.servable import CLASSIFY_METHOD, REGRESS_METHOD

    calls = []
    for raw in serialized:
        example = example_pb2.Example.FromString(raw)
        if signature.method_name in (CLASSIFY_METHOD, REGRESS_METHOD):
            request_input = input_pb2.Input()
            request_input.example_list.examples.add().CopyFrom(example)
            run = inference.classify if signature.method_name == CLASSIFY_METHOD else inference.regress
            calls.append(lambda s, i=request_input, r=run: r(s, signature.name, i))
        elif len(signature.inputs) == 1 and next(iter(signature.inputs.values())).dtype.kind == "O":
            key = next(iter(signature.inputs))
            array = np.array([raw], dtype=object)
            calls.append(lambda s, a=array, k=key: inference.predict(s, signature.name, {k: a}))
        else:
            inputs = _raw_inputs(signature, example)
            if inputs is not None:
                calls.append(lambda s, x=inputs: inference.predict(s, signature.name, x))
    return calls


def query(servable, serialized: List[bytes]) -> List[dict]:
    """Each signature answers each example once: requests, errors, p50/p95 latency (ms), first error."""
    results = []
    for name in sorted(servable.signatures):
        signature = servable.signatures[name]
        latencies, errors, first_error = [], 0, None
        calls = requests_for(signature, serialized)
        for i, call in enumerate(calls):
            started = time.perf_counter()
            try:
                call(servable)
            except Exception as e:  # a request the model cannot answer: counted, the first one kept
                errors += 1
                first_error = first_error or f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
                continue
            if i or len(calls) == 1:  # the first call of a signature warms it up (TF traces it): untimed
                latencies.append((time.perf_counter() - started) * 1000.0)
        results.append(
            {
                "signature": name,
                "method": signature.method_name,
                "requests": len(calls),
                "errors": errors,
                "p50_ms": float(np.percentile(latencies, 50)) if latencies else None,
                "p95_ms": float(np.percentile(latencies, 95)) if latencies else None,
                "first_error": first_error,
            }
        )
    return results


def judge(per_signature: List[dict], max_latency_ms: float, max_error_rate: float) -> List[str]:
    """Why the candidate fails its budget (empty: it passes)."""
    reasons = []
    if not any(s["requests"] for s in per_signature):
        reasons.append("no signature could be queried with the eval examples")
    for s in per_signature:
        if not s["requests"]:
            continue
        rate = s["errors"] / s["requests"]
        if rate > max_error_rate:
            reasons.append(
                f"{s['signature']}: {s['errors']} of {s['requests']} requests failed "
                f"(error budget {max_error_rate:.0%}): {s['first_error']}"
            )
        if s["p95_ms"] is not None and s["p95_ms"] > max_latency_ms:
            reasons.append(f"{s['signature']}: p95 latency {s['p95_ms']:.1f} ms > budget {max_latency_ms:g} ms")
    return reasons


def record(blessing, passed: bool, reasons: List[str], numbers: dict) -> None:
    """Marks the InfraBlessing as TFX's InfraValidator does, plus mlpipe's verdict properties."""
    from pipeline.dag.results import record_verdict

    verdict, marker = ("PASSED", BLESSED_FILE) if passed else ("FAILED", NOT_BLESSED_FILE)
    record_verdict(blessing, GATE, verdict, reasons, numbers, file_name=marker)


@tfx.dsl.components.component
def InfraValidator(
    model: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Model],
    examples: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Examples],
    blessing: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.InfraBlessing],
    model_name: tfx.dsl.components.Parameter[str],
    request_log_dir: tfx.dsl.components.Parameter[str],
    examples_per_signature: tfx.dsl.components.Parameter[int],
    max_latency_ms: tfx.dsl.components.Parameter[float],
    max_error_rate: tfx.dsl.components.Parameter[float],
) -> None:
    """Loads the candidate with mlpipe's server code and holds every signature to the budget."""
    from tfx.utils import path_utils

    model_path = path_utils.serving_model_path(model.uri)
    numbers = {"max_latency_ms": max_latency_ms, "max_error_rate": max_error_rate}
    try:
        serialized = eval_examples(examples, examples_per_signature)
        with loading.served(model_path, model_name, request_log_dir or None) as (servable, load_seconds):
            numbers["load_seconds"] = round(load_seconds, 3)
            numbers["signatures"] = query(servable, serialized)
    except loading.LoadError as e:
        record(blessing, False, [str(e)], numbers)
        return
    reasons = judge(numbers["signatures"], max_latency_ms, max_error_rate)
    record(blessing, not reasons, reasons, numbers)
