"""Scans, prune lists and pruned roots on a corpus with a planted harmful source
(``planted_corpus`` / ``planted_root`` in conftest: documentation in two sources and
formats, and ``fiction.parquet``, stories dense in violence terms; a builtin model trained
on it in the test)."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tda.attribution.curation.prune import PruneError, make_prune_list, read_prune_list
from tda.attribution.curation.scan import ScanError
from tda.attribution.index.reader import IndexReader, verify_index
from tda.pipeline.prune import run_prune as _run_prune
from tda.pipeline.scan import run_scan as _run_scan
from tda.schemas.curation import PruneConfig, ScanConfig


def run_scan(root, out, **settings):
    return _run_scan(ScanConfig(root, out, **settings))


def run_prune(root, list_path, corpus, corpus_out, out, reason, overwrite=False):
    return _run_prune(
        PruneConfig(root, list_path, tuple(corpus), corpus_out, out, reason, overwrite)
    )


@pytest.fixture
def corpus(planted_corpus) -> Path:
    return planted_corpus


@pytest.fixture
def built(planted_root) -> Path:
    return planted_root


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_concept_scan_ranks_the_planted_source_first(built, tmp_path):
    result = run_scan(str(built), str(tmp_path / "scan"), concepts=("violence",), min_weight=0.5)
    by_source = result.summary["by_source"]
    assert by_source[0]["source"] == "fiction" and by_source[0]["share"] > 0.5
    assert all(r["share"] < by_source[0]["share"] / 3 for r in by_source[1:])
    out = tmp_path / "scan"
    hits = pq.read_table(out / "hits.parquet")
    assert hits.num_rows == result.summary["chunks_hit"] > 0
    assert set(hits["matched"].to_pylist()) == {"violence"}
    assert min(hits["score"].to_pylist()) >= 0.5
    docs = pq.read_table(out / "by_document.parquet").to_pylist()
    assert docs[0]["source"] == "fiction" and docs[0]["chunks_hit"] <= docs[0]["chunks"]
    assert sum(d["chunks_hit"] for d in docs) == hits.num_rows
    png = (out / "prevalence.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # deterministic: the same scan writes the same files
    run_scan(str(built), str(tmp_path / "again"), concepts=("violence",), min_weight=0.5)
    for name in ("hits.parquet", "by_document.parquet", "by_source.parquet", "prevalence.png"):
        assert (out / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name


def test_exemplar_scan_ranks_the_planted_source_first(built, tmp_path):
    from tests.helpers import planted_story

    rng = random.Random(99)  # new stories, never indexed
    like = tmp_path / "bad.jsonl"
    like.write_text("".join(json.dumps({"text": planted_story(rng)}) + "\n" for _ in range(8)))
    result = run_scan(str(built), str(tmp_path / "scan"), like=str(like), top=40)
    # every channel of the index, fused (recorded), as an attribution searches
    assert result.summary["settings"]["channels"] == []  # = the index's (all three)
    by_source = result.summary["by_source"]
    assert by_source[0]["source"] == "fiction"
    assert by_source[0]["share"] > 2 * max(r["share"] for r in by_source[1:])
    # the fused scan's hits are more often the planted source's than the dense scan's
    # (the exemplars' words single out its chunks; dense alone brings more neighbours
    # from the other sources)
    dense = run_scan(str(built), str(tmp_path / "dense"), like=str(like), top=40,
                     channels=("dense",)).summary  # fmt: skip
    assert dense["settings"]["channels"] == ["dense"]

    def precision(summary) -> float:
        hit = {r["source"]: r["chunks_hit"] for r in summary["by_source"]}
        return hit["fiction"] / sum(hit.values())

    assert precision(result.summary) > precision(dense) + 0.05
    hits = pq.read_table(tmp_path / "scan" / "hits.parquet").to_pylist()  # best first
    assert all(h["matched"].startswith("exemplar ") for h in hits)
    assert [h["source"] for h in hits[:5]] == ["fiction"] * 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(concepts=("no-such-concept",)), "not a known concept"),
        (dict(concepts=("violence",), like="x"), "one of them"),
        (dict(), "one of them"),
        (dict(concepts=("violence",), min_weight=2.0), "--min-weight"),
        (dict(like="/nonexistent/bad.txt"), "no such file"),
    ],
)
def test_scan_errors_are_one_line(built, tmp_path, kwargs, message):
    with pytest.raises(ScanError, match=message):
        run_scan(str(built), str(tmp_path / "scan"), **kwargs)


@pytest.fixture(scope="module")
def concept_scan(planted_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scan") / "scan"
    run_scan(str(planted_root), str(out), concepts=("violence",), min_weight=0.5)
    return out


def _records(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return [json.loads(line) for line in data.decode().splitlines()]


def test_document_prune_end_to_end(built, corpus, concept_scan, tmp_path):
    before = _tree_digest(built)
    table = make_prune_list(str(concept_scan), str(tmp_path / "prune.parquet"), "document",
                            min_share=0.3, csv=True)  # fmt: skip
    assert table.num_rows > 0 and (tmp_path / "prune.csv").exists()
    assert all("chunks" in r for r in table["reason"].to_pylist())
    listed = {(r["file_index"], r["record_index"]) for r in table.to_pylist()}
    # the CSV, as a person would edit and pass it on, reads back as the same list
    csv_table, level, _ = read_prune_list(str(tmp_path / "prune.csv"))
    assert level == "document" and csv_table.num_rows == table.num_rows

    new = tmp_path / "new"
    result = run_prune(str(built), str(tmp_path / "prune.parquet"), [str(corpus)],
                       str(tmp_path / "pruned"), str(new), "violent fiction")  # fmt: skip
    audit = result.audit
    assert _tree_digest(built) == before  # the old root is never modified

    parent = IndexReader.open(str(built))
    child = IndexReader.open(str(new))
    chunks = [
        row for part in sorted((built / "chunks").glob("part-*.parquet"))
        for row in pq.read_table(part).to_pylist()
    ]  # fmt: skip
    pruned = [c for c in chunks if (parent.manifest.id_codec.decode(c["chunk_id"]).file_index,
                                    c["record_index"]) in listed]  # fmt: skip
    pruned_ids = {c["chunk_id"] for c in pruned}
    assert len(pruned_ids) == audit["counts"]["chunks_removed"]
    # no search of the new root returns a pruned chunk (each pruned chunk's own vector)
    queries = np.stack([parent.vector(i) for i in sorted(pruned_ids)])
    _, got = child.search(queries, 25)
    assert not set(got.ravel().tolist()) & pruned_ids
    _, got = parent.search(queries, 1)
    assert set(got.ravel().tolist()) & pruned_ids  # (they were there before)
    # kept chunks still resolve, with their text, through the pruned parts
    kept = [c for c in chunks if c["chunk_id"] not in pruned_ids]
    for c in kept[:: max(1, len(kept) // 20)]:
        assert child.lookup.get(c["chunk_id"]).text == c["text"]
        np.testing.assert_array_equal(child.vector(c["chunk_id"]), parent.vector(c["chunk_id"]))
    assert verify_index(str(new)) == []

    # the pruned corpus holds exactly the unlisted records, in order, all fields kept
    urls = {f.index: f.url for f in parent.manifest.inputs}
    for index, url in urls.items():
        name = Path(url).name
        original = _records(corpus / name)
        expected = [r for i, r in enumerate(original) if (index, i) not in listed]
        assert _records(tmp_path / "pruned" / name) == expected, name

    # counts reconcile: manifest lineage, audit log, corpus, index
    lineage = child.manifest.lineage
    assert lineage["counts"] == audit["counts"] and lineage["reason"] == "violent fiction"
    assert lineage["parent_manifest_id"] == parent.manifest_id == audit["parent_manifest_id"]
    assert audit["child_manifest_id"] == child.manifest_id
    assert child.manifest.vectors == parent.manifest.vectors - len(pruned_ids)
    c = audit["counts"]
    assert c["records_in"] - c["records_out"] == c["documents_removed"] == len(listed)
    per_source = {}
    for p in pruned:
        acc = per_source.setdefault(p["source"], {"chunks": 0, "documents": set()})
        acc["chunks"] += 1
        acc["documents"].add(p["record_index"])
    assert audit["removed_per_source"] == {
        s: {"chunks": v["chunks"], "documents": len(v["documents"])} for s, v in per_source.items()
    }
    lines = (new / "audit.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0]) == audit
    assert c["shards_refilled"] + c["shards_copied"] == len(parent.manifest.shards)


def test_chunk_prune_cuts_spans_and_source_prune_drops_the_source(
    built, corpus, concept_scan, tmp_path
):
    make_prune_list(str(concept_scan), str(tmp_path / "chunks.parquet"), "chunk", min_score=0.5)
    new = tmp_path / "new"
    audit = run_prune(str(built), str(tmp_path / "chunks.parquet"), [str(corpus)],
                      str(tmp_path / "pruned"), str(new), "violent passages").audit  # fmt: skip
    hits = pq.read_table(concept_scan / "hits.parquet").to_pylist()
    assert audit["counts"]["chunks_removed"] == len(hits)
    assert audit["counts"]["documents_removed"] == 0 and audit["counts"]["documents_edited"] > 0
    spans: dict[tuple[str, int], list] = {}
    for h in hits:
        spans.setdefault((h["source"], h["record_index"]), []).append(
            (h["char_start"], h["char_end"])
        )
    original = _records(corpus / "fiction.parquet")
    pruned = _records(tmp_path / "pruned" / "fiction.parquet")
    assert len(pruned) == len(original)  # chunk level: documents stay, spans go
    for i, (a, b) in enumerate(zip(original, pruned, strict=True)):
        cut = sorted(spans.get(("fiction", i), []))
        text, pos, parts = a["text"], 0, []
        for s, e in cut:
            parts.append(text[pos : max(pos, s)])
            pos = max(pos, e)
        parts.append(text[pos:])
        assert b["text"] == "".join(parts) and b["year"] == a["year"]

    # second generation, from a list a person wrote: drop the "notes" source from the
    # pruned root; the audit log carries both entries, the lineage points at the first child
    (tmp_path / "sources.csv").write_text(
        "level,source,file_index,record_index,doc_id,chunk_id,char_start,char_end,score,"
        "share,reason\nsource,notes,,,,,,,,,licence withdrawn\n"
    )
    newer = tmp_path / "newer"
    with pytest.raises(PruneError, match="corpus ROOT was built from"):
        run_prune(str(new), str(tmp_path / "sources.csv"), [str(corpus / "docs.jsonl")],
                  str(tmp_path / "pruned2"), str(newer), "licence withdrawn")  # fmt: skip
    audit2 = run_prune(
        str(new), str(tmp_path / "sources.csv"), [str(corpus)], str(tmp_path / "pruned2"),
        str(newer), "licence withdrawn",
    ).audit  # fmt: skip
    assert audit2["parent_manifest_id"] == audit["child_manifest_id"]
    assert list(audit2["removed_per_source"]) == ["notes"]
    assert len((newer / "audit.jsonl").read_text().splitlines()) == 2
    reader = IndexReader.open(str(newer))
    _, ids = reader.search(np.eye(reader.manifest.dim, dtype=np.float32), 50)
    sources = {reader.lookup.get(int(i)).source for i in ids.ravel() if i >= 0}
    assert "notes" not in sources and "docs" in sources
    assert _records(tmp_path / "pruned2" / "notes.jsonl.gz") == []
    assert len(_records(tmp_path / "pruned2" / "docs.jsonl")) == 24


def test_prune_refusals(built, corpus, concept_scan, tmp_path):
    make_prune_list(str(concept_scan), str(tmp_path / "p.parquet"), "document", min_share=0.3)
    args = (str(tmp_path / "p.parquet"), [str(corpus)], str(tmp_path / "c"), str(tmp_path / "n"))
    with pytest.raises(PruneError, match="--reason is required"):
        run_prune(str(built), *args, " ")
    with pytest.raises(PruneError, match="never modified"):
        run_prune(str(built), str(tmp_path / "p.parquet"), [str(corpus)], str(tmp_path / "c"),
                  str(built), "x")  # fmt: skip
    (tmp_path / "bad.csv").write_text("level,source\nplanet,docs\n")
    with pytest.raises(PruneError, match=r"not a prune list|one level"):
        run_prune(str(built), str(tmp_path / "bad.csv"), *args[1:], "x")
    with pytest.raises(PruneError, match="is not a finished scan"):
        make_prune_list(str(tmp_path), str(tmp_path / "x.parquet"))


def test_chunk_prune_reads_the_text_field_as_the_corpus_reader_does(builtin_dir, tmp_path):
    """A JSONL key that itself contains a dot ("body.text") is taken literally by the reader
    (it tries the literal key before a nested path); a chunk-level prune must edit that same
    field, not fail looking for {"body": {"text": ...}}."""
    from tda.pipeline.chunk import run_chunk
    from tda.pipeline.embed import run_embed
    from tda.pipeline.index import run_index
    from tda.schemas import ChunkConfig, EmbedConfig, IndexConfig, ReadOptions

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    texts = [" ".join(f"word{i}x{j}" for j in range(120)) for i in range(3)]
    (corpus / "dotted.jsonl").write_text(
        "".join(json.dumps({"id": f"d{i}", "body.text": t}) + "\n" for i, t in enumerate(texts))
    )
    root = tmp_path / "root"
    run_chunk(ChunkConfig(inputs=(str(corpus),), out=str(root), tokenizer=builtin_dir,
                          read=ReadOptions(text_field="body.text")))  # fmt: skip
    run_embed(EmbedConfig(root=str(root), model=builtin_dir))
    run_index(IndexConfig(root=str(root)))
    chunk = pq.read_table(root / "chunks" / "part-000000.parquet").to_pylist()[0]
    (tmp_path / "list.csv").write_text(
        "level,source,file_index,record_index,doc_id,chunk_id,char_start,char_end,score,"
        f"share,reason\nchunk,{chunk['source']},0,{chunk['record_index']},{chunk['doc_id']},"
        f"{chunk['chunk_id']},{chunk['char_start']},{chunk['char_end']},,,test\n"
    )
    run_prune(str(root), str(tmp_path / "list.csv"), [str(corpus)], str(tmp_path / "pruned"),
              str(tmp_path / "new"), "test")  # fmt: skip
    pruned = _records(tmp_path / "pruned" / "dotted.jsonl")
    first = texts[chunk["record_index"]]
    assert pruned[chunk["record_index"]]["body.text"] == (
        first[: chunk["char_start"]] + first[chunk["char_end"] :]
    )
    assert [r["body.text"] for i, r in enumerate(pruned) if i != chunk["record_index"]] == [
        t for i, t in enumerate(texts) if i != chunk["record_index"]
    ]
