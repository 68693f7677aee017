"""Files the Pusher adds to a pushed version's assets.extra/, both read by stock TF Serving:

- ``mlmd_uuid``: an id also stored on the PushedModel artifact in ML Metadata (custom property
  ``mlmd_uuid``); TF Serving publishes the file's whole content as its
  ``/tensorflow/serving/mlmd_map{model_name, version}`` gauge (machine_learning_metadata.cc),
  mlpipe serve as ``mlpipe_serving_mlmd_map``.
- ``tf_serving_warmup_requests``: up to 1000 PredictionLog records (TFRecord, saved_model_warmup.cc)
  taken from the newest logged requests (``<workspace>/request_logs/<model>/``, written by
  ``mlpipe serve --request_log_sampling_rate``), so the first real requests do not pay the cold
  start. Only records the new model can answer are kept (signature and input names match), since
  a failing warm-up record fails the load. A warm-up file the trained model already has is kept.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid as uuid_lib

MLMD_UUID_PROPERTY = "mlmd_uuid"
MLMD_UUID_FILE = "assets.extra/mlmd_uuid"
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit (saved_model_warmup_util.cc kMaxNumRecords)
REQUEST_LOG_DIR_KEY = "request_log_dir"


def new_mlmd_uuid() -> str:
    return str(uuid_lib.uuid4())


def extra_files(mlmd_uuid: str, custom_config, model_path: str | None = None) -> dict[str, bytes]:
    """{relative path: content} to add to the pushed copy."""
    files = {MLMD_UUID_FILE: mlmd_uuid.encode()}
    config = json.loads(custom_config) if isinstance(custom_config, str) and custom_config else (custom_config or {})
    log_dir = config.get(REQUEST_LOG_DIR_KEY)
    if log_dir and model_path and not os.path.exists(os.path.join(model_path, WARMUP_FILE)):
        records = warmup_records(log_dir, model_path)
        if records:
            files[WARMUP_FILE] = tfrecord_bytes(records)
    return files


def _signatures(model_path: str) -> dict[str, tuple[str, set[str]]]:
    """{signature name: (method name, input keys)} of the SavedModel, read from saved_model.pb."""
    from tensorflow.core.protobuf import saved_model_pb2

    with open(os.path.join(model_path, "saved_model.pb"), "rb") as f:
        saved = saved_model_pb2.SavedModel.FromString(f.read())
    found = {}
    for meta_graph in saved.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            for name, sig in meta_graph.signature_def.items():
                found[name] = (sig.method_name, set(sig.inputs))
    return found


def warmup_records(log_dir: str, model_path: str, limit: int = MAX_WARMUP_RECORDS) -> list[bytes]:
    """Serialized PredictionLogs, newest logged requests first, that the model at `model_path` can answer."""
    import tensorflow as tf
    from google.protobuf.message import DecodeError
    from tensorflow_serving.apis import prediction_log_pb2

    from serving.request_log import log_files

    if not os.path.isdir(log_dir):
        return []
    signatures = _signatures(model_path)
    kept: list[bytes] = []
    for path in reversed(log_files(log_dir)):  # newest file first
        records = []
        try:
            for raw in tf.compat.v1.io.tf_record_iterator(path):
                records.append(raw)
        except Exception:  # a file being written ends in a partial record: use what was read
            pass
        for raw in reversed(records):
            try:
                log = prediction_log_pb2.PredictionLog.FromString(raw)
            except DecodeError:
                continue
            kind = log.WhichOneof("log_type")
            if kind not in ("predict_log", "classify_log", "regress_log"):
                continue
            request = getattr(log, kind).request
            signature = signatures.get(request.model_spec.signature_name or "serving_default")
            if signature is None:
                continue
            if kind == "predict_log" and set(request.inputs) != signature[1]:
                continue
            # Warm-up replays the request against whatever version loads: drop the logged version.
            request.model_spec.ClearField("version")
            request.model_spec.ClearField("version_label")
            warm = prediction_log_pb2.PredictionLog()
            getattr(warm, kind).request.CopyFrom(request)
            kept.append(warm.SerializeToString())
            if len(kept) >= limit:
                return kept
    return kept


def tfrecord_bytes(records: list[bytes]) -> bytes:
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "warmup")
        with tf.io.TFRecordWriter(path) as writer:
            for record in records:
                writer.write(record)
        with open(path, "rb") as f:
            return f.read()
