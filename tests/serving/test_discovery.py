"""Many models without a config: --model_base_path as a serving root, every model directory served.

Through the real entry point (`python -m serving`); each model may carry a model.config (TF Serving's
ModelConfig text) with its own version policy and labels; new model directories are picked up by polling.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys

import requests

from serving import cli
from tests.serving import toy_model
from tests.serving.conftest import wait_until

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _predict(rest, path, x=2.0):
    return requests.post(f"http://127.0.0.1:{rest}/v1/models/{path}:predict", json={"instances": [x]}, timeout=30)


def _versions(rest, name):
    r = requests.get(f"http://127.0.0.1:{rest}/v1/models/{name}", timeout=30)
    return [s["version"] for s in r.json()["model_version_status"] if s["state"] == "AVAILABLE"] if r.ok else None


def test_serving_root_serves_each_model_with_its_own_policy_and_labels_and_picks_up_new_ones(toy_cache, tmp_path):
    root = tmp_path / "models"
    for version in (1, 2):
        toy_model.copy_version(toy_cache, str(root / "alpha"), version)
    (root / "alpha" / "model.config").write_text(
        'model_version_policy { all {} }\nversion_labels { key: "stable" value: 1 }\n'
    )
    for version in (1, 2):
        toy_model.copy_version(toy_cache, str(root / "beta"), version)  # no model.config: the default, latest
    rest, grpc_port = _free_port(), _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serving",
            "--model_base_path",
            str(root),
            "--rest_api_port",
            str(rest),
            "--port",
            str(grpc_port),
            "--file_system_poll_wait_seconds",
            "0.2",
            "--workspace",
            str(tmp_path / "ws"),
        ],
        cwd=str(tmp_path),
        env=dict(os.environ, PYTHONPATH=REPO),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def up():
            try:
                return _versions(rest, "alpha") and _versions(rest, "beta")
            except requests.ConnectionError:
                return proc.poll() is not None

        wait_until(up, timeout=120, interval=0.3)
        assert proc.poll() is None
        assert _versions(rest, "alpha") == ["2", "1"]  # its model.config: all versions
        assert _versions(rest, "beta") == ["2"]  # the default policy
        assert _predict(rest, "alpha/labels/stable").json() == {"predictions": [2.0]}  # 0.5 * 2 + version 1
        assert _predict(rest, "alpha").json() == {"predictions": [3.0]}
        assert _predict(rest, "beta/labels/stable").status_code == 400  # labels are per model

        staging = tmp_path / "staging"  # new model directories appear whole (renamed in), as a push does
        toy_model.copy_version(toy_cache, str(staging / "gamma"), 1)
        (staging / "broken").mkdir()
        (staging / "broken" / "model.config").write_text("model_version_policy { nonsense {} }")
        os.rename(staging / "broken", root / "broken")
        os.rename(staging / "gamma", root / "gamma")  # no restart
        wait_until(lambda: _versions(rest, "gamma") == ["1"], timeout=60, interval=0.2)
        assert _predict(rest, "gamma").json() == {"predictions": [2.0]}
        assert _predict(rest, "broken").status_code == 404

        shutil.rmtree(root / "beta")  # a removed model directory stops being served
        wait_until(lambda: _predict(rest, "beta").status_code == 404, timeout=60, interval=0.2)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, output
    assert f"serving every model directory under {root}" in output
    assert "model discovery: new model(s) gamma" in output
    assert "broken/model.config is not a valid ModelConfig text proto" in output


def test_version_labels_flag_with_a_serving_root_is_a_clear_error(toy_cache, tmp_path, capsys):
    toy_model.copy_version(toy_cache, str(tmp_path / "models" / "alpha"), 1)
    code = cli.main(
        [
            "--model_base_path",
            str(tmp_path / "models"),
            "--version_labels",
            "stable=1",
            "--workspace",
            str(tmp_path / "ws"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "--version_labels applies to one model" in err and "model.config" in err


def test_a_model_directory_with_versions_is_still_one_model(toy_cache, tmp_path):
    toy_model.copy_version(toy_cache, str(tmp_path / "taxi"), 1)
    parser = cli.argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--model_base_path", str(tmp_path / "taxi")])
    args.workspace, args.config = str(tmp_path / "ws"), None
    options = cli.build_options(args)
    assert [m.base_path for m in options.models] == [str(tmp_path / "taxi")] and options.model_roots == []
