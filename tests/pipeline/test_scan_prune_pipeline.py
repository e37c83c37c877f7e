"""Scan and prune on Beam: the transforms cover every input file; a multi-process
DirectRunner scan writes the same files as in-process."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from tda.attribution.curation.scan import finish_scan, plan_scan
from tda.pipeline.scan import ScanEmbeddings, run_scan
from tda.schemas.curation import ScanConfig
from tests.helpers import MULTI_PROCESS


def test_scan_transform_visits_every_embeddings_file(planted_root, tmp_path):
    plan = plan_scan(str(planted_root), str(tmp_path / "scan"), concepts=("violence",))
    with BeamTestPipeline() as p:
        counts = p | ScanEmbeddings(plan)
        assert_that(counts | beam.combiners.Count.Globally(), equal_to([len(plan.files)]))
    summary = finish_scan(plan).to_dict()
    assert summary["chunks_hit"] > 0
    assert sum(r["chunks_hit"] for r in summary["by_source"]) == summary["chunks_hit"]


@pytest.mark.slow
def test_multi_process_scan_equals_in_process(planted_root, tmp_path):
    run_scan(ScanConfig(str(planted_root), str(tmp_path / "a"), concepts=("violence",)))
    run_scan(
        ScanConfig(str(planted_root), str(tmp_path / "b"), concepts=("violence",)),
        options=PipelineOptions(MULTI_PROCESS),
    )
    for name in ("hits.parquet", "by_document.parquet", "by_source.parquet", "scan.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
