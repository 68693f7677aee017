"""The part of TFX's public API (``tfx.v1``) the pipeline uses, imported from the modules that define it.

``from tfx import v1`` also imports ``tfx.v1.extensions`` (Vertex AI / google-cloud-aiplatform) and
``tfx.v1.orchestration.experimental`` (the Kubeflow runners, kfp): about half of a fully cached
``mlpipe run``'s seconds, none of which a local run uses (issue 17). ``from pipeline.dag import tfx_api
as tfx`` gives the same names (``tfx.dsl.Resolver``, ``tfx.proto.TrainArgs``, ...) without them; only
``mlpipe compile`` imports the Kubeflow runner (pipeline/ops/deploy.py). tests/test_cli_imports.py
guards that a cached run imports neither.
"""

from __future__ import annotations

from types import SimpleNamespace

from tfx.components.evaluator.component import Evaluator
from tfx.components.example_gen.csv_example_gen.component import CsvExampleGen
from tfx.components.example_validator.component import ExampleValidator
from tfx.components.schema_gen.component import SchemaGen
from tfx.components.schema_gen.import_schema_gen.component import ImportSchemaGen
from tfx.components.statistics_gen.component import StatisticsGen
from tfx.components.trainer.component import Trainer
from tfx.components.transform.component import Transform
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.dsl.components.common.resolver import Resolver, ResolverStrategy
from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import LatestBlessedModelStrategy
from tfx.dsl.input_resolution.strategies.span_range_strategy import SpanRangeStrategy
from tfx.orchestration.local.local_dag_runner import LocalDagRunner
from tfx.orchestration.pipeline import Pipeline
from tfx.proto.example_gen_pb2 import Input, Output, SplitConfig
from tfx.proto.pusher_pb2 import PushDestination
from tfx.proto.range_config_pb2 import RangeConfig, RollingRange
from tfx.proto.trainer_pb2 import EvalArgs, TrainArgs
from tfx.types import standard_artifacts
from tfx.types.channel import Channel

components = SimpleNamespace(
    CsvExampleGen=CsvExampleGen,
    StatisticsGen=StatisticsGen,
    SchemaGen=SchemaGen,
    ImportSchemaGen=ImportSchemaGen,
    ExampleValidator=ExampleValidator,
    Transform=Transform,
    Trainer=Trainer,
    Evaluator=Evaluator,
)
dsl = SimpleNamespace(
    Pipeline=Pipeline,
    Resolver=Resolver,
    Channel=Channel,
    components=SimpleNamespace(
        component=component, InputArtifact=InputArtifact, OutputArtifact=OutputArtifact, Parameter=Parameter
    ),
    experimental=SimpleNamespace(
        ResolverStrategy=ResolverStrategy,
        SpanRangeStrategy=SpanRangeStrategy,
        LatestBlessedModelStrategy=LatestBlessedModelStrategy,
    ),
)
proto = SimpleNamespace(
    Input=Input,
    Output=Output,
    SplitConfig=SplitConfig,
    RangeConfig=RangeConfig,
    RollingRange=RollingRange,
    TrainArgs=TrainArgs,
    EvalArgs=EvalArgs,
    PushDestination=PushDestination,
)
types = SimpleNamespace(standard_artifacts=standard_artifacts)
orchestration = SimpleNamespace(LocalDagRunner=LocalDagRunner)
