"""The index stage on Beam: a thin distribution of :mod:`tda.attribution.stages.index`.

::

    ListShards (Create) -> Spread (Reshuffle) -> FillShards (ParDo: a group of shards each)

The driver trains the shared quantizer before the pipeline runs (one deterministic
sample) and writes the manifest after it finishes; each shard is filled in memory by one
worker from a group of embedding files and written once. A worker fills a group of
shards at once, one thread each (:meth:`~tda.attribution.stages.index.IndexStage.fill`);
the group size is :meth:`IndexPlan.fill_threads` (``--threads``, else the cores).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from tda.attribution.stages.index import IndexStage
from tda.schemas import IndexConfig, IndexManifest

from .common import StageTransform, run_stage

__all__ = ["COUNTER_NAMESPACE", "BuildIndex", "IndexRunResult", "run_index"]

COUNTER_NAMESPACE = "tda.index"


@dataclass(frozen=True)
class IndexRunResult:
    manifest: IndexManifest
    counters: dict[str, int]
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase, all shards


class BuildIndex(StageTransform):
    """PBegin -> PCollection[ShardInfo]: fill every planned shard (finished ones are
    skipped on ``--resume``)."""

    runtime = IndexStage
    root_label = "BuildIndex"
    list_label = "ListShards"
    step_label = "FillShards"
    result = IndexRunResult


def run_index(
    config: IndexConfig,
    options: PipelineOptions | None = None,
    test_pipeline: beam.Pipeline | None = None,
) -> IndexRunResult:
    """Plan and train (driver), fill shards (Beam), write the manifest (driver)."""
    return run_stage(BuildIndex, config, options, test_pipeline)
