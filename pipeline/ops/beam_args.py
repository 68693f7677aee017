"""No `tfx_ephemeral` sdist for a local Beam run.

TFX's BaseBeamExecutor passes its Beam args through `tfx.utils.dependency_utils.make_beam_dependency_flags`,
which, unless one of --extra_packages/--setup_file/--requirements_file/--sdk_container_image is set,
copies the installed tfx package, builds a `tfx_ephemeral` sdist from it (`setup.py sdist`, about 4 s
here) and appends `--extra_package=<sdist>`: once per Beam component, every run. That package only
matters to remote workers (Dataflow, Flink, Spark), which must install TFX; the DirectRunner runs
every bundle in this interpreter (or, multi_processing, in subprocesses of this virtualenv) and never
stages it. So for `beam.runner = "direct"` the run skips it; every other runner keeps TFX's behaviour.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from pipeline.config import BeamConfig

log = logging.getLogger(__name__)


def needs_tfx_package(beam: BeamConfig) -> bool:
    """Whether Beam workers run outside this virtualenv, so TFX must ship to them."""
    return beam.runner != "direct"


def _unchanged(beam_pipeline_args: list[str]) -> list[str]:
    log.info("beam.runner = direct: no tfx_ephemeral sdist (workers run in this virtualenv)")
    return list(beam_pipeline_args)


@contextlib.contextmanager
def local_dependencies(beam: BeamConfig) -> Iterator[None]:
    """While the LocalDagRunner runs in this process: TFX's dependency flags for a local run are the args as given."""
    if needs_tfx_package(beam):
        yield
        return
    from tfx.utils import dependency_utils

    original = dependency_utils.make_beam_dependency_flags
    dependency_utils.make_beam_dependency_flags = _unchanged
    try:
        yield
    finally:
        dependency_utils.make_beam_dependency_flags = original
