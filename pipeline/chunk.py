"""The chunk stage on Beam: a thin distribution of :mod:`tda.attribution.stages.chunk`.

::

    ListFiles (Create) -> Spread (Reshuffle) -> ChunkFiles (ParDo: one input file each)

Each input file is one element: its chunks table is written by one worker in ordinal
order, so the output is identical on every runner and any number of workers. The driver
plans the run before the pipeline starts and writes the manifest after it finishes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from tda.attribution.corpus.tokenizer import TokenizerError, load_tokenizer
from tda.attribution.stages.chunk import (
    ChunkPlan,
    finish_chunk_run,
    plan_chunk_run,
    process_file,
    read_completion,
)
from tda.schemas import ChunkConfig, FileCounts, InputFile, Manifest

from .common import Stage, StageCounters, run_stage

__all__ = [
    "COUNTER_NAMESPACE",
    "STAGE",
    "ChunkCorpus",
    "ChunkFileFn",
    "ChunkRunResult",
    "run_chunk",
]

COUNTER_NAMESPACE = "tda.chunk"


class ChunkFileFn(beam.DoFn):
    """InputFile -> FileCounts, writing the file's chunk and dead-letter parts.

    The tokenizer is loaded in ``setup()`` on the worker from its SPEC (never pickled from
    the driver) and must have the fingerprint the driver planned with.
    """

    def __init__(self, config: ChunkConfig, tokenizer_fingerprint: str) -> None:
        self._config = config
        self._fingerprint = tokenizer_fingerprint
        self._tokenizer = None
        self._count = StageCounters(COUNTER_NAMESPACE)

    def setup(self) -> None:
        self._tokenizer = load_tokenizer(self._config.tokenizer)
        if self._tokenizer.info.fingerprint != self._fingerprint:
            raise TokenizerError(
                f"the tokenizer at {self._config.tokenizer} on this worker differs from the "
                f"driver's ({self._tokenizer.info.fingerprint} != {self._fingerprint}); "
                f"give a path every worker reads the same file from (e.g. gs://...)"
            )

    def process(self, input_file: InputFile) -> Iterator[FileCounts]:
        if self._config.resume:
            done = read_completion(self._config, input_file.index)
            if done is not None:
                self._count("files_skipped", 1)
                yield done
                return
        yield process_file(input_file, self._config, self._tokenizer, self._count)


class ChunkCorpus(beam.PTransform):
    """PBegin -> PCollection[FileCounts]: chunk every planned input file."""

    def __init__(self, plan: ChunkPlan) -> None:
        super().__init__()
        self._plan = plan

    def expand(self, pbegin):
        return (
            pbegin
            | "ListFiles" >> beam.Create(list(self._plan.inputs), reshuffle=False)
            | "Spread" >> beam.Reshuffle()
            | "ChunkFiles"
            >> beam.ParDo(ChunkFileFn(self._plan.config, self._plan.tokenizer.fingerprint))
        )


@dataclass(frozen=True)
class ChunkRunResult:
    manifest: Manifest
    counters: dict[str, int]  # this run's Beam counters (resumed files count as skipped)


def run_chunk(
    config: ChunkConfig,
    options: PipelineOptions | None = None,
    test_pipeline: beam.Pipeline | None = None,
) -> ChunkRunResult:
    """Plan, run the pipeline, write the manifest. ``options`` are Beam pipeline options,
    passed through unchanged (runner, workers, Dataflow/Spark/Flink settings)."""
    return run_stage(STAGE, config, options, test_pipeline)


STAGE = Stage(
    name="chunk",
    label="ChunkCorpus",
    namespace=COUNTER_NAMESPACE,
    plan=plan_chunk_run,
    transform=ChunkCorpus,
    finish=finish_chunk_run,
    units=lambda plan: len(plan.inputs),
    markers=lambda root: root.completions_dir,
    result=ChunkRunResult,
)
