"""The index stage on Beam: a thin distribution of :mod:`tda.attribution.index_build`.

::

    ListShards (Create) -> Spread (Reshuffle) -> FillShards (ParDo: one shard each)

The driver trains the shared quantizer before the pipeline runs (one deterministic
sample) and writes the manifest after it finishes; each shard is filled in memory by one
worker from a group of embedding files and written once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from tda.attribution.index_build import (
    IndexPlan,
    fill_shard,
    finish_index_run,
    plan_index_run,
    read_shard_completion,
)
from tda.schemas import IndexConfig, IndexManifest, ShardInfo

from .common import StageCounters, run_transform

__all__ = ["COUNTER_NAMESPACE", "BuildIndex", "FillShardFn", "IndexRunResult", "run_index"]

COUNTER_NAMESPACE = "tda.index"


class FillShardFn(beam.DoFn):
    """shard number -> ShardInfo, writing ``index/shards/shard-N.faiss``."""

    def __init__(self, plan: IndexPlan) -> None:
        self._plan = plan
        self._count = StageCounters(COUNTER_NAMESPACE)

    def process(self, shard: int) -> Iterator[ShardInfo]:
        if self._plan.config.resume:
            done = read_shard_completion(self._plan.config, shard)
            if done is not None:
                self._count("shards_skipped", 1)
                yield done
                return
        yield fill_shard(self._plan, shard, self._count)


class BuildIndex(beam.PTransform):
    """PBegin -> PCollection[ShardInfo]: fill every planned shard."""

    def __init__(self, plan: IndexPlan) -> None:
        super().__init__()
        self._plan = plan

    def expand(self, pbegin):
        return (
            pbegin
            | "ListShards" >> beam.Create(list(range(len(self._plan.shards))), reshuffle=False)
            | "Spread" >> beam.Reshuffle()
            | "FillShards" >> beam.ParDo(FillShardFn(self._plan))
        )


@dataclass(frozen=True)
class IndexRunResult:
    manifest: IndexManifest
    counters: dict[str, int]


def run_index(
    config: IndexConfig,
    options: PipelineOptions | None = None,
    test_pipeline: beam.Pipeline | None = None,
) -> IndexRunResult:
    """Plan and train (driver), fill shards (Beam), write the manifest (driver)."""
    plan = plan_index_run(config)
    counters = run_transform(
        "BuildIndex", BuildIndex(plan), COUNTER_NAMESPACE, options, test_pipeline
    )
    return IndexRunResult(manifest=finish_index_run(plan), counters=counters)
