"""An nprobe above the index's list count probes every list (FAISS's own rule), on one
shard and on several: the multi-shard path once read its shared coarse assignment with
the wrong row width and returned wrong hits (and -1 ids) for any nprobe > nlist."""

from __future__ import annotations

import numpy as np
import pytest

from tda.attribution.index.reader import IndexReader
from tda.pipeline.index import run_index
from tda.schemas import IndexConfig
from tda.schemas.config import MAX_NPROBE
from tests.helpers import clustered, synthetic_root


@pytest.mark.parametrize("shards", [1, 3])
def test_nprobe_above_the_list_count_equals_probing_every_list(tmp_path, shards):
    vectors = clustered(6_000, 32, seed=3, centers=64)
    synthetic_root(tmp_path, vectors, files=3)
    config = IndexConfig(
        root=str(tmp_path), factory="IVF64,Flat", shards=shards, nprobe=16, channels=("dense",)
    )
    run_index(config)
    reader = IndexReader.open(str(tmp_path))
    queries = vectors[::60] + 0.05
    every_list = reader.search(queries, 10, nprobe=64)
    assert not np.array_equal(every_list[1], reader.search(queries, 10, nprobe=1)[1])
    for nprobe in (65, 1000, MAX_NPROBE):
        scores, ids = reader.search(queries, 10, nprobe=nprobe)
        np.testing.assert_array_equal(ids, every_list[1])
        np.testing.assert_allclose(scores, every_list[0], rtol=1e-6)
