"""The concept scan on Beam: a thin distribution of :mod:`tda.attribution.curation.scan`.

::

    ListFiles (Create) -> Spread (Reshuffle) -> ScanFiles (ParDo: one embeddings file each)

Each worker scans one embeddings file and writes its hits and per-document totals under
``OUT/_parts``; the driver plans before and aggregates after (``finish_scan``). Exemplar
scans search the index from the driver (one batched search) and need no pipeline.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from tda.attribution.curation.scan import (
    ScanPlan,
    finish_scan,
    plan_scan,
    scan_concept_file,
    scan_exemplars,
)

from .common import StageCounters, fan_out, run_transform

__all__ = ["COUNTER_NAMESPACE", "ScanEmbeddings", "ScanFileFn", "ScanRunResult", "run_scan"]

COUNTER_NAMESPACE = "tda.scan"


class ScanFileFn(beam.DoFn):
    """input file index -> its number of hits (parts written under OUT/_parts)."""

    def __init__(self, plan: ScanPlan) -> None:
        self._plan = plan
        self._count = StageCounters(COUNTER_NAMESPACE)

    def process(self, file_index: int) -> Iterator[int]:
        hits = scan_concept_file(self._plan, file_index)
        self._count("files", 1)
        self._count("chunks_hit", hits)
        yield hits


class ScanEmbeddings(beam.PTransform):
    """PBegin -> PCollection[int]: scan every embeddings file of the plan."""

    def __init__(self, plan: ScanPlan) -> None:
        super().__init__()
        self._plan = plan

    def expand(self, pbegin):
        return fan_out(pbegin, self._plan.files, ScanFileFn(self._plan), "ScanFiles")


@dataclass(frozen=True)
class ScanRunResult:
    summary: dict
    counters: dict[str, int]


def run_scan(
    root: str,
    out: str,
    concepts=(),
    like: str | None = None,
    min_weight: float = 0.5,
    top: int = 1000,
    min_score: float | None = None,
    overwrite: bool = False,
    device: str = "auto",
    options: PipelineOptions | None = None,
    test_pipeline: beam.Pipeline | None = None,
) -> ScanRunResult:
    """Plan (driver), scan (Beam for concepts; one batched search for exemplars),
    aggregate (driver)."""
    plan = plan_scan(root, out, concepts, like, min_weight, top, min_score, overwrite)
    if plan.mode == "concept":
        counters = run_transform(
            "ScanEmbeddings", ScanEmbeddings(plan), COUNTER_NAMESPACE, options, test_pipeline
        )
    else:
        counters = {"chunks_hit": scan_exemplars(plan, device)}
    return ScanRunResult(summary=finish_scan(plan), counters=counters)
