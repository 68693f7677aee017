"""The training side of a served version: its whole training window, found through MLMD lineage.

pushed version -> (a rollback resolves to the version it re-published) -> Model -> Trainer ->
Transform -> every Examples artifact the Trainer's input was made of (all spans of its window) ->
- the schema the Trainer used (the serving schema check);
- a bounded, seeded sample of the raw train-split rows of all those spans, merged (the skew baseline);
- the version's scores on the eval splits of the same spans (the prediction-drift baseline).

The sample and the scores are computed once per version (reading the examples and running the
SavedModel is the slow part) and cached as JSON under <workspace>/monitoring/baselines/.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.dag.request_logs import SCORE, example_row
from pipeline.metadata import queries as metadata
from pipeline.metadata.snapshot import Snapshot
from pipeline.metadata.versions import example_artifacts_of_model, original_version, pushed_versions
from pipeline.monitoring.stats import SPAN
from pipeline.monitoring.window import MonitorError

EVAL_SCORE_ROWS = 5000  # at most this many eval-split rows are scored for the prediction baseline


@dataclasses.dataclass
class TrainingData:
    version: int
    schema: Any  # schema_pb2.Schema the Trainer used
    schema_uri: str
    spans: list[int]  # every span of the training window
    examples_uris: list[str]  # the Examples artifacts (one per span) of the window
    examples_spans: list[int]  # the span of each of them
    model_dir: str  # the pushed SavedModel

    @property
    def span(self) -> int:
        return self.spans[-1] if self.spans else 0


def training_data(snap: Snapshot, version: int, config: Config | None = None) -> TrainingData:
    """Lineage of `version` in MLMD to the schema and the Examples of its whole training window."""
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2  # without TF, unlike tfdv.load_schema_text

    versions = {v.version: v for v in pushed_versions(snap)}
    if str(version) not in versions:
        known = ", ".join(versions) or "none"
        raise MonitorError(
            f"the logs are of model version {version}, which MLMD has no push of (known versions: {known}); "
            "pass --version for a known one or check the workspace"
        )
    pushed = versions[str(version)]
    source = versions[original_version(versions, str(version))]
    model = source.model
    trainer = snap.producing_execution(model) if model is not None else None
    examples = sorted(example_artifacts_of_model(snap, model), key=metadata.span_of)
    schemas = snap.input_artifacts(trainer, "schema") if trainer is not None else []
    if not examples or not schemas:
        raise MonitorError(f"MLMD has no training examples or schema for version {version}; cannot compare", 1)
    schema_path = Path(schemas[0].uri) / "schema.pbtxt"
    for path in [schema_path] + [Path(a.uri) / "Split-train" for a in examples]:
        if not path.exists():
            raise MonitorError(f"{path} (training data of version {version}) is missing; was the workspace moved?", 1)
    model_dir = Path(config.serving_model_dir / str(version)) if config is not None else None
    if model_dir is None or not model_dir.is_dir():
        model_dir = Path(pushed.destination)
    return TrainingData(
        version=version,
        schema=text_format.Parse(schema_path.read_text(), schema_pb2.Schema()),
        schema_uri=str(schema_path),
        spans=metadata.examples_spans(examples),
        examples_uris=[a.uri for a in examples],
        examples_spans=[metadata.span_of(a) for a in examples],
        model_dir=str(model_dir),
    )


def _split_files(uri: str, split: str) -> list[str]:
    return sorted(str(p) for p in (Path(uri) / f"Split-{split}").glob("*") if p.is_file())


def _read_examples(uris: list[str], split: str) -> list[bytes]:
    import tensorflow as tf

    files = [f for uri in uris for f in _split_files(uri, split)]
    if not files:
        return []
    return list(tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator())


def _plain(value):
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _eval_scores(model_dir: str, serialized: list[bytes]) -> list[float]:
    """The SavedModel's `serving_default` scores (last column) of serialized tf.Examples."""
    import numpy as np
    import tensorflow as tf

    from pipeline.dag.request_logs import SCORE_OUTPUT

    loaded = tf.saved_model.load(model_dir)
    signature = loaded.signatures["serving_default"]
    name = next(iter(signature.structured_input_signature[1]))
    scores = []
    for i in range(0, len(serialized), 512):
        outputs = signature(**{name: tf.constant(serialized[i : i + 512])})
        array = outputs.get(SCORE_OUTPUT, next(iter(outputs.values()))).numpy()
        scores += [float(v) for v in (array[:, -1] if array.ndim == 2 else array.reshape(-1))]
    return np.asarray(scores, dtype=float).tolist()


def baseline(config: Config, trained: TrainingData) -> dict:
    """{"rows": [decoded train rows, merged over the window's spans, sampled], "scores": [eval-split scores],
    "train_rows": total train rows, "eval_rows": scored eval rows}, cached per version."""
    cache = config.baseline_cache_path(trained.version)
    key = {
        "examples": trained.examples_uris,
        "spans": trained.examples_spans,
        "model": trained.model_dir,
        "rows": config.monitoring.baseline_rows,
        "seed": 0,
    }
    if cache.is_file():
        try:
            data = json.loads(cache.read_text())
            if data.get("key") == key:
                return data
        except (OSError, ValueError):
            pass  # unreadable cache: recompute
    from tensorflow.core.example import example_pb2

    rng = random.Random(0)
    train = [
        (span, raw)
        for uri, span in zip(trained.examples_uris, trained.examples_spans)
        for raw in _read_examples([uri], "train")
    ]
    total = len(train)
    if len(train) > config.monitoring.baseline_rows:
        train = rng.sample(train, config.monitoring.baseline_rows)
    rows = [
        dict({k: _plain(v) for k, v in example_row(example_pb2.Example.FromString(raw)).items()}, **{SPAN: span})
        for span, raw in train
    ]
    evals = [
        (span, raw)
        for uri, span in zip(trained.examples_uris, trained.examples_spans)
        for raw in _read_examples([uri], "eval")
    ]
    if len(evals) > EVAL_SCORE_ROWS:
        evals = rng.sample(evals, EVAL_SCORE_ROWS)
    score_spans = [span for span, _ in evals]
    try:
        scores = _eval_scores(trained.model_dir, [raw for _, raw in evals]) if evals else []
    except Exception as e:  # a model that cannot be loaded here: no prediction baseline, said in notes
        scores, error = [], f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    else:
        error = None
    data = {
        "key": key,
        "rows": rows,
        "scores": scores,
        "score_spans": score_spans if scores else [],
        "train_rows": total,
        "eval_rows": len(evals),
        "score_error": error,
    }
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(data))
        tmp.replace(cache)
    except OSError:
        pass  # a read-only workspace: recomputed next time
    return data


def rows_with_scores(rows: list[dict]) -> list[float]:
    return [r[SCORE] for r in rows if r.get(SCORE) is not None]
