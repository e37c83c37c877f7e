"""``tda build``: chunk -> embed -> index build into one root, as three Beam pipelines.

::

    ChunkCorpus (one pipeline) -> EmbedCorpus (one pipeline) -> BuildIndex (one pipeline)

Each stage is planned by the driver from the previous stage's manifest, so the stages run
one after another; each runs through the same :func:`~tda.pipeline.common.run_stage` and
stage transform as its own command (``run_chunk``, ``run_embed``, ``run_index``), which
is why a build's files equal the three stage commands' files.
``resume`` continues every stage: finished files and shards are skipped, a finished
stage is replayed from its markers and rewrites the same manifest.

Before the first stage the driver loads the model (:func:`check_model`), so a tampered,
missing or unknown model, or a ``--tokenizer`` that is not the model's, is refused in
seconds rather than after the whole chunk stage; the embed stage's driver then plans with
that same loaded model (the workers load their own, as always).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from tda.attribution.encoders import ConceptEncoder, load_encoder
from tda.attribution.stages.embed import EmbedStage
from tda.schemas import ChunkConfig, ConfigError, EmbedConfig, IndexConfig

from .chunk import ChunkCorpus, ChunkRunResult
from .common import build_pipeline, run_stage
from .embed import EmbedCorpus, EmbedRunResult
from .index import BuildIndex, IndexRunResult

__all__ = [
    "STAGES",
    "BuildProgress",
    "BuildResult",
    "check_model",
    "run_build",
    "stage_pipeline",
]

# The build's stages in order, each as its stage transform (runtime, labels, result).
STAGES = (ChunkCorpus, EmbedCorpus, BuildIndex)


class BuildProgress:
    """Callbacks of a build (the CLI draws a progress display from them; no-ops here).

    ``start(stage, units, fs, markers)``: planned; ``units`` work items whose completion
    markers appear in the folder ``markers`` of the fsspec filesystem ``fs`` as they
    finish (on any runner: the folder is under the build root).
    ``done(stage, result, seconds)``: the stage's manifest is written.
    """

    def start(self, stage: str, units: int, fs, markers: str) -> None:
        pass

    def done(self, stage: str, result, seconds: float) -> None:
        pass


@dataclass(frozen=True)
class BuildResult:
    chunk: ChunkRunResult
    embed: EmbedRunResult
    index: IndexRunResult
    seconds: dict[str, float] = field(default_factory=dict)


def _check_one_root(chunk: ChunkConfig, embed: EmbedConfig, index: IndexConfig) -> None:
    roots = {chunk.out, embed.root, index.root}
    if len(roots) != 1:
        raise ConfigError(f"a build writes one root; got {sorted(roots)}")


def check_model(chunk: ChunkConfig, embed: EmbedConfig) -> ConceptEncoder:
    """Load the build's model (``embed.model`` on ``embed.device``) and check that the
    chunk stage's tokenizer is the model's own -> the loaded encoder. Raises one line
    (EncoderError: unknown scheme, missing files, weights that do not match their
    fingerprint; ConfigError: another tokenizer) before anything is written."""
    from tda.attribution.corpus.tokenizer import load_tokenizer

    encoder = load_encoder(embed.model, embed.device, embed.trust_remote_code)
    tokenizer = load_tokenizer(chunk.tokenizer).info
    if tokenizer.fingerprint != encoder.info.tokenizer_fingerprint:
        raise ConfigError(
            f"--tokenizer {chunk.tokenizer} ({tokenizer.fingerprint[:19]}) is not the model's "
            f"tokenizer ({encoder.info.tokenizer_fingerprint[:19]}); leave --tokenizer out to "
            f"chunk with the model's own"
        )
    return encoder


def _embed_with(encoder: ConceptEncoder) -> type[EmbedCorpus]:
    """EmbedCorpus whose driver plans with ``encoder`` (loaded by :func:`check_model`)
    instead of loading the model again. The driver holds the model through the chunk
    stage (the memory the embed stage's planning needs anyway) and :func:`run_build` lets
    go of it once the embed stage is planned, before the embed workers load theirs."""
    held = [encoder]

    class PlannedEmbedStage(EmbedStage):
        def __init__(self) -> None:
            super().__init__(held.pop() if held else None)

    return type("EmbedCorpus", (EmbedCorpus,), {"runtime": PlannedEmbedStage})


def run_build(
    chunk: ChunkConfig,
    embed: EmbedConfig,
    index: IndexConfig,
    options: PipelineOptions | None = None,
    progress: BuildProgress | None = None,
) -> BuildResult:
    """Run the three stages into one root (Beam ``options`` go to each pipeline), after
    :func:`check_model`."""
    _check_one_root(chunk, embed, index)
    progress = progress or BuildProgress()
    stages = (STAGES[0], _embed_with(check_model(chunk, embed)), STAGES[2])
    results, seconds = {}, {}
    for stage, config in zip(stages, (chunk, embed, index), strict=True):
        name = stage.runtime.name
        started = time.monotonic()

        def planned(runtime, plan) -> None:
            if isinstance(runtime, EmbedStage):
                runtime.encoder = None  # planned; workers load their own
            fs, markers = runtime.markers(plan)
            progress.start(runtime.name, len(runtime.units(plan)), fs, markers)

        results[name] = run_stage(stage, config, options, on_planned=planned)
        seconds[name] = time.monotonic() - started
        progress.done(name, results[name], seconds[name])
    return BuildResult(**results, seconds=seconds)


def stage_pipeline(stage: str, config, options: PipelineOptions, runner=None) -> beam.Pipeline:
    """Plan one stage and return its pipeline without running it (to translate it to the
    portable pipeline proto, as a remote runner would). Planning writes the stage's run
    record into the root, exactly as a real run's driver does."""
    spec = next((s for s in STAGES if s.runtime.name == stage), None)
    if spec is None:
        raise ConfigError(f"unknown stage {stage!r}; one of {[s.runtime.name for s in STAGES]}")
    runtime = spec.runtime()
    return build_pipeline(
        spec.root_label, spec(runtime.plan(config), runtime), options, runner=runner
    )
