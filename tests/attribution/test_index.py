"""The index against an oracle: sharded search equals exact search for a flat factory,
the default IVF factory keeps recall@10 >= 0.95 on 50k vectors, corruption and missing
shards are caught, self-search finds the chunk, and ids resolve without scans."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from tda.attribution.index.build import IndexRunError, choose_factory, whitened
from tda.attribution.index.reader import IndexReader, IndexReadError, merge_topk, verify_index
from tda.attribution.stages.index import plan_index_run
from tda.pipeline.index import run_index
from tda.schemas import (
    DEFAULT_CODEC,
    EncoderInfo,
    IndexConfig,
)
from tests.helpers import clustered, synthetic_root


# Synthetic roots hold no real text or tokenizer: these tests build the dense channel
# (the span and lexical channels are tested in test_retrieval / test_spans / test_lexical).
def DenseIndex(**kw) -> IndexConfig:  # reads like the config it builds
    return IndexConfig(channels=("dense",), **kw)


def exact(vectors: np.ndarray, ids: list[int], queries: np.ndarray, k: int):
    scores = queries @ vectors.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), np.asarray(ids)[order]


def test_choose_factory():
    assert choose_factory(5_000, 128, 4 * 10**9)[0] == "IDMap2,Flat"
    factory, nprobe, train, refine = choose_factory(50_000, 256, 4 * 10**9)
    assert factory == "IVF1024,SQfp16" and nprobe == 128 and train == 50_000
    # 4 sqrt(n) rounds up to 1,024 lists, but 34,386 vectors train only 881 at 39 each
    factory, nprobe, train, _ = choose_factory(34_386, 128, 4 * 10**9)
    assert factory == "IVF512,SQfp16" and nprobe == 64 and train == 64 * 512
    for n in (20_001, 30_000, 100_000, 10**6, 10**8):
        nlist = int(choose_factory(n, 128, 4 * 10**9)[0].split(",")[0][3:])
        assert n >= 39 * nlist, (n, nlist)
    assert refine == "none"  # SQfp16 measured recall@10 0.978 alone
    factory, _, _, refine = choose_factory(10**9, 4096, 4 * 10**9)
    assert factory.startswith("OPQ64_4096,IVF65536_HNSW32,PQ64") and refine == "fp16"
    import faiss

    for n, d in ((5_000, 64), (200_000, 96), (10**9, 96)):  # every choice is a valid factory
        faiss.index_factory(d, choose_factory(n, d, 10**9)[0], faiss.METRIC_INNER_PRODUCT)


def test_whitened_factories_are_valid_and_keep_idmap_outermost():
    import faiss

    assert whitened("IDMap2,Flat", 64) == "IDMap2,PCAW64,L2norm,Flat"
    assert whitened("IVF1024,SQfp16", 64) == "PCAW64,L2norm,IVF1024,SQfp16"
    for n, d in ((5_000, 64), (200_000, 96), (10**9, 96)):
        index = faiss.index_factory(d, whitened(choose_factory(n, d, 10**9)[0], d),
                                    faiss.METRIC_INNER_PRODUCT)  # fmt: skip
        assert not index.is_trained  # the PCA trains with the index


def test_whitened_index_searches_whitened_vectors(tmp_path):
    """--whiten: the index holds PCAW + L2norm of each vector and applies the same to
    queries, so a search ranks by cosine in the whitened space."""
    rng = np.random.default_rng(3)
    # anisotropic: one shared direction dominates every vector
    base = rng.standard_normal((3_000, 16)).astype(np.float32) * np.linspace(0.1, 1.0, 16)
    vectors = base + 5.0 * np.eye(16, dtype=np.float32)[0]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = vectors.astype(np.float16).astype(np.float32)
    ids = synthetic_root(tmp_path, vectors, files=2)
    manifest = run_index(DenseIndex(root=str(tmp_path), whiten=True, shards=2)).manifest
    assert manifest.factory == "IDMap2,PCAW16,L2norm,Flat"
    reader = IndexReader.open(str(tmp_path))
    scores, got = reader.search(vectors[:20], k=1)
    assert got[:, 0].tolist() == ids[:20]  # each stored vector finds itself
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-4)
    # the ranking is the whitened cosine's, not the raw one's
    mean = vectors.mean(0)
    cov = np.cov((vectors - mean).T)
    values, axes = np.linalg.eigh(cov)
    white = (vectors - mean) @ axes / np.sqrt(values)
    white /= np.linalg.norm(white, axis=1, keepdims=True)
    _, want = exact(white, ids, white[20:30], 5)
    _, got = reader.search(vectors[20:30], k=5)
    assert (got[:, :3] == want[:, :3]).mean() > 0.9
    _, raw = exact(vectors, ids, vectors[20:30], 5)
    assert (raw[:, 1:3] != want[:, 1:3]).any()  # whitening changed the neighbours


def test_whiten_refuses_too_few_vectors(tmp_path):
    synthetic_root(tmp_path, clustered(40, 32), files=1)
    with pytest.raises(IndexRunError, match="--whiten needs at least 2 x D = 64 vectors"):
        plan_index_run(DenseIndex(root=str(tmp_path), whiten=True))


def test_merge_topk_matches_a_global_sort():
    rng = np.random.default_rng(1)
    scores = rng.standard_normal((4, 3, 5)).astype(np.float32)
    ids = rng.permutation(60).reshape(4, 3, 5).astype(np.int64)
    ids[2, 1, 3:] = -1  # a shard with fewer hits than k
    s, i = merge_topk(scores, ids, 6, "ip")
    for q in range(3):
        pairs = sorted(
            (-scores[sh, q, j], ids[sh, q, j])
            for sh in range(4)
            for j in range(5)
            if ids[sh, q, j] >= 0
        )[:6]
        assert i[q].tolist() == [p[1] for p in pairs]
        np.testing.assert_allclose(-s[q], [p[0] for p in pairs])
    s, i = merge_topk(scores, ids, 6, "l2")
    assert (np.diff(s, axis=1) >= 0).all()


def test_sharded_flat_search_equals_exact_search(tmp_path):
    vectors = clustered(6_000, 32)
    ids = synthetic_root(tmp_path, vectors, files=5)
    manifest = run_index(DenseIndex(root=str(tmp_path), factory="IDMap2,Flat", shards=3)).manifest
    assert len(manifest.shards) == 3 and manifest.vectors == 6_000
    reader = IndexReader.open(str(tmp_path))
    queries = clustered(50, 32, seed=7)
    got_s, got_i = reader.search(queries, k=10)
    want_s, want_i = exact(vectors, ids, queries, 10)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_s, want_s, atol=1e-5)
    assert verify_index(str(tmp_path)) == []


@pytest.mark.slow
def test_default_ivf_factory_recall_at_10_on_50k(tmp_path):
    vectors = clustered(50_000, 64)
    ids = synthetic_root(tmp_path, vectors, files=4)
    manifest = run_index(DenseIndex(root=str(tmp_path), shards=4)).manifest
    assert manifest.factory.startswith("IVF") and manifest.nprobe >= 16
    reader = IndexReader.open(str(tmp_path))
    queries = clustered(200, 64, seed=9)
    _, got = reader.search(queries, k=10)
    _, want = exact(vectors, ids, queries, 10)
    recall = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got, want, strict=True)])
    assert recall >= 0.95, recall


def test_corrupt_or_missing_shard_is_caught_and_refused(tmp_path):
    synthetic_root(tmp_path, clustered(3_000, 16), files=2)
    run_index(DenseIndex(root=str(tmp_path), shards=2))
    shard = tmp_path / "index" / "shards" / "shard-00001.faiss"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    assert verify_index(str(tmp_path)) == [
        "shards/shard-00001.faiss: sha256 differs from the manifest (corrupt)"
    ]
    with pytest.raises(IndexReadError, match="does not match its sha256"):
        IndexReader.open(str(tmp_path))
    shard.unlink()
    assert verify_index(str(tmp_path)) == ["shards/shard-00001.faiss: missing"]
    with pytest.raises(IndexReadError, match="missing"):
        IndexReader.open(str(tmp_path))


def test_truncated_shard_is_refused_by_size_without_hashing(tmp_path):
    synthetic_root(tmp_path, clustered(2_000, 16), files=1)
    run_index(DenseIndex(root=str(tmp_path)))
    shard = tmp_path / "index" / "shards" / "shard-00000.faiss"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(IndexReadError, match="bytes, the manifest says"):
        IndexReader.open(str(tmp_path), verify=False)


def test_index_refusals(tmp_path):
    with pytest.raises(IndexRunError, match="run `tda embed`"):
        plan_index_run(DenseIndex(root=str(tmp_path)))
    synthetic_root(tmp_path, clustered(1_000, 16), files=1)
    with pytest.raises(IndexRunError, match="not a FAISS factory"):
        plan_index_run(DenseIndex(root=str(tmp_path), factory="Nonsense42"))
    with pytest.raises(IndexReadError, match="tda index build"):
        IndexReader.open(str(tmp_path))
    run_index(DenseIndex(root=str(tmp_path)))
    with pytest.raises(IndexRunError, match="already holds an index"):
        plan_index_run(DenseIndex(root=str(tmp_path)))
    other = EncoderInfo("builtin", "builtin:other", "sha256:f", "sha256:t", 16, 1, 1, 256, 1)
    with pytest.raises(IndexReadError, match="not comparable"):
        IndexReader.open(str(tmp_path), encoder=other)


def test_build_is_deterministic_and_resumable(tmp_path):
    """Same bytes whether shards are filled one at a time (FAISS's own threads) or several
    at once (one thread each), and after an interrupted run is resumed."""
    a, b = tmp_path / "a", tmp_path / "b"
    vectors = clustered(25_000, 16)
    for root in (a, b):
        synthetic_root(root, vectors, files=3)
    result = run_index(DenseIndex(root=str(a), shards=3, threads=1))
    assert result.counters["vectors_added"] == 25_000 and result.counters["shards"] == 3
    first = {p.name: p.read_bytes() for p in sorted((a / "index").rglob("*.faiss"))}
    # b: three shards at once; interrupted after shard 0 (markers of 1 and 2 lost), then
    # resumed two at a time
    result = run_index(DenseIndex(root=str(b), shards=3, threads=3))
    assert result.counters["vectors_added"] == 25_000 and result.counters["shards"] == 3
    for s in (1, 2):
        (b / "index" / "_completions" / f"{s:05d}.json").unlink()
    (b / "index" / "manifest.json").unlink()
    result = run_index(DenseIndex(root=str(b), shards=3, threads=2, resume=True))
    assert result.counters.get("shards_skipped") == 1 and result.counters["shards"] == 2
    second = {p.name: p.read_bytes() for p in sorted((b / "index").rglob("*.faiss"))}
    assert first == second
    assert (
        json.loads((a / "index" / "manifest.json").read_text())["files"]
        == json.loads((b / "index" / "manifest.json").read_text())["files"]
    )


def test_fill_threads_respect_cores_memory_and_shards(tmp_path):
    synthetic_root(tmp_path, clustered(4_000, 16), files=4)
    plan = plan_index_run(DenseIndex(root=str(tmp_path), shards=4, factory="IVF16,Flat"))
    per_shard = 1_000 * plan.bytes_per_vector  # 1,000 vectors per shard, 64 + 8 bytes each
    assert plan.bytes_per_vector == 16 * 4 + 8
    assert plan.fill_threads(cores=2) == 2
    assert plan.fill_threads(cores=64) == 4  # no more threads than shards
    budget = replace(plan, config=replace(plan.config, memory_budget=2 * per_shard))
    assert budget.fill_threads(cores=64) == 2  # two shards fit in memory at once
    tight = replace(plan, config=replace(plan.config, memory_budget=per_shard // 2))
    assert tight.fill_threads(cores=64) == 1
    forced = replace(plan, config=replace(plan.config, threads=3))
    assert forced.fill_threads(cores=1) == 3


def test_lookup_decodes_ids_to_rows(tmp_path):
    ids = synthetic_root(tmp_path, clustered(20_000, 8), files=2)
    run_index(DenseIndex(root=str(tmp_path)))
    reader = IndexReader.open(str(tmp_path))
    for cid in (ids[0], ids[9_000], ids[-1]):  # across row groups and files
        record = reader.lookup.get(cid)
        assert record.chunk_id == cid and record.text == f"chunk {cid}"
    with pytest.raises(IndexReadError, match="not in this index"):
        reader.lookup.get(DEFAULT_CODEC.encode(0, 1, 10**6))


@pytest.mark.parametrize("factory", ["IVF64,SQfp16", "IDMap2,Flat"])
def test_merged_on_disk_variant_returns_what_the_shards_return(tmp_path, factory):
    from tda.attribution.index.merge import merge_index

    synthetic_root(tmp_path, clustered(8_000, 24), files=4)
    run_index(DenseIndex(root=str(tmp_path), factory=factory, shards=4, nprobe=8))
    record = merge_index(str(tmp_path))
    assert record["vectors"] == 8_000
    queries = clustered(40, 24, seed=3)
    sharded = IndexReader.open(str(tmp_path)).search(queries, k=10)
    merged = IndexReader.open(str(tmp_path), merged=True).search(queries, k=10)
    np.testing.assert_array_equal(merged[1], sharded[1])
    np.testing.assert_allclose(merged[0], sharded[0], atol=1e-6)
    # a rebuilt index makes the old merge stale
    run_index(DenseIndex(root=str(tmp_path), factory=factory, shards=2, overwrite=True))
    with pytest.raises(IndexReadError, match=r"has no merged index|merge again"):
        IndexReader.open(str(tmp_path), merged=True)


def test_remote_root_is_read_through_a_verified_local_cache(tmp_path):
    """A ROOT behind fsspec (memory:// here, gs:// in production): shards are copied once
    into the cache under their sha256, verified, memory-mapped; lookups read remotely."""
    import fsspec

    local = tmp_path / "root"
    ids = synthetic_root(local, clustered(3_000, 16), files=2)
    run_index(DenseIndex(root=str(local), shards=2))
    fs = fsspec.filesystem("memory")
    for path in local.rglob("*"):
        if path.is_file():
            fs.pipe(f"/remote/{path.relative_to(local)}", path.read_bytes())
    cache = tmp_path / "cache"
    reader = IndexReader.open("memory://remote", cache_dir=str(cache))
    assert sorted(p.suffix for p in cache.iterdir()) == [".faiss", ".faiss"]
    local_reader = IndexReader.open(str(local))
    queries = clustered(10, 16, seed=5)
    np.testing.assert_array_equal(reader.search(queries)[1], local_reader.search(queries)[1])
    assert reader.lookup.get(ids[7]).text == f"chunk {ids[7]}"
    # a corrupt remote shard is caught on the way into the cache
    data = bytearray(fs.cat("/remote/index/shards/shard-00001.faiss"))
    data[50] ^= 1
    fs.pipe("/remote/index/shards/shard-00001.faiss", bytes(data))
    with pytest.raises(IndexReadError, match="sha256"):
        IndexReader.open("memory://remote", cache_dir=str(tmp_path / "cache2"))
    fs.rm("/remote", recursive=True)


def test_index_older_than_its_embeddings_is_refused(tmp_path):
    synthetic_root(tmp_path, clustered(1_000, 8), files=1)
    run_index(DenseIndex(root=str(tmp_path)))
    IndexReader.open(str(tmp_path))
    manifest = tmp_path / "embeddings" / "manifest.json"
    manifest.write_text(
        manifest.read_text().replace('"batch_tokens": 1024', '"batch_tokens": 2048')
    )
    with pytest.raises(IndexReadError, match="other embeddings"):
        IndexReader.open(str(tmp_path))


@pytest.mark.parametrize("shards", [1, 3])
def test_search_nprobe_is_per_call_and_thread_safe(tmp_path, shards):
    """``tda serve`` searches from several threads at once: a search with its own nprobe
    must not change what a concurrent default search returns (the shared index objects
    are never mutated; each call passes its own search parameters)."""
    import threading

    vectors = clustered(6_000, 32, seed=3, centers=64)
    synthetic_root(tmp_path, vectors, files=3)
    run_index(DenseIndex(root=str(tmp_path), factory="IVF64,Flat", shards=shards, nprobe=16))
    reader = IndexReader.open(str(tmp_path))
    queries = vectors[::60] + 0.05
    expected = reader.search(queries, 10)
    narrow = reader.search(queries, 10, nprobe=1)
    assert not np.array_equal(expected[1], narrow[1])  # nprobe matters on this data
    stop = threading.Event()

    def narrow_searches():
        while not stop.is_set():
            np.testing.assert_array_equal(reader.search(queries, 10, nprobe=1)[1], narrow[1])

    thread = threading.Thread(target=narrow_searches)
    thread.start()
    try:
        for _ in range(150):
            np.testing.assert_array_equal(reader.search(queries, 10)[1], expected[1])
    finally:
        stop.set()
        thread.join()
