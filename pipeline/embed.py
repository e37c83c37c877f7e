"""The embed stage on Beam: a thin distribution of :mod:`tda.attribution.stages.embed`
through Beam's own ``RunInference``.

::

    ListFiles (Create) -> Spread (Reshuffle) -> EmbedFiles (RunInference: one chunks file
    per inference call)

An element is an input file's index; :class:`EmbedModelHandler` is a real Beam
``ModelHandler``: ``load_model`` builds the encoder on the worker from its SPEC (never
pickled from the driver) inside an :class:`EmbedStage`, ``run_inference`` embeds each
file of a batch (one file per batch, ``batch_elements_kwargs``) and returns its
``EmbedCounts``; finished files are skipped on ``--resume`` and every file writes
``embeddings/part-N.parquet`` in row order, so the output is identical on every runner
and any number of workers.

Where the model lives: by default RunInference loads it once per worker process and
every thread of that process shares it (GPU workers run several DoFn threads). A model
of :data:`LARGE_MODEL_HIDDEN` dimensions or more (an 8B Steerling) is a ``large_model``:
loaded once per host, in one process, whose threads embed the files every process of the
host hands them (Beam's ``share_model_across_processes``; a file's counters and timings
come back with its result). The driver plans before the pipeline runs and writes the
manifest after it finishes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler, RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from tda.attribution.stages.embed import EmbedPlan, EmbedStage
from tda.schemas import EmbedConfig, EmbedCounts, EmbedManifest

from .common import TIMINGS, StageCounters, StageTransform, run_stage

__all__ = [
    "COUNTER_NAMESPACE",
    "LARGE_MODEL_HIDDEN",
    "EmbedCorpus",
    "EmbedModelHandler",
    "EmbedRunResult",
    "run_embed",
]

COUNTER_NAMESPACE = "tda.embed"
# Hidden size from which a model is loaded once per host (share_model_across_processes):
# models this wide have billions of parameters (Steerling-8B: 4096), and one copy per
# worker process would not fit a GPU's memory; the builtin models (128-512) load per
# process, where threads share them without a round trip between processes.
LARGE_MODEL_HIDDEN = 2048


@dataclass(frozen=True)
class EmbedRunResult:
    manifest: EmbedManifest
    counters: dict[str, int]
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase, all files


class EmbedModelHandler(ModelHandler[int, EmbedCounts, EmbedStage]):
    """RunInference's model handler for the embed stage: example = an input file's index,
    prediction = its ``EmbedCounts``, model = an :class:`EmbedStage` holding the loaded
    encoder.

    ``large_model``: share one model across the host's processes (None: when the
    planned encoder is :data:`LARGE_MODEL_HIDDEN` wide or more); ``model_copies``: how
    many shared copies a host loads (Beam's meaning; implies sharing).
    """

    def __init__(
        self,
        plan: EmbedPlan,
        large_model: bool | None = None,
        model_copies: int | None = None,
    ) -> None:
        super().__init__()
        if large_model is None:
            large_model = plan.encoder.hidden_size >= LARGE_MODEL_HIDDEN
        self._large = large_model or model_copies is not None
        self._copies = model_copies
        self._plan = plan
        self._count = StageCounters(COUNTER_NAMESPACE)
        self._timings = StageCounters(COUNTER_NAMESPACE + TIMINGS)

    def batch_elements_kwargs(self) -> dict[str, int]:
        """One file per inference call: a file is already thousands of windows, batched
        by token budget inside the stage, and a marker per call keeps ``--resume``
        file-grained."""
        return {"min_batch_size": 1, "max_batch_size": 1}

    def share_model_across_processes(self) -> bool:
        return self._large

    def model_copies(self) -> int:
        return self._copies or 1

    def model_tag(self) -> str:
        """Names the loaded model for Beam's sharing: the same weights on the same
        device are one model, whichever RunInference step or pipeline asks."""
        return f"tda-embed-{self._plan.encoder.fingerprint}-{self._plan.config.device}"

    def load_model(self) -> EmbedStage:
        """The encoder from its SPEC, in an EmbedStage (weak-referenceable, as Beam's
        ``Shared`` needs)."""
        stage = EmbedStage()
        stage.setup(self._plan)
        return stage

    def run_inference(
        self,
        batch: Sequence[int],
        model: EmbedStage,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[EmbedCounts]:
        """Embed each file of ``batch`` (skipped when finished and resuming); its
        counters and timings, collected where the model runs (another process for a
        large model), are replayed into this worker's Beam counters."""
        out = []
        for file_index in batch:
            done = model.run_detached(self._plan, file_index)
            out.append(done.replay(self._count, self._timings))
        return out

    def get_metrics_namespace(self) -> str:
        return COUNTER_NAMESPACE + ".inference"  # Beam's own RunInference metrics


class EmbedCorpus(StageTransform):
    """PBegin -> PCollection[EmbedCounts]: embed every file of the planned chunk run.

    ``large_model`` / ``model_copies``: see :class:`EmbedModelHandler`."""

    runtime = EmbedStage
    root_label = "EmbedCorpus"
    list_label = "ListFiles"
    step_label = "EmbedFiles"
    result = EmbedRunResult

    def __init__(
        self,
        plan: EmbedPlan,
        runtime: EmbedStage | None = None,
        large_model: bool | None = None,
        model_copies: int | None = None,
    ) -> None:
        super().__init__(plan, runtime)
        self._handler = EmbedModelHandler(plan, large_model, model_copies)

    def step(self) -> beam.PTransform:
        return RunInference(self._handler, model_identifier=self._handler.model_tag())


def run_embed(
    config: EmbedConfig,
    options: PipelineOptions | None = None,
    test_pipeline: beam.Pipeline | None = None,
) -> EmbedRunResult:
    """Plan, run the pipeline, write the manifest (Beam ``options`` pass through)."""
    return run_stage(EmbedCorpus, config, options, test_pipeline)
