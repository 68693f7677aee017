"""EvalSample: the eval split the Evaluator scores, bounded by evaluation.max_examples.

Between ExampleGen and the Evaluator. It keeps the `max_examples` eval rows whose seeded hash of the
serialized tf.Example is smallest (a bottom-k sample): the same rows on every run and for the
candidate and the baseline, whatever the order or sharding of the files. When the eval split has no
more rows than the bound (or the bound is 0), every row is kept. The output Examples artifact records
`eval_population` (rows in ExampleGen's eval split) and `eval_sample` (rows written); the run summary
reads them (pipeline/metadata/evaluation.py confidence_lines).
"""
# No `from __future__ import annotations`: TFX's @component reads the annotations as types.

import hashlib
import os

import apache_beam as beam
from tfx.components.util import examples_utils
from tfx.dsl.component.experimental.annotations import (
    BeamComponentParameter,
    InputArtifact,
    OutputArtifact,
    Parameter,
)
from tfx.dsl.component.experimental.decorators import component
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_artifacts
from tfx.utils import io_utils

SPLIT = "eval"
POPULATION = "eval_population"
SAMPLE = "eval_sample"
_NAMESPACE = "mlpipe.eval_sample"


def sample_key(record: bytes, seed: int) -> bytes:
    """The record's rank in the sample: a keyed hash of its bytes (smallest first)."""
    return hashlib.blake2b(record, digest_size=8, key=seed.to_bytes(8, "big", signed=True)).digest()


class _Count(beam.DoFn):
    def __init__(self, name: str):
        self._name = name
        self._counter = beam.metrics.Metrics.counter(_NAMESPACE, name)

    def process(self, element):
        self._counter.inc()
        yield element


def _counter(result, name: str) -> int:
    query = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(_NAMESPACE).with_name(name))
    return int(sum(c.committed or 0 for c in query["counters"]))


@component(use_beam=True)
def EvalSample(
    examples: InputArtifact[standard_artifacts.Examples],
    sample: OutputArtifact[standard_artifacts.Examples],
    max_examples: Parameter[int],
    seed: Parameter[int],
    beam_pipeline: BeamComponentParameter[beam.Pipeline] = None,
) -> None:
    """Writes at most `max_examples` rows of the eval split (a seeded-hash sample; 0 = every row)."""
    pattern = io_utils.all_files_pattern(artifact_utils.get_split_uri([examples], SPLIT))
    sample.split_names = artifact_utils.encode_split_names([SPLIT])
    output = os.path.join(artifact_utils.get_split_uri([sample], SPLIT), "data_tfrecord")
    with beam_pipeline as p:
        rows = (
            p
            | "Read" >> beam.io.ReadFromTFRecord(pattern, coder=beam.coders.BytesCoder())
            | "CountPopulation" >> beam.ParDo(_Count(POPULATION))
        )
        if max_examples > 0:
            rows = (
                rows
                | "Key" >> beam.Map(lambda record: (sample_key(record, seed), record))
                | "Smallest" >> beam.combiners.Top.Smallest(max_examples)
                | "Unkey" >> beam.FlatMap(lambda keyed: [record for _, record in keyed])
            )
        _ = (
            rows
            | "CountSample" >> beam.ParDo(_Count(SAMPLE))
            | "Write"
            >> beam.io.WriteToTFRecord(
                output, file_name_suffix=".gz", compression_type=beam.io.filesystem.CompressionTypes.GZIP
            )
        )
    result = p.result
    examples_utils.set_payload_format(sample, example_gen_pb2.PayloadFormat.FORMAT_TF_EXAMPLE)
    examples_utils.set_file_format(sample, "tfrecords_gzip")
    sample.set_int_custom_property(POPULATION, _counter(result, POPULATION))
    sample.set_int_custom_property(SAMPLE, _counter(result, SAMPLE))
    sample.set_int_custom_property("max_examples", max_examples)
    sample.set_int_custom_property("sample_seed", seed)
