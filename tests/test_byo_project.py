"""`mlpipe init` scaffolds a project that runs as it is; user code loads by path, beside mlpipe's packages;
errors in [model] settings are one line naming the setting, before anything runs."""

import sys

import pytest

from pipeline import config as config_lib
from pipeline.dag import user_code
from tests import byo
from tests.conftest import run_cli

IRIS_LIKE = "width,height,color,kind\n" + "".join(
    f"{w / 10},{h / 10},{c},{k}\n"
    for i, (w, h, c, k) in enumerate(
        (1 + (i % 7) + 6 * (i % 2), 2 + (i % 5) + 4 * (i % 2), ("red", "blue")[i % 3 == 0], ("a", "b")[i % 2])
        for i in range(240)
    )
)


@pytest.fixture(scope="module")
def scaffolded(tmp_path_factory):
    """`mlpipe init` on a small CSV, then the user adds a `models/` package of their own and uses it."""
    tmp = tmp_path_factory.mktemp("init")
    (tmp / "flowers.csv").write_text(IRIS_LIKE)
    init = run_cli("init", str(tmp / "proj"), "--data", str(tmp / "flowers.csv"), "--label", "kind")
    project = tmp / "proj"
    # The user's own `models` package, a name mlpipe also uses for its taxi model.
    (project / "models").mkdir()
    (project / "models" / "__init__.py").write_text("")
    (project / "models" / "sizes.py").write_text("HIDDEN_UNITS = 16\n")
    module = project / "model.py"
    text = module.read_text().replace(
        "from tfx_bsl.public import tfxio", "from tfx_bsl.public import tfxio\n\nfrom models import sizes"
    )
    module.write_text(text.replace("keras.layers.Dense(16,", "keras.layers.Dense(sizes.HIDDEN_UNITS,"))
    run = run_cli("run", "--config", str(project / "mlpipe.toml"), "--train-steps", "20", "--eval-steps", "5")
    return project, init, run


def test_init_writes_a_commented_config_a_module_and_a_pinned_schema(scaffolded):
    project, (code, out, err), _ = scaffolded
    assert code == 0, out + err
    assert f"next: mlpipe run --config {project / 'mlpipe.toml'}" in out
    for name in ("mlpipe.toml", "model.py", "schema.pbtxt", "data/flowers.csv"):
        assert (project / name).is_file(), name
    config = config_lib.load(project / "mlpipe.toml")  # relative paths: relative to the file
    assert config.model.module_file == str(project / "model.py")
    assert config.data.schema == str(project / "schema.pbtxt")
    assert config.model.label_key == "kind_xf" and config.model.raw_label_keys == ("kind",)
    assert "# " in (project / "mlpipe.toml").read_text()


def test_scaffolded_project_with_its_own_models_package_runs_and_pushes(scaffolded):
    project, _, (code, out, err) = scaffolded
    assert code == 0, out + err
    assert "Result: BLESSED and pushed as version" in out
    assert list((project / "workspace" / "serving_model" / "proj").iterdir())
    # mlpipe's own `models` package is still mlpipe's.
    import models.features

    assert models.features.LABEL == "big_tipper"
    assert sys.modules["models"].__file__.startswith(str(config_lib.DEFAULT_DATA_ROOT.parent.parent))


def test_a_model_the_contract_cannot_wrap_fails_the_run_with_one_line(scaffolded):
    """run_fn saves something that is not a Keras model: the summary says so and names the setting."""
    project = scaffolded[0]
    module = project / "model.py"
    saved = "    tf.saved_model.save(model, fn_args.serving_model_dir)"
    assert saved in module.read_text()
    module.write_text(
        module.read_text().replace(saved, "    tf.saved_model.save(tf.Module(), fn_args.serving_model_dir)")
    )
    before = sorted((project / "workspace" / "serving_model" / "proj").iterdir())
    code, out, err = run_cli("run", "--config", str(project / "mlpipe.toml"), "--train-steps", "5", "--eval-steps", "2")
    assert code == 1
    assert "Result: FAILED at Trainer: serving contract: the SavedModel run_fn wrote has no callable model" in out
    assert "set model.serving_contract = false" in out
    assert sorted((project / "workspace" / "serving_model" / "proj").iterdir()) == before


