"""``tda build``: chunk -> embed -> index build into one root, as three Beam pipelines.

::

    ChunkCorpus (one pipeline) -> EmbedCorpus (one pipeline) -> BuildIndex (one pipeline)

Each stage is planned by the driver from the previous stage's manifest, so the stages run
one after another; each runs through the same :func:`~tda.pipeline.common.run_stage` and
stage transform as its own command (``run_chunk``, ``run_embed``, ``run_index``), which
is why a build's files equal the three stage commands' files.
``resume`` continues every stage: finished files and shards are skipped, a finished
stage is replayed from its markers and rewrites the same manifest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from tda.schemas import ChunkConfig, ConfigError, EmbedConfig, IndexConfig

from .chunk import ChunkCorpus, ChunkRunResult
from .common import build_pipeline, run_stage
from .embed import EmbedCorpus, EmbedRunResult
from .index import BuildIndex, IndexRunResult

__all__ = ["STAGES", "BuildProgress", "BuildResult", "run_build", "stage_pipeline"]

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


def run_build(
    chunk: ChunkConfig,
    embed: EmbedConfig,
    index: IndexConfig,
    options: PipelineOptions | None = None,
    progress: BuildProgress | None = None,
) -> BuildResult:
    """Run the three stages into one root (Beam ``options`` go to each pipeline)."""
    _check_one_root(chunk, embed, index)
    progress = progress or BuildProgress()
    results, seconds = {}, {}
    for stage, config in zip(STAGES, (chunk, embed, index), strict=True):
        name = stage.runtime.name
        started = time.monotonic()

        def planned(runtime, plan) -> None:
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
