"""Roots that change by generations: ``tda add`` (new files), ``tda takedown``
(documents out), ``tda index retrain``, and what an ``--overwrite`` of an earlier stage
does to the later ones. Real small data: documentation topics in three JSONL files,
chunked and embedded by the tiny builtin model (``builtin_dir``)."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tda.attribution.curation.add import AddError, AddStage
from tda.attribution.curation.drift import DISTANCE_RATIO, coarse_assigner, measure_drift
from tda.attribution.curation.generations import (
    check_generation,
    checkout_generation,
    list_generations,
)
from tda.attribution.curation.retrain import run_retrain
from tda.attribution.curation.takedown import TakedownError, run_takedown
from tda.attribution.index.reader import IndexReader, IndexReadError
from tda.attribution.io.verify import verify_root
from tda.attribution.stages.index import IndexStage
from tda.schemas import EmbedConfig, IndexConfig
from tda.schemas.changes import AddConfig, RetrainConfig, TakedownConfig
from tda.schemas.layout import BuildRoot
from tests.helpers import chunk_root, clustered, doc_topics, embed_root, write_jsonl


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """a.jsonl, b.jsonl (the root's first files) and c.jsonl (added later): 26 topics."""
    out = tmp_path_factory.mktemp("changes") / "corpus"
    out.mkdir()
    docs = [(k, v[:2000]) for k, v in doc_topics()[:26]]
    write_jsonl(out / "a.jsonl", docs[:10])
    write_jsonl(out / "b.jsonl", docs[10:20])
    write_jsonl(out / "c.jsonl", docs[20:])
    return out


def build(root: Path, files, model: str, factory: str, shards: int, nprobe=None) -> None:
    """chunk -> embed -> index of ``files`` into ``root`` (no Beam)."""
    chunk_root(root, files, model)
    embed_root(EmbedConfig(root=str(root), model=model, device="cpu"))
    stage = IndexStage()
    plan = stage.plan(IndexConfig(root=str(root), factory=factory, shards=shards, nprobe=nprobe))
    for element in stage.elements(plan):
        list(stage.run_element(plan, element))
    stage.finish(plan)


def add(root: Path, *files: Path, **kw) -> dict:
    stage = AddStage()
    plan = stage.plan(AddConfig(root=str(root), inputs=tuple(map(str, files)), device="cpu", **kw))
    for unit in stage.units(plan):
        stage.run(plan, unit)
    return stage.finish(plan)


def digests(root: Path) -> dict[str, str]:
    """Every file of ROOT (bookkeeping ``_`` folders and generations/ aside) -> sha256."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
        and not any(part.startswith("_") for part in p.relative_to(root).parts)
        and p.relative_to(root).parts[0] != "generations"
    }


def vectors(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors float32) of every stored embedding of ROOT, in file order."""
    tables = [pq.read_table(p) for p in sorted((root / "embeddings").glob("part-*.parquet"))]
    ids = np.concatenate([t["chunk_id"].to_numpy() for t in tables])
    dim = IndexReader.open(str(root)).manifest.dim
    raw = b"".join(b for t in tables for b in t["vector"].to_pylist())
    return ids, np.frombuffer(raw, np.float16).reshape(-1, dim).astype(np.float32)


def test_a_grown_flat_root_searches_like_one_built_from_scratch(corpus, builtin_dir, tmp_path):
    grown, scratch = tmp_path / "grown", tmp_path / "scratch"
    a, b, c = corpus / "a.jsonl", corpus / "b.jsonl", corpus / "c.jsonl"
    build(grown, [a, b], builtin_dir, "IDMap2,Flat", 2)
    before = digests(grown)
    parent = IndexReader.open(str(grown)).manifest_id
    entry = add(grown, c, by="data-team")
    build(scratch, [a, b, c], builtin_dir, "IDMap2,Flat", 3)

    # nothing the parent generation held was rewritten; its manifests are kept
    after = digests(grown)
    changed = {k for k in before if before[k] != after.get(k)}
    assert changed == {"chunks/manifest.json", "embeddings/manifest.json", "index/manifest.json"}
    kept = grown / "generations" / parent
    for rel in changed:
        assert hashlib.sha256((kept / rel).read_bytes()).hexdigest() == before[rel]
    assert check_generation(str(grown), parent) == []
    old = checkout_generation(str(grown), parent, str(tmp_path / "old"))
    assert (
        IndexReader.open(old).manifest.vectors == entry["vectors"] - entry["counts"]["chunks_added"]
    )

    # the new file got the next file index: the same chunk ids as the scratch build,
    # the same chunks part byte for byte, and the same search results
    g, s = IndexReader.open(str(grown)), IndexReader.open(str(scratch))
    assert [f.url for f in g.manifest.inputs] == [f.url for f in s.manifest.inputs]
    assert (grown / "chunks/part-000002.parquet").read_bytes() == (
        scratch / "chunks/part-000002.parquet"
    ).read_bytes()
    ids, queries = vectors(scratch)
    assert np.array_equal(vectors(grown)[0], ids)
    gs, gi = g.search(queries, 10)
    ss, si = s.search(queries, 10)
    assert np.array_equal(gi, si) and np.allclose(gs, ss)
    new = int(ids[-1])  # a chunk of c.jsonl: decodes to its file and is found
    assert g.lookup.get(new).url == str(c) and gi[-1, 0] == new
    # the added shard has its span and lexical channels, like the scratch build's
    assert [len(ch.shards) for ch in g.manifest.channels] == [3, 3]

    lineage = g.manifest.lineage
    assert lineage["kind"] == "add" and lineage["parent_manifest_id"] == parent
    assert lineage["added_inputs"] == [str(c)] and lineage["drift"] is None  # flat
    assert entry["by"] == "data-team" and entry["child_manifest_id"] == g.manifest_id
    assert [r["id"] for r in list_generations(str(grown))] == [parent]
    assert [p.line for p in verify_root(str(grown))] == []

    with pytest.raises(AddError, match="already in"):
        add(grown, c)


def test_a_grown_ivf_root_has_the_codes_of_a_scratch_build_with_its_quantizer(
    corpus, builtin_dir, tmp_path
):
    grown, scratch = tmp_path / "grown", tmp_path / "scratch"
    a, b, c = corpus / "a.jsonl", corpus / "b.jsonl", corpus / "c.jsonl"
    build(grown, [a, b], builtin_dir, "IVF4,Flat", 2, nprobe=1)
    entry = add(grown, c)
    drift = entry["drift"]  # an IVF index: measured against the root's vectors
    assert drift["lists"] == 4 and drift["added_vectors"] == entry["counts"]["chunks_added"]
    assert drift["drifted"] == (
        drift["distance_ratio"] > DISTANCE_RATIO or drift["imbalance_ratio"] > 2.0
    )

    # scratch: every file, filled from the grown root's trained quantizer
    chunk_root(scratch, [a, b, c], builtin_dir)
    embed_root(EmbedConfig(root=str(scratch), model=builtin_dir, device="cpu"))
    stage = IndexStage()
    plan = stage.plan(IndexConfig(root=str(scratch), factory="IVF4,Flat", shards=3, nprobe=1))
    trained = BuildRoot(str(grown)).index_trained
    Path(BuildRoot(str(scratch)).index_trained).write_bytes(Path(trained).read_bytes())
    for element in stage.elements(plan):
        list(stage.run_element(plan, element))
    stage.finish(plan)
    _, queries = vectors(scratch)
    gs, gi = IndexReader.open(str(grown)).search(queries, 10, nprobe=1)
    ss, si = IndexReader.open(str(scratch)).search(queries, 10, nprobe=1)
    assert np.array_equal(gi, si) and np.allclose(gs, ss)

    # retrain: a quantizer trained on all the vectors, as a scratch build trains it
    parent = IndexReader.open(str(grown)).manifest_id
    run_retrain(RetrainConfig(root=str(grown)))
    fresh = tmp_path / "fresh"
    build(fresh, [a, b, c], builtin_dir, "IVF4,Flat", 3, nprobe=1)
    retrained = IndexReader.open(str(grown))
    assert retrained.manifest.lineage["kind"] == "retrain"
    rs, ri = retrained.search(queries, 10, nprobe=1)
    fs_, fi = IndexReader.open(str(fresh)).search(queries, 10, nprobe=1)
    assert np.array_equal(ri, fi) and np.allclose(rs, fs_)
    assert check_generation(str(grown), parent) == []  # the pre-retrain index is kept
    assert [p.line for p in verify_root(str(grown)) if p.severity == "error"] == []


def test_a_grown_and_taken_down_root_keeps_its_exact_re_rank(corpus, builtin_dir, tmp_path):
    """An index with compressed codes and an fp16 re-rank (``--refine fp16``): the shard
    ``tda add`` fills and the shard ``tda takedown`` refills get their re-rank codes
    too, so every hit of the new generations is still scored exactly."""
    root = tmp_path / "root"
    a, b, c = corpus / "a.jsonl", corpus / "b.jsonl", corpus / "c.jsonl"
    chunk_root(root, [a, b], builtin_dir)
    embed_root(EmbedConfig(root=str(root), model=builtin_dir, device="cpu"))
    stage = IndexStage()
    plan = stage.plan(
        IndexConfig(root=str(root), factory="IVF4,SQ4", shards=2, nprobe=4, refine="fp16")
    )
    for element in stage.elements(plan):
        list(stage.run_element(plan, element))
    stage.finish(plan)
    refine = IndexReader.open(str(root)).manifest.refine
    assert refine["codes"] == "fp16"

    def exact_scores(reader: IndexReader) -> None:
        ids, vecs = vectors(root)
        by_id = dict(zip(ids.tolist(), vecs, strict=True))
        scores, got = reader.search(vecs[::7], 5, nprobe=4)
        want = np.array(
            [[by_id[i] @ q for i in row] for row, q in zip(got, vecs[::7], strict=True)]
        )
        np.testing.assert_allclose(scores, want, atol=2e-3)  # SQ4 alone is far coarser
        assert np.array_equal(got[:, 0], ids[::7])  # each chunk finds itself first

    add(root, c)
    grown = IndexReader.open(str(root))
    assert grown.manifest.refine == refine and len(grown.manifest.shards) == 3
    listed = {f.path for f in grown.manifest.files}
    for shard in grown.manifest.shards:
        stem = shard.path.rsplit(".", 1)[0]
        assert {f"{stem}.refine.npy", f"{stem}.ids.npy"} <= listed
    exact_scores(grown)

    doc = pq.read_table(root / "chunks/part-000002.parquet")["doc_id"][0].as_py()
    run_takedown(TakedownConfig(root=str(root), reason="request", doc_ids=(doc,)))
    taken = IndexReader.open(str(root))
    assert taken.manifest.refine == refine
    assert taken.manifest.vectors < grown.manifest.vectors
    exact_scores(taken)
    assert [p.line for p in verify_root(str(root)) if p.severity == "error"] == []


def test_an_interrupted_add_resumes_to_the_files_of_an_uninterrupted_one(
    corpus, builtin_dir, tmp_path
):
    """``tda add`` killed after one of two new files was chunked and embedded: rerun
    without --resume it refuses; with --resume it keeps the finished file, redoes the
    other over its half-written part, and writes the same files as an add that never
    stopped."""
    a, b, c = corpus / "a.jsonl", corpus / "b.jsonl", corpus / "c.jsonl"
    d = tmp_path / "d.jsonl"
    d.write_text(b.read_text())  # a second new file (same text, another name)
    roots = {}
    for name in ("whole", "resumed"):
        roots[name] = tmp_path / name
        build(roots[name], [a], builtin_dir, "IDMap2,Flat", 1)
    add(roots["whole"], c, d)

    resumed = roots["resumed"]
    stage = AddStage()
    plan = stage.plan(AddConfig(root=str(resumed), inputs=(str(c), str(d)), device="cpu"))
    first, second = stage.units(plan)
    stage.run(plan, first)  # then killed while writing the second file's chunks
    (resumed / f"chunks/_tmp-part-{second:06d}.parquet").write_bytes(b"half a part")
    kept = (resumed / f"embeddings/part-{first:06d}.parquet").stat().st_mtime_ns
    with pytest.raises(AddError, match="pass --resume"):
        add(resumed, c, d)
    entry = add(resumed, c, d, resume=True)
    assert entry["counts"]["chunks_added"] > 0
    assert (resumed / f"embeddings/part-{first:06d}.parquet").stat().st_mtime_ns == kept
    assert not list(resumed.rglob("_tmp-*"))
    whole, again = digests(roots["whole"]), digests(resumed)
    assert whole.keys() == again.keys()
    differ = {k for k in whole if whole[k] != again[k]}
    assert differ <= {"audit.jsonl"}, differ  # its entries carry their times (seconds)
    got = IndexReader.open(str(resumed))
    assert got.manifest.vectors == IndexReader.open(str(roots["whole"])).manifest.vectors


def test_drift_figures_separate_a_shifted_distribution():
    import faiss

    reference = clustered(4000, 32, seed=0, centers=50)
    index = faiss.index_factory(32, "IVF16,Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(reference)
    assign, nlist = coarse_assigner(index)
    same = measure_drift(assign, nlist, reference[:2000], clustered(600, 32, seed=0, centers=50))
    assert not same.drifted and same.distance_ratio < 1.2
    rng = np.random.default_rng(5)
    other = rng.standard_normal((600, 32)).astype(np.float32) * 3 + 4  # far from the sample
    shifted = measure_drift(assign, nlist, reference[:2000], other)
    assert shifted.drifted and shifted.distance_ratio > DISTANCE_RATIO
    assert "centroids" in shifted.line()
    assert coarse_assigner(faiss.IndexFlatIP(32)) is None


def test_takedown_removes_the_documents_from_every_channel_and_keeps_the_old_generation(
    corpus, builtin_dir, tmp_path
):
    from tda.attribution.query import search_text

    root = tmp_path / "root"
    build(root, [corpus / "a.jsonl", corpus / "b.jsonl", corpus / "c.jsonl"], builtin_dir,
          "IDMap2,Flat", 3)  # fmt: skip
    reader = IndexReader.open(str(root))
    parent = reader.manifest_id
    chunks = pq.read_table(root / "chunks/part-000001.parquet").to_pylist()
    doc = chunks[0]["doc_id"]
    gone = {r["chunk_id"] for r in chunks if r["doc_id"] == doc}
    text = "".join(r["text"] for r in chunks if r["doc_id"] == doc)
    before = digests(root)
    stamps = {p: (root / p).stat().st_mtime_ns for p in before}

    entry = run_takedown(
        TakedownConfig(
            root=str(root), reason="copyright claim #12", doc_ids=(doc, "nope"), by="legal"
        )
    )
    assert entry["by"] == "legal" and entry["reason"] == "copyright claim #12"
    assert sorted(d for ds in entry["documents"].values() for d in ds) == [doc]
    assert entry["not_found"] == ["nope"] and entry["parent_manifest_id"] == parent
    assert entry["counts"]["chunks_removed"] == len(gone)
    assert entry["counts"]["shards_refilled"] == 1 and entry["counts"]["shards_kept"] == 2

    # only file 1's parts and shard 1 (with its channels) were rewritten
    rewritten = {p for p in before if (root / p).stat().st_mtime_ns != stamps[p]}
    assert {p for p in rewritten if "manifest" not in p} <= {
        "chunks/part-000001.parquet", "embeddings/part-000001.parquet",
        *{p for p in before if p.startswith("index/") and "00001" in p},
    }  # fmt: skip
    assert "index/shards/shard-00001.faiss" in rewritten
    others = ("part-000000", "part-000002", "shard-00000", "shard-00002")
    assert not {p for p in rewritten if any(o in p for o in others)}

    # the new generation: no search, lookup or attribution returns a removed chunk
    new = IndexReader.open(str(root))
    assert new.manifest_id == entry["child_manifest_id"] != parent
    assert new.manifest.lineage["kind"] == "takedown"
    for chunk_id in gone:
        with pytest.raises(IndexReadError):
            new.lookup.get(chunk_id)
    ids, _ = vectors(root)
    assert not gone & set(ids.tolist())
    for channels in (("dense",), ("span",), ("lexical",), None):
        hits = search_text(new, text[:300], 20, channels, device="cpu")
        assert hits and not gone & {h.chunk.chunk_id for h in hits}, channels
    from tda.attribution.attributor import Attributor

    report = Attributor(new, _encoder(builtin_dir)).attribute("Notes:", text[:300], k=10)
    found = {h.chunk.chunk_id for c in report.chunks for h in c.hits}
    assert found and not gone & found

    # the old generation's files are untouched: byte for byte where it now finds them
    assert check_generation(str(root), parent) == []
    old = checkout_generation(str(root), parent, str(tmp_path / "old"))
    assert digests(Path(old)) == {k: v for k, v in before.items() if k != "audit.jsonl"}
    old_reader = IndexReader.open(old)
    assert old_reader.lookup.get(min(gone)).doc_id == doc
    # (the same searches on the old generation do find the removed document)
    for channels in (("dense",), ("span",), ("lexical",)):
        hits = search_text(old_reader, text[:300], 20, channels, device="cpu")
        assert gone & {h.chunk.chunk_id for h in hits}, channels
    assert [p.line for p in verify_root(str(root))] == []

    with pytest.raises(TakedownError, match="none of the document ids"):
        run_takedown(TakedownConfig(root=str(root), reason="again", doc_ids=(doc,)))


def _encoder(model: str):
    from tda.attribution.encoders import load_encoder

    return load_encoder(model, "cpu")


def test_overwriting_the_chunks_makes_the_later_stages_refuse_to_be_read(
    corpus, builtin_dir, tmp_path
):
    from tda.attribution.stages.embed import EmbedRunError

    root = tmp_path / "root"
    build(root, [corpus / "a.jsonl"], builtin_dir, "IDMap2,Flat", 1)
    chunk_root(root, [corpus / "a.jsonl", corpus / "b.jsonl"], builtin_dir)  # --overwrite
    with pytest.raises(IndexReadError, match=r"stale .*tda index build .* --overwrite"):
        IndexReader.open(str(root))
    errors = [p.line for p in verify_root(str(root)) if p.severity == "error"]
    assert any("stale" in line and "tda embed" in line for line in errors)
    with pytest.raises(EmbedRunError, match="already holds an embed run"):
        embed_root(EmbedConfig(root=str(root), model=builtin_dir, device="cpu"))
    embed_root(EmbedConfig(root=str(root), model=builtin_dir, device="cpu", overwrite=True))
    with pytest.raises(IndexReadError, match="stale"):  # still: the index is not rebuilt
        IndexReader.open(str(root))


def _prune_list(path: Path, rows: list[tuple[int, int]], sources="abc") -> str:
    """A document-level prune list as a person writes it: (file index, record index);
    the source of file i is ``sources[i]`` (the corpus's file stems)."""
    header = (
        "level,source,file_index,record_index,doc_id,chunk_id,char_start,char_end,score,"
        "share,reason\n"
    )
    body = "".join(f"document,{sources[f]},{f},{r},,,,,,,takedown\n" for f, r in rows)
    path.write_text(header + body)
    return str(path)


def test_an_interrupted_prune_resumes_to_the_bytes_of_an_uninterrupted_one(
    corpus, builtin_dir, tmp_path
):
    from tda.attribution.curation.prune import PruneError, PruneStage, read_prune_list
    from tda.pipeline.prune import run_prune
    from tda.schemas.curation import PruneConfig

    root = tmp_path / "root"
    files = [corpus / "a.jsonl", corpus / "b.jsonl", corpus / "c.jsonl"]
    build(root, files, builtin_dir, "IDMap2,Flat", 3)
    listed = _prune_list(tmp_path / "p.csv", [(0, 1), (1, 0), (1, 4), (2, 2)])

    def config(name: str, **kw) -> PruneConfig:
        return PruneConfig(str(root), listed, (str(corpus),), str(tmp_path / f"{name}-corpus"),
                           str(tmp_path / name), "test", **kw)  # fmt: skip

    stage = PruneStage()  # uninterrupted, without Beam
    plan = stage.plan(config("whole"))
    whole = (*(stage.run(plan, unit) for unit in stage.units(plan)), stage.finish(plan))[-1]
    blank = _prune_list(tmp_path / "blank.csv", [(0, 1)], sources=("",))
    with pytest.raises(PruneError, match="is not a prune list"):  # one line, no traceback
        read_prune_list(blank)

    # a run killed after files 0 and 2 (their markers written), mid-write of file 1
    plan = stage.plan(config("resumed"))
    for unit in (0, 2):
        stage.run(plan, unit)
    resumed = tmp_path / "resumed"
    (resumed / "chunks/_tmp-part-000001.parquet").write_bytes(b"half a part")
    assert sorted(p.name for p in (resumed / "_prune").iterdir()) == [
        "000000.json", "000002.json", "_run.json",
    ]  # fmt: skip
    kept = (resumed / "embeddings/part-000002.parquet").stat().st_mtime_ns

    # refused: without --resume, and resuming with another prune list (its record differs)
    with pytest.raises(PruneError, match="pass --resume"):
        run_prune(config("resumed"))
    other = _prune_list(tmp_path / "q.csv", [(1, 0)])
    with pytest.raises(PruneError, match=r"--resume needs the same .*prune_list_sha256"):
        run_prune(replace_list(config("resumed", resume=True), other))

    audit = run_prune(config("resumed", resume=True)).audit
    assert (resumed / "embeddings/part-000002.parquet").stat().st_mtime_ns == kept  # skipped
    assert not (resumed / "_prune").exists()
    assert not list(resumed.rglob("_tmp-*"))
    # the same NEW_ROOT and pruned corpus, byte for byte (the audit line aside: its time)
    assert {k: v for k, v in digests(resumed).items() if k != "audit.jsonl"} == {
        k: v for k, v in digests(tmp_path / "whole").items() if k != "audit.jsonl"
    }
    assert digests(tmp_path / "resumed-corpus") == digests(tmp_path / "whole-corpus")
    differ = {"time", "child_root", "corpus_out"}
    assert {k: v for k, v in audit.items() if k not in differ} == {
        k: v for k, v in whole.items() if k not in differ
    }
    assert audit["counts"]["documents_removed"] == 4
    assert [p.line for p in verify_root(str(resumed))] == []

    # output that no prune run wrote is refused even with --resume
    stray = tmp_path / "stray"
    (stray / "chunks").mkdir(parents=True)
    (stray / "chunks/part-000000.parquet").write_bytes(b"x")
    with pytest.raises(PruneError, match="without a prune run record"):
        run_prune(replace(config("resumed", resume=True), out=str(stray)))


def replace_list(config, list_path: str):
    """``config`` with another prune list."""
    return replace(config, list_path=list_path)
