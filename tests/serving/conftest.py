"""Fixtures: toy and taxi SavedModels in version directories, and in-process servers on free ports."""

from __future__ import annotations

import os
import shutil
import time

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tests.serving import toy_model  # noqa: E402

from serving.config import ModelEntry, VersionPolicy  # noqa: E402
from serving.server import ModelServer, ServerOptions  # noqa: E402


@pytest.fixture(scope="session")
def toy_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("toy-exports"))


@pytest.fixture
def toy_versions(toy_cache, tmp_path):
    """make(versions) -> a base path holding those toy versions."""

    def make(versions, name="toy"):
        base = tmp_path / name
        base.mkdir(exist_ok=True)
        for v in versions:
            toy_model.copy_version(toy_cache, str(base), v)
        return str(base)

    return make


def start_server(models, **overrides) -> ModelServer:
    options = dict(models=models, port=0, rest_api_port=0, file_system_poll_wait_seconds=0.2, shutdown_grace_seconds=5)
    options.update(overrides)
    return ModelServer(ServerOptions(**options)).start()


def entry(name, base_path, policy=None, labels=None, **kw) -> ModelEntry:
    return ModelEntry(name, base_path, policy or VersionPolicy(), tuple(sorted((labels or {}).items())), **kw)


def wait_until(predicate, timeout=20.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


@pytest.fixture(scope="module")
def toy_module_server(tmp_path_factory):
    """Versions 1 and 2 of the toy model (policy all), labels stable=1 and canary=2."""
    cache = str(tmp_path_factory.mktemp("toy-module"))
    base = os.path.join(cache, "toy")
    os.makedirs(base)
    for v in (1, 2):
        toy_model.copy_version(str(tmp_path_factory.mktemp("exports")), base, v)
    server = start_server([entry("toy", base, VersionPolicy("all"), {"stable": 1, "canary": 2})])
    yield server
    server.stop()
    shutil.rmtree(cache, ignore_errors=True)
