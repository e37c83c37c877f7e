"""``tda add`` on Beam: a thin distribution of :mod:`tda.attribution.curation.add`.

::

    ListFiles (Create) -> Spread (Reshuffle) -> AddFiles (ParDo: one new input file each)

Each worker loads ROOT's tokenizer and encoder once (:meth:`AddStage.setup`, which
refuses others), chunks and embeds one new file into ROOT under its new index, then
writes its marker; the driver plans before (new file indices, snapshot of the live
manifests) and after the pipeline writes the new generation: manifests, new shards
filled with the root's trained quantizer, lineage, audit line, drift figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from tda.attribution.curation.add import AddStage
from tda.schemas.changes import AddConfig

from .common import StageTransform, run_stage

__all__ = ["COUNTER_NAMESPACE", "AddFiles", "AddRunResult", "run_add"]

COUNTER_NAMESPACE = "tda.add"


@dataclass(frozen=True)
class AddRunResult:
    audit: dict  # the audit entry appended to ROOT/audit.jsonl (drift figures included)
    counters: dict[str, int]
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase, all files


class AddFiles(StageTransform):
    """PBegin -> PCollection[AddedFile]: chunk and embed every new input file."""

    runtime = AddStage
    root_label = "AddFiles"
    list_label = "ListFiles"
    step_label = "ChunkEmbedFiles"
    result = AddRunResult


def run_add(
    config: AddConfig,
    options: PipelineOptions | None = None,
    test_pipeline: beam.Pipeline | None = None,
) -> AddRunResult:
    """Plan (driver), chunk and embed every new file (Beam), write the new generation
    (driver)."""
    return run_stage(AddFiles, config, options, test_pipeline)