def test_user_models_package_does_not_shadow_mlpipe_or_get_shadowed(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "__init__.py").write_text("")
    (tmp_path / "models" / "features.py").write_text("LABEL = 'mine'\n")
    (tmp_path / "models.py").write_text("")  # even a module file named like the package is fine
    module = tmp_path / "module.py"
    module.write_text(
        "from models.features import LABEL\n\ndef preprocessing_fn(inputs):\n    return inputs\n\n"
        "def run_fn(fn_args):\n    return LABEL\n"
    )
    loaded = user_code.load_module_file(module)
    assert loaded.LABEL == "mine"
    assert loaded.__name__.startswith("_mlpipe_user_")
    from models import features

    assert features.LABEL == "big_tipper"


def _config(tmp_path, **model):
    return byo.write_config(tmp_path / "c.toml", {"workspace": str(tmp_path / "ws")}, {"model": model})


def test_module_without_run_fn_fails_before_anything_runs(tmp_path, taxi_slice):
    module = tmp_path / "prep_only.py"
    module.write_text("def preprocessing_fn(inputs):\n    return inputs\n")
    config = _config(tmp_path, module_file=str(module))
    code, out, err = run_cli("run", "--config", str(config), "--data-root", str(taxi_slice))
    assert code == 2
    assert err.strip() == (
        f"mlpipe: config error: model.module_file: {module} defines no run_fn (the Trainer's entry point); "
        "add def run_fn(...) to it, or point model.module_file at the file that has it"
    )
    assert not (tmp_path / "ws" / "metadata.sqlite").exists()


def test_the_code_check_is_skipped_only_while_the_code_is_unchanged(tmp_path, taxi_slice, monkeypatch):
    """A fully cached run need not import the model code (TensorFlow, Keras) to check it again; a module
    broken after a check passed still fails with one line before anything runs."""
    module = tmp_path / "my_model.py"
    marker = tmp_path / "imported"
    module.write_text(
        f"open({str(marker)!r}, 'a').write('x')\n\n"
        "def preprocessing_fn(inputs):\n    return inputs\n\n\ndef run_fn(fn_args):\n    pass\n"
    )
    path = _config(tmp_path, module_file=str(module))
    config = config_lib.load(path)
    user_code.check(config.model, config.user_code_check_path)  # passes: recorded in the workspace
    assert marker.read_text() == "x" and config.user_code_check_path.is_file()
    monkeypatch.setattr(user_code, "_loaded", {})  # as in a fresh process
    user_code.check(config.model, config.user_code_check_path)  # same key: the module is not imported
    assert marker.read_text() == "x"
    user_code.check(config.model)  # no record: imported and checked
    assert marker.read_text() == "xx"
    module.write_text(module.read_text().replace("def run_fn", "def train_fn"))
    code, out, err = run_cli("run", "--config", str(path), "--data-root", str(taxi_slice))
    assert code == 2
    assert err.strip() == (
        f"mlpipe: config error: model.module_file: {module} defines no run_fn (the Trainer's entry point); "
        "add def run_fn(...) to it, or point model.module_file at the file that has it"
    )
    assert not (tmp_path / "ws" / "metadata.sqlite").exists()


@pytest.mark.parametrize(
    "model, message",
    [
        ({"module_file": "nowhere.py"}, "model.module_file: no module file at"),
        ({"metrics": ["auc", "binary_accuracy", "f1"]}, "model.metrics: unknown metric(s) f1"),
        ({"metrics": ["auc"]}, "evaluation.value_metric: 'binary_accuracy' is not computed: add it to model.metrics"),
        ({"slice_features": ["island"]}, "model.slice_features: 'island' not a column of the data"),
        ({"raw_label_keys": ["tip"]}, "model.raw_label_keys: 'tip' not a column of the data"),
        ({"task": "ranking"}, "model.task: must be one of classification, regression"),
        (
            {"prediction_key": "outputs"},
            "model.prediction_key: the serving contract's serving_default outputs 'scores'",
        ),
    ],
)
def test_model_settings_errors_are_one_line_naming_the_setting(tmp_path, taxi_slice, model, message):
    code, out, err = run_cli("run", "--config", str(_config(tmp_path, **model)), "--data-root", str(taxi_slice))
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "ws" / "metadata.sqlite").exists()


def test_header_check_uses_the_declared_columns(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "d.csv").write_text("a,b\n1,2\n")
    config = byo.write_config(
        tmp_path / "c.toml",
        {"workspace": str(tmp_path / "ws")},
        {
            "data": {"root": str(data), "columns": {"a": "int", "c": "float"}},
            "model": {"raw_label_keys": [], "slice_features": []},
        },
    )
    code, _, err = run_cli("run", "--config", str(config))
    assert code == 2
    assert "missing column(s) c; unexpected column(s) b (the columns come from [data.columns] in the config)" in err
