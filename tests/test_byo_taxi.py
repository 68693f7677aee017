"""Bring your own model: TFX's own taxi module (tfx/examples/chicago_taxi_pipeline/taxi_utils_native_keras.py,
unmodified, loaded from the installed tfx package) plugged in by config alone, on the taxi slice with the
column types TFX infers (declared in [data.columns]). Its run_fn exports only `serving_default` (output
`outputs`) and `transform_features`; the pushed model must still have mlpipe's serving contract."""

import json
import shutil

import numpy as np
import pytest

from models import features
from pipeline.metadata import queries as metadata
from tests import byo
from tests.conftest import run_cli

MODULE = byo.TFX_EXAMPLES / "chicago_taxi_pipeline" / "taxi_utils_native_keras.py"
# CsvExampleGen's inference on the taxi data (what TFX's module expects: integer codes, not strings).
TFX_TYPES = {
    **features.COLUMN_TYPES,
    **{
        k: "int"
        for k in ("pickup_community_area", "dropoff_community_area", "pickup_census_tract", "dropoff_census_tract")
    },
}
MODEL_NAME = "tfxtaxi"
PIPELINE = "tfx-taxi"
STEPS = ["--train-steps", "20", "--eval-steps", "5"]


def project(tmp_path, data_root, **model_overrides):
    model = {
        "module_file": str(MODULE),
        "label_key": "tips_xf",
        "raw_label_keys": ["tips"],
        "slice_features": ["trip_start_hour"],
        "metrics": ["example_count", "auc", "binary_accuracy"],
        **model_overrides,
    }
    return byo.write_config(
        tmp_path / "mlpipe.toml",
        {"pipeline_name": PIPELINE, "model_name": MODEL_NAME, "workspace": "ws"},
        {
            "data": {"root": str(data_root), "columns": TFX_TYPES},
            "evaluation": {"value_lower_bound": 0.1, "change_tolerance": 1.0},
            "model": model,
        },
    )


@pytest.fixture(scope="module")
def tfx_taxi(tmp_path_factory, taxi_slice):
    """Two runs of TFX's taxi module: the first pushes v1; a run with one more train step pushes v2."""
    root = tmp_path_factory.mktemp("tfx-taxi")
    config = project(root, taxi_slice)
    first = run_cli("run", "--config", str(config), *STEPS)
    second = run_cli("run", "--config", str(config), "--train-steps", "21", "--eval-steps", "5")
    return root / "ws", config, first, second


def versions(workspace):
    base = workspace / "serving_model" / MODEL_NAME
    return sorted(int(p.name) for p in base.iterdir() if p.name.isdigit())


def test_tfx_module_runs_by_config_and_is_blessed_and_pushed(tfx_taxi):
    workspace, _, (code, out, err), _ = tfx_taxi
    assert code == 0, out + err
    assert "Result: BLESSED and pushed as version" in out
    assert "Signatures: serving_default (classify, output scores), serving_raw, transform_features" in out
    store = metadata.open_store(workspace / "metadata.sqlite")
    run = metadata.pipeline_runs(store, PIPELINE)[-1]
    trainer = {e.node_id: e for e in metadata.run_executions(store, PIPELINE, run)}["Trainer"]
    custom = json.loads(metadata.custom_property(trainer.execution, "custom_config"))
    assert custom["mlpipe_model"]["module_file"] == str(MODULE)


def test_pushed_model_has_the_contract_through_mlpipe_serve(tfx_taxi, taxi_slice):
    workspace, config, _, _ = tfx_taxi
    rows = byo.rows(taxi_slice / "data.csv", TFX_TYPES, 4, skip=("tips",))
    with byo.mlpipe_serve(config) as server:
        by_raw, by_classify, by_b64 = byo.serve_three_ways(
            server, MODEL_NAME, rows, TFX_TYPES, raw_label_keys=("tips",)
        )
    assert by_raw.shape == (4, 1) and np.all((by_raw >= 0) & (by_raw <= 1))
    np.testing.assert_allclose(by_classify, by_raw, rtol=1e-4)
    np.testing.assert_allclose(by_b64, by_raw, rtol=1e-4)
    # run_fn's own export is kept next to the model, unchanged: its signature names 'outputs'.
    import tensorflow as tf

    model_run = next((workspace / "pipeline_root" / "Trainer" / "model_run").iterdir())
    original = tf.saved_model.load(str(model_run / "run_fn_export"))
    assert set(original.signatures) == {"serving_default", "transform_features"}


