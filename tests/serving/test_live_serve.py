"""The real `mlpipe serve` console script, as a subprocess: label changes through the config poll."""

from __future__ import annotations

import subprocess

import requests

from tests.serving import toy_model
from tests.serving.conftest import MLPIPE, REPO, live_serve, wait_until

POLL_SECONDS = 4  # longer than `mlpipe label set` takes, so the change lands before the first poll


def _mlpipe(*argv: str, env=None) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([MLPIPE, *argv], env=env, capture_output=True, text=True, timeout=300)


def _label_answer(server, label: str):
    """What the version under `label` predicts for x=0 (the toy model's output is its version)."""
    r = requests.post(server.url(f"/v1/models/taxi/labels/{label}:predict"), json={"instances": [0.0]}, timeout=30)
    return r.json()["predictions"][0] if r.status_code == 200 else None


def test_a_label_set_right_after_start_is_applied_within_the_poll_period(toy_cache, tmp_path):
    workspace = tmp_path / "ws"
    base = workspace / "serving_model" / "taxi"
    base.mkdir(parents=True)
    for v in (1, 2):
        toy_model.copy_version(toy_cache, str(base), v)
    done = _mlpipe("label", "set", "stable", "1", "--workspace", str(workspace))
    assert done.returncode == 0, done.stderr
    config = workspace / "serving_model" / "models.config"

    with live_serve(
        "--model_config_file",
        str(config),
        "--model_config_file_poll_wait_seconds",
        str(POLL_SECONDS),
        "--file_system_poll_wait_seconds",
        "0",
    ) as server:
        assert _label_answer(server, "stable") == 1.0
        # Right after start: before the config poll has run even once.
        moved = _mlpipe("label", "set", "stable", "2", "--workspace", str(workspace))
        assert moved.returncode == 0, moved.stderr
        # A poll period, plus one for the poll that was under way, plus loading: bounded poll on the answer.
        try:
            wait_until(lambda: _label_answer(server, "stable") == 2.0, timeout=POLL_SECONDS * 2 + 30)
        except AssertionError:
            raise AssertionError(f"label not moved; server said:\n{server.output}") from None
        assert "model config file changed; applying it" in server.output
