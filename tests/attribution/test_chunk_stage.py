"""The Beam-free chunk stage: planning a run, one file end to end, finishing a run."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow.parquet as pq
import pytest

from tda.attribution.corpus.tokenizer import load_tokenizer
from tda.attribution.stages.chunk import (
    ChunkRunError,
    finish_chunk_run,
    plan_chunk_run,
    process_file,
)
from tda.schemas import DEFAULT_CODEC, ChunkingPolicy, Manifest
from tests.helpers import chunk_config


def test_process_file_writes_parts_marker_and_counters(mixed_corpus, tmp_path, tokenizer_dir):
    config = chunk_config(mixed_corpus, tmp_path / "root", tokenizer_dir)
    plan = plan_chunk_run(config)
    f = next(i for i in plan.inputs if i.url.endswith("docs_a.jsonl.gz"))
    seen: Counter = Counter()
    counts = process_file(
        f, config, load_tokenizer(tokenizer_dir), lambda k, n: seen.update({k: n})
    )

    expected_docs = mixed_corpus.documents[f.url]
    expected_dead = mixed_corpus.deadletters[f.url]
    assert counts.documents == len(expected_docs)
    assert counts.records == len(expected_docs) + len(expected_dead)
    assert counts.reconciles()
    assert counts.deadletters == dict(Counter(r for _, r in expected_dead))
    assert seen["chunks_written"] == counts.chunks and seen["tokens"] == counts.tokens
    assert seen["records_read"] == counts.records
    assert seen["deadletter.malformed_json"] == counts.deadletters["malformed_json"]

    table = pq.read_table(tmp_path / "root" / "chunks" / f"part-{f.index:06d}.parquet")
    assert table.num_rows == counts.chunks
    ids = table.column("chunk_id").to_pylist()
    assert ids == [DEFAULT_CODEC.encode(0, f.index, k) for k in range(counts.chunks)]
    meta = table.schema.metadata
    assert json.loads(meta[b"tda.tokenizer"])["fingerprint"] == plan.tokenizer.fingerprint
    assert json.loads(meta[b"tda.input"])["url"] == f.url
    dead = pq.read_table(tmp_path / "root" / "deadletter" / f"part-{f.index:06d}.parquet")
    assert (
        list(
            zip(
                dead.column("record_index").to_pylist(),
                dead.column("reason").to_pylist(),
                strict=True,
            )
        )
        == expected_dead
    )
    marker = json.loads((tmp_path / "root/chunks/_completions" / f"{f.index:06d}.json").read_text())
    assert marker == counts.to_dict()
    assert not list((tmp_path / "root").rglob("_tmp-*"))  # temp files were renamed away


def test_clean_file_writes_no_deadletter_part(mixed_corpus, tmp_path, tokenizer_dir):
    config = chunk_config(mixed_corpus, tmp_path / "root", tokenizer_dir)
    plan = plan_chunk_run(config)
    f = next(i for i in plan.inputs if i.url.endswith("multi.jsonl.zst"))
    counts = process_file(f, config, load_tokenizer(tokenizer_dir))
    assert counts.deadlettered == 0 and counts.documents == 5
    assert not (tmp_path / "root" / "deadletter" / f"part-{f.index:06d}.parquet").exists()


def test_finish_requires_every_file_and_writes_manifest(mixed_corpus, tmp_path, tokenizer_dir):
    config = chunk_config(mixed_corpus, tmp_path / "root", tokenizer_dir)
    plan = plan_chunk_run(config)
    tok = load_tokenizer(tokenizer_dir)
    for f in plan.inputs[:-1]:
        process_file(f, config, tok)
    with pytest.raises(ChunkRunError, match="did not finish; rerun with --resume"):
        finish_chunk_run(plan)
    process_file(plan.inputs[-1], config, tok)
    manifest = finish_chunk_run(plan)
    on_disk = Manifest.from_json((tmp_path / "root" / "chunks" / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest.totals.records == mixed_corpus.n_records
    assert manifest.totals.reconciles()
    assert [i.url for i in manifest.inputs] == sorted(mixed_corpus.documents)


def test_root_guards(mixed_corpus, tmp_path, tokenizer_dir):
    root = tmp_path / "root"
    plan_chunk_run(chunk_config(mixed_corpus, root, tokenizer_dir))
    with pytest.raises(ChunkRunError, match="pass --resume to continue it or --overwrite"):
        plan_chunk_run(chunk_config(mixed_corpus, root, tokenizer_dir))
    # Same settings: resumable. Other settings: refused, naming what differs.
    plan_chunk_run(chunk_config(mixed_corpus, root, tokenizer_dir, resume=True))
    with pytest.raises(ChunkRunError, match="these differ: settings"):
        plan_chunk_run(
            chunk_config(
                mixed_corpus,
                root,
                tokenizer_dir,
                resume=True,
                chunking=ChunkingPolicy(chunk_size=32),
            )
        )
    (mixed_corpus.root / "extra.txt").write_text("one more document")
    with pytest.raises(ChunkRunError, match="these differ: inputs"):
        plan_chunk_run(chunk_config(mixed_corpus, root, tokenizer_dir, resume=True))
    # --overwrite starts over.
    (root / "chunks" / "part-000000.parquet").write_bytes(b"stale")
    plan_chunk_run(chunk_config(mixed_corpus, root, tokenizer_dir, overwrite=True))
    assert not (root / "chunks" / "part-000000.parquet").exists()


def test_too_many_files_for_the_codec(mixed_corpus, tmp_path, tokenizer_dir):
    from tda.schemas import ChunkIdCodec

    codec = ChunkIdCodec(dataset_bits=1, file_bits=2, ordinal_bits=20)  # at most 4 files
    with pytest.raises(ChunkRunError, match="exceed the chunk-id codec's 2 file bits"):
        plan_chunk_run(chunk_config(mixed_corpus, tmp_path / "r", tokenizer_dir, codec=codec))


def test_root_inside_the_corpus_is_refused(mixed_corpus, tmp_path, tokenizer_dir):
    with pytest.raises(ChunkRunError, match="is inside the input folder"):
        plan_chunk_run(chunk_config(mixed_corpus, mixed_corpus.root / "root", tokenizer_dir))
    assert not (mixed_corpus.root / "root").exists()
