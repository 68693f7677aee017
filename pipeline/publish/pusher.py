"""A Pusher whose filesystem push is atomic: a model version appears whole or not at all.

TFX's Pusher copies the model file by file straight into ``<base>/<version>/``; a process killed
mid-copy leaves a partial version that TF Serving (or mlpipe serve) would try to load. This
executor publishes through atomic.py instead (a hidden temp copy renamed into place; leftovers of
dead pushes removed by the next one). Versions are unix seconds, strictly increasing.
"""

import json
from typing import Any, Dict, List

from absl import logging
from tfx import types
from tfx.components.pusher import component as pusher_component
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.components.base import base_component, executor_spec
from tfx.proto import pusher_pb2
from tfx.types import artifact, artifact_utils, component_spec, standard_artifacts, standard_component_specs
from tfx.utils import io_utils, proto_utils

from pipeline.publish import serving_assets
from pipeline.publish.approvals import HOLD_DIR_KEY  # release.mode = manual: push there, held
from pipeline.publish.atomic import atomic_push, next_version


def _custom_config(exec_properties: Dict[str, Any]) -> dict:
    raw = exec_properties.get("custom_config")
    if isinstance(raw, str):
        return json.loads(raw) if raw else {}
    return dict(raw or {})


class AtomicPusherExecutor(pusher_executor.Executor):
    """TFX's Pusher executor with the filesystem copy replaced by :func:`atomic_push`."""

    def Do(
        self,
        input_dict: Dict[str, List[types.Artifact]],
        output_dict: Dict[str, List[types.Artifact]],
        exec_properties: Dict[str, Any],
    ) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        model_push = artifact_utils.get_single_instance(output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        if not self.CheckBlessing(input_dict) or not replay_passed(input_dict):
            self._MarkNotPushed(model_push)
            return
        model_path = self.GetModelPath(input_dict)
        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination)
        if destination.WhichOneof("destination") != "filesystem":
            raise NotImplementedError("AtomicPusherExecutor pushes to a filesystem destination only")
        uuid = serving_assets.new_mlmd_uuid()
        extra = serving_assets.extra_files(uuid, exec_properties.get("custom_config"), model_path)
        base = destination.filesystem.base_directory
        hold = _custom_config(exec_properties).get(HOLD_DIR_KEY)  # manual release: held, not served
        # a held version is numbered after every served one as well as every held one
        version = str(max(int(next_version(base)), int(next_version(hold)))) if hold else None
        version, serving_path = atomic_push(model_path, hold or base, extra, version=version)
        logging.info("Model written to serving path %s.", serving_path)
        io_utils.copy_dir(model_path, model_push.uri)
        model_push.set_string_custom_property(serving_assets.MLMD_UUID_PROPERTY, uuid)
        self._MarkPushed(model_push, pushed_destination=serving_path, pushed_version=version)


REPLAY_VERDICT_KEY = "replay_verdict"


class ReplayVerdict(artifact.Artifact):
    """The replay gate's verdict (pipeline/dag/replay_gate.py): PASSED, FAILED or SKIPPED, reasons, numbers."""

    TYPE_NAME = "mlpipe.ReplayVerdict"


def replay_passed(input_dict: Dict[str, List[types.Artifact]]) -> bool:
    """The replay gate's verdict (pipeline/dag/replay_gate.py), when the Pusher has one: FAILED blocks."""
    verdicts = input_dict.get(REPLAY_VERDICT_KEY) or []
    if verdicts and not verdicts[0].get_int_custom_property("blessed"):
        logging.info("Model was blocked by the replay gate (%s)", verdicts[0].uri)
        return False
    return True


class GatedPusherSpec(standard_component_specs.PusherSpec):
    """TFX's PusherSpec plus the replay gate's verdict (optional, like the blessings)."""

    INPUTS = {
        **standard_component_specs.PusherSpec.INPUTS,
        REPLAY_VERDICT_KEY: component_spec.ChannelParameter(type=ReplayVerdict, optional=True),
    }


class AtomicPusher(pusher_component.Pusher):
    """TFX's Pusher component running AtomicPusherExecutor; use `.with_id("Pusher")` to keep its node id.

    Like TFX's Pusher it takes model_blessing and infra_blessing; it also takes the replay gate's verdict.
    """

    SPEC_CLASS = GatedPusherSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(AtomicPusherExecutor)

    def __init__(
        self,
        model=None,
        model_blessing=None,
        infra_blessing=None,
        replay_verdict=None,
        push_destination=None,
        custom_config=None,
    ):
        from tfx.utils import json_utils

        spec = GatedPusherSpec(
            model=model,
            model_blessing=model_blessing,
            infra_blessing=infra_blessing,
            replay_verdict=replay_verdict,
            push_destination=push_destination,
            custom_config=json_utils.dumps(custom_config),
            pushed_model=types.Channel(type=standard_artifacts.PushedModel),
        )
        base_component.BaseComponent.__init__(self, spec=spec)
