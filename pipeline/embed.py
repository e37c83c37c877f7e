"""The embed stage on Beam: a thin distribution of :mod:`tda.attribution.stages.embed`.

::

    ListFiles (Create) -> Spread (Reshuffle) -> EmbedFiles (ParDo: one chunks file each)

Each input file's chunks are embedded by one worker into ``embeddings/part-N.parquet``, in
row order, so the output is identical on every runner and any number of workers. The
model is handled RunInference-style (:class:`EncoderHandler`: ``load_model`` /
``run_inference``): loaded once per worker process through Beam's ``Shared`` handle and
shared by every thread of that process (GPU workers run several DoFn threads), on CUDA in
bf16 when a GPU is present. The driver plans before the pipeline runs and writes the
manifest after it finishes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.utils.shared import Shared

from tda.attribution.encoders import ConceptEncoder, load_encoder
from tda.attribution.stages.embed import (
    EmbedPlan,
    finish_embed_run,
    plan_embed_run,
    process_file,
    read_embed_completion,
)
from tda.schemas import EmbedConfig, EmbedCounts, EmbedManifest

from .common import Stage, StageCounters, run_stage

__all__ = [
    "COUNTER_NAMESPACE",
    "STAGE",
    "EmbedCorpus",
    "EmbedFileFn",
    "EmbedRunResult",
    "EncoderHandler",
    "run_embed",
]

COUNTER_NAMESPACE = "tda.embed"


class _Loaded:
    """Holder for the shared encoder (Shared needs a weak-referenceable object)."""

    def __init__(self, encoder: ConceptEncoder) -> None:
        self.encoder = encoder


class EncoderHandler:
    """Builds the encoder on the worker from its SPEC (never pickled from the driver) and
    runs one chunks file through it."""

    def __init__(self, plan: EmbedPlan) -> None:
        self._plan = plan

    def load_model(self) -> ConceptEncoder:
        config = self._plan.config
        return load_encoder(config.model, config.device, config.trust_remote_code)

    def run_inference(self, file_index: int, encoder: ConceptEncoder, count) -> EmbedCounts:
        return process_file(file_index, self._plan, encoder, count)


class EmbedFileFn(beam.DoFn):
    """file index -> EmbedCounts, writing that file's embeddings part."""

    def __init__(self, plan: EmbedPlan) -> None:
        self._plan = plan
        self._handler = EncoderHandler(plan)
        self._shared = Shared()
        self._encoder: ConceptEncoder | None = None
        self._counters = StageCounters(COUNTER_NAMESPACE)

    def setup(self) -> None:
        # One model per process: threads of this process acquire the same object.
        tag = self._plan.encoder.fingerprint + self._plan.config.device
        holder = self._shared.acquire(lambda: _Loaded(self._handler.load_model()), tag=tag)
        self._holder = holder  # keep a strong reference while this DoFn lives
        self._encoder = holder.encoder

    def process(self, file_index: int) -> Iterator[EmbedCounts]:
        if self._plan.config.resume:
            done = read_embed_completion(self._plan.config, file_index)
            if done is not None:
                self._counters("files_skipped", 1)
                yield done
                return
        yield self._handler.run_inference(file_index, self._encoder, self._counters)


class EmbedCorpus(beam.PTransform):
    """PBegin -> PCollection[EmbedCounts]: embed every file of the planned chunk run.

    Composable: ``tda build`` can apply it after the chunk stage in one pipeline."""

    def __init__(self, plan: EmbedPlan) -> None:
        super().__init__()
        self._plan = plan

    def expand(self, pbegin):
        files = [f.file_index for f in self._plan.chunks.files]
        return (
            pbegin
            | "ListFiles" >> beam.Create(files, reshuffle=False)
            | "Spread" >> beam.Reshuffle()
            | "EmbedFiles" >> beam.ParDo(EmbedFileFn(self._plan))
        )


@dataclass(frozen=True)
class EmbedRunResult:
    manifest: EmbedManifest
    counters: dict[str, int]


def run_embed(
    config: EmbedConfig,
    options: PipelineOptions | None = None,
    test_pipeline: beam.Pipeline | None = None,
) -> EmbedRunResult:
    """Plan, run the pipeline, write the manifest (Beam ``options`` pass through)."""
    return run_stage(STAGE, config, options, test_pipeline)


STAGE = Stage(
    name="embed",
    label="EmbedCorpus",
    namespace=COUNTER_NAMESPACE,
    plan=plan_embed_run,
    transform=EmbedCorpus,
    finish=finish_embed_run,
    units=lambda plan: len(plan.chunks.files),
    markers=lambda root: root.embed_completions_dir,
    result=EmbedRunResult,
)
