"""``tda prune apply`` on Beam: a thin distribution of :mod:`tda.attribution.curation.prune`.

::

    ListFiles (Create) -> Spread (Reshuffle) -> PruneFiles (ParDo: one input file each)

Each worker rewrites one corpus file in its own format and writes NEW_ROOT's chunks,
embeddings and dead-letter parts for it, then a marker with its counts; the driver
plans before, and after the pipeline builds NEW_ROOT's manifests and index (shards with
pruned chunks refilled) and appends the audit log.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from tda.attribution.curation.prune import PruneStage
from tda.schemas.curation import PruneConfig

from .common import StageTransform, run_stage

__all__ = ["COUNTER_NAMESPACE", "PruneCorpus", "PruneRunResult", "run_prune"]

COUNTER_NAMESPACE = "tda.prune"


@dataclass(frozen=True)
class PruneRunResult:
    audit: dict  # the audit entry appended to NEW_ROOT/audit.jsonl
    counters: dict[str, int]
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase, all files


class PruneCorpus(StageTransform):
    """PBegin -> PCollection[FilePruned]: prune every input file of ROOT."""

    runtime = PruneStage
    root_label = "PruneCorpus"
    list_label = "ListFiles"
    step_label = "PruneFiles"
    result = PruneRunResult


def run_prune(
    config: PruneConfig,
    options: PipelineOptions | None = None,
    test_pipeline: beam.Pipeline | None = None,
) -> PruneRunResult:
    """Plan (driver), prune every input file (Beam), build NEW_ROOT's manifests and index
    and append the audit log (driver)."""
    return run_stage(PruneCorpus, config, options, test_pipeline)
