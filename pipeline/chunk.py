"""The chunk stage on Beam: a thin distribution of :mod:`tda.attribution.stages.chunk`.

::

    ListFiles (Create) -> Spread (Reshuffle) -> ChunkFiles (ParDo: one input file each)

Each input file is one element: its chunks table is written by one worker in ordinal
order, so the output is identical on every runner and any number of workers. The worker
loads the tokenizer from its SPEC (:meth:`ChunkStage.setup`, which refuses one that
differs from the driver's). The driver plans the run before the pipeline starts and
writes the manifest after it finishes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from tda.attribution.stages.chunk import ChunkStage
from tda.schemas import ChunkConfig, Manifest

from .common import StageTransform, run_stage

__all__ = ["COUNTER_NAMESPACE", "ChunkCorpus", "ChunkRunResult", "run_chunk"]

COUNTER_NAMESPACE = "tda.chunk"


@dataclass(frozen=True)
class ChunkRunResult:
    manifest: Manifest
    counters: dict[str, int]  # this run's Beam counters (resumed files count as skipped)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase, all files


class ChunkCorpus(StageTransform):
    """PBegin -> PCollection[FileCounts]: chunk every planned input file."""

    runtime = ChunkStage
    root_label = "ChunkCorpus"
    list_label = "ListFiles"
    step_label = "ChunkFiles"
    result = ChunkRunResult


def run_chunk(
    config: ChunkConfig,
    options: PipelineOptions | None = None,
    test_pipeline: beam.Pipeline | None = None,
) -> ChunkRunResult:
    """Plan, run the pipeline, write the manifest. ``options`` are Beam pipeline options,
    passed through unchanged (runner, workers, Dataflow/Spark/Flink settings)."""
    return run_stage(ChunkCorpus, config, options, test_pipeline)
