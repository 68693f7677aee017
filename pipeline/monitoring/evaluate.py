"""Continuous evaluation (`mlpipe monitor --evaluate`): the served model scored by TFMA on newly labelled data."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Config
from pipeline.metadata.snapshot import open_snapshot
from pipeline.monitoring.baseline import training_data
from pipeline.monitoring.window import MonitorError
from pipeline.publish.versions import serving_versions


def _csv_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(path.glob("*.csv"))
    return []


def _csv_to_examples(files: list[Path], schema, destination: Path) -> int:
    """CSV rows as tf.Examples typed by `schema` (an empty cell is an empty value list, as CsvExampleGen writes)."""
    import csv

    import tensorflow as tf
    from tensorflow.core.example import example_pb2
    from tensorflow_metadata.proto.v0 import schema_pb2

    kinds = {
        f.name: {schema_pb2.INT: "int64_list", schema_pb2.FLOAT: "float_list"}.get(f.type, "bytes_list")
        for f in schema.feature
    }
    count = 0
    with tf.io.TFRecordWriter(str(destination)) as writer:
        for path in files:
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                missing = sorted(set(kinds) - set(reader.fieldnames or []))
                if missing:
                    raise MonitorError(f"{path} lacks the column(s) {', '.join(missing)} the model's schema has")
                for line, row in enumerate(reader, start=2):
                    example = example_pb2.Example()
                    for name, kind in kinds.items():
                        values = getattr(example.features.feature[name], kind)
                        cell = (row.get(name) or "").strip()
                        try:
                            if not cell:
                                values.SetInParent()
                            elif kind == "int64_list":
                                values.value.append(int(float(cell)))
                            elif kind == "float_list":
                                values.value.append(float(cell))
                            else:
                                values.value.append(cell.encode())
                        except ValueError:
                            raise MonitorError(f"{path}:{line}: {name} = {cell!r} is not a number") from None
                    writer.write(example.SerializeToString())
                    count += 1
    return count


def run_tfma(model_dir: Path, eval_cfg, examples: Path, output: Path) -> None:
    """TFMA over a TFRecord file of tf.Examples with the model in `model_dir`; its results go to `output`."""
    import tensorflow_model_analysis as tfma

    shared = tfma.default_eval_shared_model(eval_saved_model_path=str(model_dir), eval_config=eval_cfg)
    tfma.run_model_analysis(
        eval_shared_model=shared,
        eval_config=eval_cfg,
        data_location=str(examples),
        output_path=str(output),
        file_format="tfrecords",
    )


def value_only_eval_config(config: Config):
    """The pipeline's own eval config (the blessing's metrics and slices) without the change threshold:
    there is no baseline model when scoring newly labelled data."""
    from pipeline.dag.pipeline import eval_config

    eval_cfg = eval_config(config)
    for spec in eval_cfg.metrics_specs:
        for metric in spec.metrics:
            for threshold in metric.per_slice_thresholds:
                threshold.threshold.ClearField("change_threshold")
    return eval_cfg


def evaluate(config: Config, data: Path, version: int | None, workdir: Path) -> dict:
    """Scores the served version with TFMA on labelled CSV data; the value threshold of [evaluation] decides."""
    serving = serving_versions(config)
    if version is None:
        if not serving:
            raise MonitorError(f"no model version in {config.serving_model_dir}: nothing to evaluate")
        version = serving[-1]
    model_dir = config.serving_model_dir / str(version)
    if not (model_dir / "saved_model.pb").is_file():
        raise MonitorError(f"no saved model at {model_dir} (versions on disk: {serving or 'none'})")
    files = _csv_files(data)
    if not files:
        raise MonitorError(f"no CSV data at {data}: give a CSV file or a directory (a span) of *.csv files")
    snap = open_snapshot(config)
    if snap is None:
        raise MonitorError(f"no pipeline has run in {config.workspace_path}: no schema to read the CSV with")
    trained = training_data(snap, version)
    workdir.mkdir(parents=True, exist_ok=True)
    examples = workdir / "examples.tfrecord"
    count = _csv_to_examples(files, trained.schema, examples)
    if not count:
        raise MonitorError(f"{data} has no data rows")

    from pipeline.metadata import evaluation

    output = workdir / "evaluation"
    run_tfma(model_dir, value_only_eval_config(config), examples, output)
    values = evaluation.overall_metrics(str(output))
    metrics = {name: round(value, 6) for (name, model, is_diff), value in sorted(values.items()) if not is_diff}
    ev = config.evaluation
    value = metrics.get(ev.value_metric)
    passed = value is not None and value >= ev.value_lower_bound
    return {
        "workspace": str(config.workspace_path),
        "model": config.model_name,
        "version": version,
        "data": [str(f) for f in files],
        "examples": count,
        "metrics": metrics,
        "threshold": {"metric": ev.value_metric, "lower_bound": ev.value_lower_bound, "value": value, "passed": passed},
        "alerts": [] if passed else [f"evaluation:{ev.value_metric}"],
        "alert": not passed,
        "retrain_wanted": not passed,
    }
