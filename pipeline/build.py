"""``tda build``: chunk -> embed -> index build into one root, as three Beam pipelines.

::

    ChunkCorpus (one pipeline) -> EmbedCorpus (one pipeline) -> BuildIndex (one pipeline)

Each stage is planned by the driver from the previous stage's manifest, so the stages run
one after another; each runs exactly the code of its own command (``run_chunk``,
``run_embed``, ``run_index`` are the same plan -> transform -> finish steps), which is why
a build's files equal the three stage commands' files. ``resume`` continues every stage:
finished files and shards are skipped, a finished stage is replayed from its markers and
rewrites the same manifest.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from tda.attribution.chunk_stage import build_root, finish_chunk_run, plan_chunk_run
from tda.attribution.embed_stage import finish_embed_run, plan_embed_run
from tda.attribution.index_build import finish_index_run, plan_index_run
from tda.schemas import ChunkConfig, ConfigError, EmbedConfig, IndexConfig
from tda.schemas.layout import BuildRoot

from . import chunk as chunk_pipeline
from . import embed as embed_pipeline
from . import index as index_pipeline
from .chunk import ChunkCorpus, ChunkRunResult
from .common import build_pipeline, run_transform
from .embed import EmbedCorpus, EmbedRunResult
from .index import BuildIndex, IndexRunResult

__all__ = ["STAGES", "BuildProgress", "BuildResult", "Stage", "run_build", "stage_pipeline"]


@dataclass(frozen=True)
class Stage:
    """How the driver runs one stage: plan (driver), transform (Beam), finish (driver).

    units: plan -> how many work items (files or shards) the pipeline processes;
    markers: BuildRoot -> the folder holding one completion marker per finished item.
    """

    name: str
    label: str
    namespace: str
    plan: Callable
    transform: Callable
    finish: Callable
    units: Callable
    markers: Callable[[BuildRoot], str]
    result: type


STAGES: tuple[Stage, ...] = (
    Stage(
        "chunk",
        "ChunkCorpus",
        chunk_pipeline.COUNTER_NAMESPACE,
        plan_chunk_run,
        ChunkCorpus,
        finish_chunk_run,
        lambda plan: len(plan.inputs),
        lambda root: root.completions_dir,
        ChunkRunResult,
    ),
    Stage(
        "embed",
        "EmbedCorpus",
        embed_pipeline.COUNTER_NAMESPACE,
        plan_embed_run,
        EmbedCorpus,
        finish_embed_run,
        lambda plan: len(plan.chunks.files),
        lambda root: root.embed_completions_dir,
        EmbedRunResult,
    ),
    Stage(
        "index",
        "BuildIndex",
        index_pipeline.COUNTER_NAMESPACE,
        plan_index_run,
        BuildIndex,
        finish_index_run,
        lambda plan: len(plan.shards),
        lambda root: root.index_completions_dir,
        IndexRunResult,
    ),
)


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
    fs, root = build_root(chunk.out)
    results, seconds = {}, {}
    for stage, config in zip(STAGES, (chunk, embed, index), strict=True):
        started = time.monotonic()
        plan = stage.plan(config)
        progress.start(stage.name, stage.units(plan), fs, stage.markers(root))
        counters = run_transform(stage.label, stage.transform(plan), stage.namespace, options, None)
        results[stage.name] = stage.result(manifest=stage.finish(plan), counters=counters)
        seconds[stage.name] = time.monotonic() - started
        progress.done(stage.name, results[stage.name], seconds[stage.name])
    return BuildResult(**results, seconds=seconds)


def stage_pipeline(stage: str, config, options: PipelineOptions, runner=None) -> beam.Pipeline:
    """Plan one stage and return its pipeline without running it (to translate it to the
    portable pipeline proto, as a remote runner would). Planning writes the stage's run
    record into the root, exactly as a real run's driver does."""
    spec = next((s for s in STAGES if s.name == stage), None)
    if spec is None:
        raise ConfigError(f"unknown stage {stage!r}; one of {[s.name for s in STAGES]}")
    return build_pipeline(spec.label, spec.transform(spec.plan(config)), options, runner=runner)
