"""The concept scan on Beam: a thin distribution of :mod:`tda.attribution.curation.scan`.

::

    ListFiles (Create) -> Spread (Reshuffle) -> ScanFiles (ParDo: one embeddings file each)

Each worker scans one embeddings file and writes its hits and per-document totals under
``OUT/_parts``; the driver plans before and aggregates after (``finish_scan``). Exemplar
scans search the index from the driver (one batched search) and need no pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from tda.attribution.curation.scan import ScanStage, scan_exemplars
from tda.schemas.curation import ScanConfig, ScanSummary

from .common import StageTransform, run_stage

__all__ = ["COUNTER_NAMESPACE", "ScanEmbeddings", "ScanRunResult", "run_scan"]

COUNTER_NAMESPACE = "tda.scan"


@dataclass(frozen=True)
class ScanRunResult:
    scan: ScanSummary  # scan.json
    counters: dict[str, int]
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase, all files

    @property
    def summary(self) -> dict:
        """scan.json's JSON object (what ``tda scan --json`` prints)."""
        return self.scan.to_dict()


class ScanEmbeddings(StageTransform):
    """PBegin -> PCollection[int]: scan every embeddings file of the plan (its hits)."""

    runtime = ScanStage
    root_label = "ScanEmbeddings"
    list_label = "ListFiles"
    step_label = "ScanFiles"
    result = ScanRunResult


def run_scan(
    config: ScanConfig,
    options: PipelineOptions | None = None,
    test_pipeline: beam.Pipeline | None = None,
) -> ScanRunResult:
    """Plan (driver), scan (Beam for concepts; one batched search for exemplars),
    aggregate (driver). Beam ``options`` pass through (concept mode only)."""
    if not config.like:
        return run_stage(ScanEmbeddings, config, options, test_pipeline)
    stage = ScanStage()
    plan = stage.plan(config)
    counters = {"chunks_hit": scan_exemplars(plan, config.device)}
    return ScanRunResult(stage.finish(plan), counters)
