"""Bring your own model and data: TFX's penguin module (tfx/examples/penguin/penguin_utils_keras.py, unmodified)
on the Palmer penguins data of the `palmerpenguins` package, a 3-class problem. The dataset is described by
data alone: `mlpipe schema` infers a schema once, the config pins it (column types and dense shapes)."""

import numpy as np
import pytest

from pipeline.dag import dataset
from tests import byo
from tests.conftest import run_cli

palmerpenguins = pytest.importorskip("palmerpenguins", reason="test dependency in requirements-test.lock")

MODULE = byo.TFX_EXAMPLES / "penguin" / "penguin_utils_keras.py"
MODEL_NAME = "penguin"
FEATURES = ["culmen_length_mm", "culmen_depth_mm", "flipper_length_mm", "body_mass_g"]
SPECIES = ["Adelie", "Chinstrap", "Gentoo"]


def write_penguins_csv(dest_dir):
    """The data as TFX's penguin example has it (penguins_processed.csv): species as an integer label,
    the four culmen/flipper/mass measurements scaled to [0, 1], rows with a missing value dropped."""
    frame = palmerpenguins.load_penguins()
    frame = frame.rename(columns={"bill_length_mm": "culmen_length_mm", "bill_depth_mm": "culmen_depth_mm"})
    frame = frame[["species", *FEATURES]].dropna()
    frame["species"] = frame["species"].map(SPECIES.index).astype(int)
    for key in FEATURES:
        column = frame[key].astype(float)
        frame[key] = (column - column.min()) / (column.max() - column.min())
    dest_dir.mkdir(parents=True, exist_ok=True)
    frame.to_csv(dest_dir / "penguins_processed.csv", index=False)
    return dest_dir


@pytest.fixture(scope="module")
def penguin(tmp_path_factory):
    root = tmp_path_factory.mktemp("penguin")
    data = write_penguins_csv(root / "data")
    code, out, err = run_cli(
        "schema", "--data-root", str(data), "--infer-feature-shape", "-o", str(root / "schema.pbtxt")
    )
    assert code == 0, out + err
    config = byo.write_config(
        root / "mlpipe.toml",
        {"pipeline_name": "penguin", "model_name": MODEL_NAME, "workspace": "ws"},
        {
            "data": {"root": "data", "schema": "schema.pbtxt", "infer_feature_shape": True},
            "training": {"train_steps": 30, "eval_steps": 5},
            "model": {
                "module_file": str(MODULE),
                "label_key": "species_xf",
                "raw_label_keys": ["species"],
                "output": "logits",  # the module's last layer is Dense(3) trained with from_logits=True
                "slice_features": [],
                "metrics": ["example_count", "sparse_categorical_accuracy"],
            },
            "evaluation": {
                "value_metric": "sparse_categorical_accuracy",
                "value_lower_bound": 0.1,
                "change_metric": "sparse_categorical_accuracy",
                "change_tolerance": 1.0,
            },
        },
    )
    first = run_cli("run", "--config", str(config))
    second = run_cli("run", "--config", str(config), "--train-steps", "31")
    return root, config, out, first, second


def test_schema_command_pins_types_and_shapes(penguin):
    root, _, out, _, _ = penguin
    assert "review it, then pin it" in out
    types = dataset.schema_column_types(root / "schema.pbtxt")
    assert types == {"species": "int", **{k: "float" for k in FEATURES}}
    schema = dataset.load_schema(root / "schema.pbtxt")
    assert all(f.shape.dim[0].size == 1 for f in schema.feature)  # dense: what the penguin module expects


def test_penguin_module_is_blessed_and_pushed(penguin):
    _, _, _, (code, out, err), _ = penguin
    assert code == 0, out + err
    assert "Result: BLESSED and pushed as version" in out
    assert "sparse_categorical_accuracy" in out


def test_three_class_scores_through_mlpipe_serve(penguin):
    root, config, _, _, _ = penguin
    types = dataset.schema_column_types(root / "schema.pbtxt")
    rows = byo.rows(root / "data" / "penguins_processed.csv", types, 5, skip=("species",))
    with byo.mlpipe_serve(config) as server:
        by_raw, by_classify, by_b64 = byo.serve_three_ways(server, MODEL_NAME, rows, types, raw_label_keys=("species",))
    assert by_raw.shape == (5, 3)
    np.testing.assert_allclose(by_raw.sum(axis=1), 1.0, rtol=1e-5)  # logits turned into probabilities
    np.testing.assert_allclose(by_classify, by_raw, rtol=1e-4)
    np.testing.assert_allclose(by_b64, by_raw, rtol=1e-4)


def test_lineage_and_rollback(penguin):
    root, config, _, _, (code, out, err) = penguin
    assert code == 0, out + err
    assert "Result: BLESSED and pushed as version" in out  # the second version
    base = root / "ws" / "serving_model" / MODEL_NAME
    v1, v2 = sorted(int(p.name) for p in base.iterdir() if p.name.isdigit())
    chain = byo.cli_json("lineage", str(v2), "--config", str(config))
    assert chain["schema"]["produced_by"]["node"] == "ImportSchemaGen"
    result = byo.cli_json("rollback", "--config", str(config), "--reason", "byo test")
    assert result["to_version"] == v1 and result["replaced_version"] == v2
