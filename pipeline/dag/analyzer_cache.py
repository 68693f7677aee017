"""Incremental Transform: tf.Transform's analyzer cache carried from one span window to the next.

Wired as TFX's penguin example wires it (tfx/examples/penguin/penguin_pipeline_local.py: a Resolver
feeds the latest `TransformCache` into Transform's `analyzer_cache`), with one difference: the cache
is taken from the newest Transform that had *not yet seen the newest span*. tf.Transform keys each
cached accumulator by the dataset (the Examples artifact's URI) and by the analyzer's own graph, so
the spans the cache covers are not read again and only the new span is analysed; a changed
preprocessing_fn gives new keys and is analysed in full. Taking the newest cache outright would make
a re-run over the same window see a different input (the cache its predecessor wrote) and defeat
TFX's execution cache; this choice is a function of the window, so an unchanged re-run stays cached.

Only for the span layout (data/spans.py) with `data.analyzer_cache` on. The flat layout ingests every
CSV again on each run (a new Examples URI, so a cache could never hit): there Transform writes no
cache at all.
"""

from __future__ import annotations

from pipeline.dag import tfx_api as tfx
from pipeline.metadata import queries as metadata

RESOLVER = "transform_cache_resolver"


class CacheBeforeNewestSpanStrategy(tfx.dsl.experimental.ResolverStrategy):
    """Resolves `cache` to the newest TransformCache whose Transform saw only spans older than the newest one."""

    def resolve_artifacts(self, store, input_dict):
        examples = input_dict.get("examples", [])
        spans = [a.get_int_custom_property("span") for a in examples]
        newest = max(spans) if spans else None
        chosen = []
        for cache in sorted(input_dict.get("cache", []), key=lambda a: a.id, reverse=True):
            producer = metadata.producer_execution_id(store, cache.id)
            if producer is None or newest is None:
                continue
            seen = metadata.examples_spans(metadata.inputs(store, producer).get("examples", []))
            if seen and max(seen) < newest:
                chosen = [cache]
                break
        return {"cache": chosen, "examples": examples}


def enabled(config, use_spans: bool) -> bool:
    return use_spans and config.data.analyzer_cache


def resolver(example_gen_id: str, transform_id: str = "Transform") -> tfx.dsl.Resolver:
    return tfx.dsl.Resolver(
        strategy_class=CacheBeforeNewestSpanStrategy,
        cache=tfx.dsl.Channel(
            type=tfx.types.standard_artifacts.TransformCache,
            producer_component_id=transform_id,
            output_key="updated_analyzer_cache",
        ),
        examples=tfx.dsl.Channel(
            type=tfx.types.standard_artifacts.Examples, producer_component_id=example_gen_id, output_key="examples"
        ),
    ).with_id(RESOLVER)
