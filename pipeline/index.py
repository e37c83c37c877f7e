"""The index stage on Beam: a thin distribution of :mod:`tda.attribution.index.build`.

::

    ListShards (Create) -> Spread (Reshuffle) -> FillShards (ParDo: a group of shards each)

The driver trains the shared quantizer before the pipeline runs (one deterministic
sample) and writes the manifest after it finishes; each shard is filled in memory by one
worker from a group of embedding files and written once. A worker fills a group of
shards at once, one thread each (:func:`~tda.attribution.index.build.fill_shards`); the
group size is :meth:`IndexPlan.fill_threads` (``--threads``, else the driver's cores).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from tda.attribution.stages.index import (
    IndexPlan,
    fill_shards,
    finish_index_run,
    plan_index_run,
    read_shard_completion,
)
from tda.schemas import IndexConfig, IndexManifest, ShardInfo

from .common import Stage, StageCounters, run_stage

__all__ = ["COUNTER_NAMESPACE", "STAGE", "BuildIndex", "FillShardFn", "IndexRunResult", "run_index"]

COUNTER_NAMESPACE = "tda.index"


class FillShardFn(beam.DoFn):
    """(shard numbers) -> a ShardInfo each, writing ``index/shards/shard-N.faiss``;
    finished shards are skipped on ``--resume``."""

    def __init__(self, plan: IndexPlan, threads: int) -> None:
        self._plan = plan
        self._threads = threads
        self._count = StageCounters(COUNTER_NAMESPACE)

    def process(self, shards: tuple[int, ...]) -> Iterator[ShardInfo]:
        todo = []
        for shard in shards:
            done = (
                read_shard_completion(self._plan.config, shard)
                if self._plan.config.resume
                else None
            )
            if done is not None:
                self._count("shards_skipped", 1)
                yield done
            else:
                todo.append(shard)
        yield from fill_shards(self._plan, todo, self._threads, self._count)


class BuildIndex(beam.PTransform):
    """PBegin -> PCollection[ShardInfo]: fill every planned shard."""

    def __init__(self, plan: IndexPlan) -> None:
        super().__init__()
        self._plan = plan

    def expand(self, pbegin):
        threads = self._plan.fill_threads()
        numbers = list(range(len(self._plan.shards)))
        groups = [tuple(numbers[i : i + threads]) for i in range(0, len(numbers), threads)]
        return (
            pbegin
            | "ListShards" >> beam.Create(groups, reshuffle=False)
            | "Spread" >> beam.Reshuffle()
            | "FillShards" >> beam.ParDo(FillShardFn(self._plan, threads))
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
    return run_stage(STAGE, config, options, test_pipeline)


STAGE = Stage(
    name="index",
    label="BuildIndex",
    namespace=COUNTER_NAMESPACE,
    plan=plan_index_run,
    transform=BuildIndex,
    finish=finish_index_run,
    units=lambda plan: len(plan.shards),
    markers=lambda root: root.index_completions_dir,
    result=IndexRunResult,
)
