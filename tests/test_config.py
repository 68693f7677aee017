"""Config: defaults, TOML file, environment and flag precedence, and one-line errors naming the key."""

import pytest

from pipeline import config as config_lib
from pipeline.config import ConfigError


def write(tmp_path, text):
    path = tmp_path / "mlpipe.toml"
    path.write_text(text)
    return path


def test_defaults_point_at_the_embedded_taxi_data_and_workspace(monkeypatch):
    monkeypatch.delenv(config_lib.WORKSPACE_ENV, raising=False)
    config = config_lib.load()
    assert config.data.root.endswith("data/taxi")
    assert config.workspace == "workspace"
    assert config.metadata_path.name == "metadata.sqlite"
    assert config.serving_model_dir.parts[-2:] == ("serving_model", "taxi")
    assert config.beam.pipeline_args() == ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


def test_file_then_environment_then_flags(tmp_path, monkeypatch):
    path = write(
        tmp_path,
        """
workspace = "from-file"
[training]
train_steps = 10
hidden_units = [8, 4]
[evaluation]
value_lower_bound = 0.5
[beam]
extra_args = ["--max_num_records=5"]
""",
    )
    monkeypatch.setenv(config_lib.WORKSPACE_ENV, "from-env")
    config = config_lib.load(path, {"training.eval_steps": 3, "training.train_steps": None})
    assert config.workspace == "from-env"
    assert config.training.train_steps == 10  # None override leaves the file's value
    assert config.training.eval_steps == 3
    assert config.training.hidden_units == (8, 4)
    assert config.evaluation.value_lower_bound == 0.5
    assert config.beam.pipeline_args()[-1] == "--max_num_records=5"
    assert config_lib.load(path, {"workspace": "from-flag"}).workspace == "from-flag"


@pytest.mark.parametrize(
    "text, key",
    [
        ("[training]\ntrain_steps = -3\n", "training.train_steps"),
        ("[training]\ntrain_steps = 'many'\n", "training.train_steps"),
        ("[training]\nhidden_units = [0]\n", "training.hidden_units"),
        ("[training]\nsteps = 3\n", "training.steps"),
        ("[evaluation]\nvalue_metric = 'mse'\n", "evaluation.value_metric"),
        ("[evaluation]\nchange_tolerance = -1\n", "evaluation.change_tolerance"),
        ("[beam]\ndirect_running_mode = 'fast'\n", "beam.direct_running_mode"),
        ("[beam]\nextra_args = ['runner=Flink']\n", "beam.extra_args"),
        ("[data]\nschema = '/no/such/schema.pbtxt'\n", "data.schema"),
        ("model_name = 'my model'\n", "model_name"),
        ("colour = 'red'\n", "colour"),
        ("training = 3\n", "training"),
        ("enable_cache = 'yes'\n", "enable_cache"),
        ("[monitoring]\nrollback_after_windows = -1\n", "monitoring.rollback_after_windows"),
        ("[monitoring]\nlabel_key_column = ''\n", "monitoring.label_key_column"),
        ("[monitoring]\nmax_error_rate = 1.5\n", "monitoring.max_error_rate"),
        ("[monitoring]\nmin_error_requests = 0\n", "monitoring.min_error_requests"),
    ],
)
def test_bad_values_name_their_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as raised:
        config_lib.load(write(tmp_path, text))
    assert raised.value.key == key
    assert str(raised.value).startswith(f"{key}: ")
    assert "\n" not in str(raised.value)


def test_bad_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        config_lib.load(write(tmp_path, "[training\n"))
    with pytest.raises(ConfigError, match="no such file"):
        config_lib.load(tmp_path / "absent.toml")


def test_flag_overrides_are_validated_too():
    with pytest.raises(ConfigError) as raised:
        config_lib.load(None, {"training.train_steps": 0})
    assert raised.value.key == "training.train_steps"
