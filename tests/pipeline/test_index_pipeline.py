"""The index stage on Beam: shards filled by the BuildIndex transform, multi-process
DirectRunner writes the same bytes as in-process."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from tda.attribution.stages.index import plan_index_run
from tda.pipeline.index import BuildIndex, run_index
from tda.schemas import IndexConfig
from tests.helpers import MULTI_PROCESS, clustered, synthetic_root


# Synthetic roots hold no real text or tokenizer: these tests build the dense channel
# (the span and lexical channels are tested in test_retrieval / test_spans / test_lexical).
def DenseIndex(**kw) -> IndexConfig:  # reads like the config it builds
    return IndexConfig(channels=("dense",), **kw)


def test_build_index_transform_yields_every_shard(tmp_path):
    synthetic_root(tmp_path, clustered(30_000, 16), files=6)
    plan = plan_index_run(DenseIndex(root=str(tmp_path), shards=3))
    with BeamTestPipeline() as p:
        shards = p | BuildIndex(plan)
        assert_that(
            shards | beam.Map(lambda s: (s.shard, s.vectors, s.embed_files)),
            equal_to([(0, 10_000, (0, 1)), (1, 10_000, (2, 3)), (2, 10_000, (4, 5))]),
        )


@pytest.mark.slow
def test_multi_process_build_equals_in_process(tmp_path):
    vectors = clustered(30_000, 16)
    for name in ("a", "b"):
        synthetic_root(tmp_path / name, vectors, files=4)
    run_index(DenseIndex(root=str(tmp_path / "a"), shards=4))
    run_index(DenseIndex(root=str(tmp_path / "b"), shards=4), PipelineOptions(MULTI_PROCESS))
    files = {
        name: {
            str(p.relative_to(tmp_path / name)): p.read_bytes()
            for p in sorted((tmp_path / name / "index").rglob("*"))
            if p.is_file()
        }
        for name in ("a", "b")
    }
    assert files["a"].keys() == files["b"].keys() and "index/manifest.json" in files["a"]
    assert files["a"] == files["b"]