def test_lineage_and_rollback_work_like_the_taxi_model(tfx_taxi):
    workspace, config, _, (code, out, err) = tfx_taxi
    assert code == 0, out + err
    assert "Result: BLESSED and pushed as version" in out  # the second version
    v1, v2 = versions(workspace)
    chain = byo.cli_json("lineage", str(v2), "--config", str(config))
    assert chain["model"]["models_fingerprint"] == chain["transform"]["models_fingerprint"]
    assert chain["evaluation"]["checks"]
    result = byo.cli_json("rollback", "--config", str(config), "--reason", "byo test")
    assert result["to_version"] == v1 and result["replaced_version"] == v2
    assert versions(workspace)[-1] == result["new_version"]


def test_editing_the_module_reruns_transform_and_trainer(tfx_taxi, taxi_slice, tmp_path):
    """The fingerprint covers the user's module file: a copy with one more line is new code."""
    from pipeline.config import load
    from pipeline.dag import user_code

    copy_dir = tmp_path / "module"
    copy_dir.mkdir()
    shutil.copy(MODULE, copy_dir / MODULE.name)
    config = project(tmp_path, taxi_slice, module_file=str(copy_dir / MODULE.name))
    before = user_code.code_fingerprint(load(config).model)
    with open(copy_dir / MODULE.name, "a") as f:
        f.write("\n# an edit\n")
    assert user_code.code_fingerprint(load(config).model) != before


def test_a_label_key_the_transformed_examples_lack_names_the_setting(tfx_taxi, taxi_slice, tmp_path):
    """Found before training (Transform is reused from the cache): one line naming model.label_key."""
    shutil.copytree(tfx_taxi[0], tmp_path / "ws")
    config = project(tmp_path, taxi_slice, label_key="big_tipper")  # mlpipe's label, not this module's
    code, out, err = run_cli("run", "--config", str(config), *STEPS)
    assert code == 1
    assert (
        "Result: FAILED at Trainer: model.label_key: 'big_tipper' is not among the transformed examples' features"
        in out
    )
    assert "tips_xf" in out and "set model.label_key" in out


def test_a_model_the_contract_cannot_wrap_is_refused_with_the_setting_to_change(tfx_taxi, tmp_path):
    """run_fn saved something without a callable model: the contract says what to change, nothing is half-written."""
    import tensorflow as tf
    import tensorflow_transform as tft

    from models import signatures

    graph = next((tfx_taxi[0] / "pipeline_root" / "Transform" / "transform_graph").iterdir())
    module = tf.Module()
    module.v = tf.Variable(1.0)
    export = tmp_path / "export"
    tf.saved_model.save(module, str(export))
    with pytest.raises(signatures.ServingContractError, match="no callable model .* model.serving_contract = false"):
        signatures.rebuild(str(export), tft.TFTransformOutput(str(graph)), raw_label_keys=("tips",))
    assert (export / "saved_model.pb").is_file() and not (tmp_path / "export.contract").exists()
    with pytest.raises(signatures.ServingContractError, match="model.raw_label_keys: 'tip' is not a raw feature"):
        signatures.rebuild(str(export), tft.TFTransformOutput(str(graph)), raw_label_keys=("tip",))


def test_a_regression_model_gets_a_regress_signature(tfx_taxi, taxi_slice, tmp_path):
    """model.task = "regression": serving_default is marked regress, output `outputs` [batch]."""
    import tensorflow as tf
    import tensorflow_transform as tft
    from tensorflow.core.protobuf import saved_model_pb2

    from models import signatures

    graph = tft.TFTransformOutput(
        str(next((tfx_taxi[0] / "pipeline_root" / "Transform" / "transform_graph").iterdir()))
    )
    inputs = {k: tf.keras.Input(shape=(1,), name=k) for k in ("fare_xf", "trip_miles_xf")}
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(1)(tf.keras.layers.concatenate(list(inputs.values()))))
    export = tmp_path / "export"
    tf.saved_model.save(model, str(export))  # a bare Keras model, no signatures of its own
    signatures.rebuild(str(export), graph, raw_label_keys=("tips",), task="regression")
    assert signatures.has_contract(str(export), "regression")
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((export / "saved_model.pb").read_bytes())
    assert saved.meta_graphs[0].signature_def["serving_default"].method_name == "tensorflow/serving/regress"
    rows = byo.rows(taxi_slice / "data.csv", TFX_TYPES, 3, skip=("tips",))
    loaded = tf.saved_model.load(str(export))
    examples = tf.constant([byo.example_bytes(r, TFX_TYPES) for r in rows])
    assert loaded.signatures["serving_default"](inputs=examples)["outputs"].shape == (3,)
