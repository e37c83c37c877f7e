"""``tda prune apply`` on Beam: a thin distribution of :mod:`tda.attribution.curation.prune`.

::

    ListFiles (Create) -> Spread (Reshuffle) -> PruneFiles (ParDo: one input file each)

Each worker rewrites one corpus file in its own format and writes NEW_ROOT's chunks,
embeddings and dead-letter parts for it, then a marker with its counts; the driver
plans before, and after the pipeline builds NEW_ROOT's manifests and index (shards with
pruned chunks refilled) and appends the audit log.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from tda.attribution.curation.prune import (
    PrunePlan,
    finish_prune,
    plan_prune,
    prune_file,
    read_file_markers,
    write_file_marker,
)

from .common import StageCounters, fan_out, run_transform

__all__ = ["COUNTER_NAMESPACE", "PruneCorpus", "PruneFileFn", "PruneRunResult", "run_prune"]

COUNTER_NAMESPACE = "tda.prune"


class PruneFileFn(beam.DoFn):
    def __init__(self, plan: PrunePlan) -> None:
        self._plan = plan
        self._count = StageCounters(COUNTER_NAMESPACE)

    def process(self, file_index: int) -> Iterator[int]:
        result = prune_file(self._plan, file_index)
        write_file_marker(self._plan, result)
        self._count("files", 1)
        self._count("chunks_removed", result.chunks_removed)
        self._count("documents_removed", result.documents_removed)
        yield file_index


class PruneCorpus(beam.PTransform):
    def __init__(self, plan: PrunePlan) -> None:
        super().__init__()
        self._plan = plan

    def expand(self, pbegin):
        return fan_out(pbegin, self._plan.files, PruneFileFn(self._plan), "PruneFiles")


@dataclass(frozen=True)
class PruneRunResult:
    audit: dict
    counters: dict[str, int]


def run_prune(
    root: str,
    list_path: str,
    corpus,
    corpus_out: str,
    out: str,
    reason: str,
    overwrite: bool = False,
    options: PipelineOptions | None = None,
    test_pipeline: beam.Pipeline | None = None,
) -> PruneRunResult:
    plan = plan_prune(root, list_path, corpus, corpus_out, out, reason, overwrite)
    counters = run_transform(
        "PruneCorpus", PruneCorpus(plan), COUNTER_NAMESPACE, options, test_pipeline
    )
    return PruneRunResult(audit=finish_prune(plan, read_file_markers(plan)), counters=counters)
