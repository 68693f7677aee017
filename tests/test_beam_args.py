"""No tfx_ephemeral sdist for a local Beam run (pipeline/ops/beam_args.py); remote runners keep TFX's."""

from __future__ import annotations

from tfx.utils import dependency_utils

from pipeline import config as config_lib
from pipeline.ops import beam_args


def test_the_shared_run_built_no_tfx_sdist(first_run):
    workspace, code, out, err = first_run
    assert code == 0, out + err
    log = min((workspace / "logs").glob("run-*.log"))  # the first run in it: the shared one
    text = log.read_text()
    assert "Component Transform is running" in text  # TFX's INFO records are in the log ...
    assert "Attempting to infer TFX Python dependency" not in text  # ... but no sdist was built
    assert "tfx_ephemeral" not in text and "--extra_package" not in text


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
