"""No tfx_ephemeral sdist for a local Beam run (pipeline/ops/beam_args.py); remote runners keep TFX's."""

from __future__ import annotations

from tfx.utils import dependency_utils

from pipeline import config as config_lib
from pipeline.ops import beam_args


def test_a_beam_executor_made_during_a_local_run_builds_no_tfx_sdist(monkeypatch):
    """TFX's own BaseBeamExecutor (StatisticsGen's), made as the LocalDagRunner makes it: inside the
    runner's local_dependencies (pipeline/ops/runner.py) no sdist and no --extra_package; outside, TFX
    builds one (only the build itself is replaced, by a counter: it takes seconds)."""
    from tfx.components.statistics_gen.executor import Executor
    from tfx.dsl.components.base.base_beam_executor import BaseBeamExecutor

    built = []
    monkeypatch.setattr(
        dependency_utils, "build_ephemeral_package", lambda: built.append(1) or "/tmp/tfx_ephemeral.tgz"
    )
    beam = config_lib.BeamConfig()
    args = beam.pipeline_args()
    with beam_args.local_dependencies(beam):
        executor = Executor(BaseBeamExecutor.Context(beam_pipeline_args=list(args)))
    assert built == [] and executor._beam_pipeline_args[: len(args)] == args
    assert not [a for a in executor._beam_pipeline_args if a.startswith("--extra_package")]
    outside = Executor(BaseBeamExecutor.Context(beam_pipeline_args=list(args)))
    assert built == [1] and "--extra_package=/tmp/tfx_ephemeral.tgz" in outside._beam_pipeline_args


def test_direct_runner_passes_beam_args_through_and_restores_tfx():
    original = dependency_utils.make_beam_dependency_flags
    args = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
    with beam_args.local_dependencies(config_lib.BeamConfig()):
        assert dependency_utils.make_beam_dependency_flags(args) == args
    assert dependency_utils.make_beam_dependency_flags is original


def test_remote_runners_keep_tfx_dependency_flags():
    remote = config_lib.from_mapping(
        {"beam": {"runner": "dataflow", "project": "p", "region": "r", "temp_location": "gs://b/t"}}
    ).beam
    assert beam_args.needs_tfx_package(remote)
    with beam_args.local_dependencies(remote):
        assert dependency_utils.make_beam_dependency_flags is not beam_args._unchanged
        # With a worker image set, TFX itself adds nothing (its own rule, kept as it is).
        flags = ["--runner=DataflowRunner", "--sdk_container_image=gcr.io/p/mlpipe:1"]
        assert dependency_utils.make_beam_dependency_flags(flags) == flags
