"""Reading corpus files: input resolution, formats, dead letters, streaming."""

from __future__ import annotations

import gzip
import json
import random
import tracemalloc

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tda.attribution.corpus.readers import (
    Document,
    InputError,
    detect_format,
    file_stem,
    iter_documents,
    resolve_inputs,
)
from tda.schemas import DeadLetter, InputFile, ReadOptions


def _read(input_file: InputFile, **kw) -> tuple[list[Document], list[DeadLetter]]:
    items = list(iter_documents(input_file, ReadOptions(**kw)))
    return [i for i in items if isinstance(i, Document)], [
        i for i in items if isinstance(i, DeadLetter)
    ]


def _one(path, fmt=None) -> InputFile:
    [f] = resolve_inputs([str(path)], fmt or "auto")
    return f


# ---------------------------------------------------------------- names and resolution


@pytest.mark.parametrize(
    ("name", "fmt", "stem"),
    [
        ("a/wiki.en.jsonl.gz", "jsonl", "wiki.en"),
        ("x.ndjson.zst", "jsonl", "x"),
        ("gs://b/p/part-1.parquet", "parquet", "part-1"),
        ("book.TXT", "text", "book"),
        ("notes.md.bz2", "text", "notes"),
        ("data.csv", None, "data.csv"),
    ],
)
def test_format_and_stem_from_name(name, fmt, stem):
    assert detect_format(name) == fmt
    assert file_stem(name) == stem


def test_resolve_folder_sorted_recursive_skips_hidden(mixed_corpus):
    files = resolve_inputs([str(mixed_corpus.root)])
    urls = [f.url for f in files]
    assert urls == sorted(mixed_corpus.documents)
    assert [f.index for f in files] == list(range(len(files)))
    assert not any(".hidden" in u or "_SUCCESS" in u for u in urls)
    formats = {u.rsplit("/", 1)[-1]: f.format for u, f in zip(urls, files, strict=True)}
    assert formats["docs_a.jsonl.gz"] == "jsonl"
    assert formats["docs_b.parquet"] == "parquet"
    assert formats["note0.txt"] == "text"
    assert all(f.size_bytes > 0 for f in files if "empty" not in f.url)


def test_resolve_glob_dedup_and_errors(mixed_corpus, tmp_path):
    root = mixed_corpus.root
    both = resolve_inputs([f"{root}/notes/*.txt", str(root / "notes" / "note0.txt")])
    assert len(both) == 5  # the explicit file is also matched by the glob: listed once
    with pytest.raises(InputError, match="no files match"):
        resolve_inputs([f"{root}/*.nothing"])
    with pytest.raises(InputError, match="input not found"):
        resolve_inputs([str(tmp_path / "missing.jsonl")])
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(InputError, match="holds no input files"):
        resolve_inputs([str(tmp_path / "empty_dir")])
    (tmp_path / "table.csv").write_text("a,b\n")
    with pytest.raises(InputError, match="pass --format"):
        resolve_inputs([str(tmp_path / "table.csv")])
    assert resolve_inputs([str(tmp_path / "table.csv")], "text")[0].format == "text"


def test_resolve_memory_urls():
    fs = fsspec.filesystem("memory")
    fs.pipe("/corpus-t/b.jsonl", b'{"text": "b"}\n')
    fs.pipe("/corpus-t/a.jsonl", b'{"text": "a"}\n')
    files = resolve_inputs(["memory://corpus-t/*.jsonl"])
    assert [f.url for f in files] == ["memory:///corpus-t/a.jsonl", "memory:///corpus-t/b.jsonl"]
    docs, dead = _read(files[1])
    assert [d.text for d in docs] == ["b"] and not dead


# ---------------------------------------------------------------- formats


def test_mixed_corpus_every_record_accounted_for(mixed_corpus):
    files = resolve_inputs([str(mixed_corpus.root)])
    for f in files:
        docs, dead = _read(f, max_doc_bytes=mixed_corpus.max_doc_bytes)
        expected = mixed_corpus.documents[f.url]
        assert [(d.record_index, d.doc_id, d.text) for d in docs] == expected, f.url
        assert [(d.record_index, d.reason.value) for d in dead] == mixed_corpus.deadletters[f.url]
        for letter in dead:
            assert letter.url == f.url and letter.file_index == f.index
            assert letter.detail and "\n" not in letter.detail
            assert len(letter.raw) <= 1000


def test_jsonl_fields_sources_and_ids(tmp_path):
    path = tmp_path / "web.jsonl"
    rows = [
        {"doc": {"body": "first"}, "uid": 7, "meta": {"src": "arxiv"}},
        {"doc": {"body": "second"}, "meta": {"src": "wiki"}},
        {"doc": {"body": "third"}, "uid": {"k": [1, 2]}, "meta": {}},
        {"doc.body": "literal dotted key", "uid": "x", "meta": {"src": "books"}},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    docs, dead = _read(_one(path), text_field="doc.body", id_field="uid", source_field="meta.src")
    assert [(d.text, d.doc_id, d.source) for d in docs] == [
        ("first", "7", "arxiv"),
        ("second", "web.jsonl#1", "wiki"),
        ("literal dotted key", "x", "books"),
    ]
    assert [(d.record_index, d.reason.value) for d in dead] == [(2, "missing_source")]
    docs, _ = _read(_one(path), text_field="doc.body", source="common-crawl")
    assert {d.source for d in docs} == {"common-crawl"}
    docs, _ = _read(_one(path), text_field="doc.body")
    assert {d.source for d in docs} == {"web"}  # the file's stem


def test_text_per_line_and_crlf(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_bytes(b"alpha\r\n\r\nbeta gamma\n\xff\xfe bad\nlast line without newline")
    docs, dead = _read(_one(path), text_unit="line")
    assert [(d.record_index, d.text) for d in docs] == [
        (0, "alpha"),
        (2, "beta gamma"),
        (4, "last line without newline"),
    ]
    assert [(d.record_index, d.reason.value) for d in dead] == [
        (1, "empty_document"),
        (3, "invalid_utf8"),
    ]
    assert "\\xff" in dead[1].raw  # the truncated copy escapes undecodable bytes
    docs, dead = _read(_one(path), text_unit="file")
    assert not docs and [d.reason.value for d in dead] == ["invalid_utf8"]


def test_parquet_binary_and_wrong_types(tmp_path):
    path = tmp_path / "t.parquet"
    table = pa.table(
        {
            "text": pa.array([b"plain bytes", b"\xff\xfe", None], pa.binary()),
            "n": pa.array([1, 2, 3]),
        }
    )
    pq.write_table(table, path)
    docs, dead = _read(_one(path))
    assert [d.text for d in docs] == ["plain bytes"]
    assert [(d.record_index, d.reason.value) for d in dead] == [
        (1, "invalid_utf8"),
        (2, "missing_text"),
    ]
    docs, dead = _read(_one(path), text_field="n")
    assert not docs and [d.reason.value for d in dead] == ["non_string_text"] * 3
    docs, dead = _read(_one(path), text_field="absent")
    assert not docs and [d.reason.value for d in dead] == ["missing_text"] * 3
    assert [d.record_index for d in dead] == [0, 1, 2]


def test_unreadable_files_keep_what_was_read(tmp_path):
    rng = random.Random(0)
    words = [f"w{rng.randrange(10**6)}" for _ in range(200_000)]
    good = b"".join(
        json.dumps({"text": " ".join(words[i * 60 : (i + 1) * 60])}).encode() + b"\n"
        for i in range(3000)
    )
    blob = gzip.compress(good)  # ~1.9 MB of JSONL: several read blocks
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(blob[: len(blob) // 2])  # truncated mid-stream
    docs, dead = _read(_one(path))
    assert 0 < len(docs) < 3000
    assert [d.record_index for d in docs] == list(range(len(docs)))
    assert len(dead) == 1 and dead[0].reason.value == "unreadable_file"
    assert dead[0].record_index == len(docs)

    path = tmp_path / "garbage.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    docs, dead = _read(_one(path))
    assert not docs and [(d.record_index, d.reason.value) for d in dead] == [(0, "unreadable_file")]

    path = tmp_path / "garbage.jsonl.gz"
    path.write_bytes(b"not gzip at all")
    docs, dead = _read(_one(path))
    assert not docs and [d.reason.value for d in dead] == ["unreadable_file"]


def test_too_large_records_are_skipped_without_keeping_them(tmp_path):
    limit = 10_000
    path = tmp_path / "big.jsonl"
    huge = json.dumps({"text": "x" * (5 * (1 << 20))})  # 5 MiB line, over several blocks
    path.write_text(json.dumps({"text": "small"}) + "\n" + huge + "\n" + '{"text": "after"}')
    docs, dead = _read(_one(path), max_doc_bytes=limit)
    assert [d.text for d in docs] == ["small", "after"]
    assert [(d.record_index, d.reason.value) for d in dead] == [(1, "too_large")]
    assert dead[0].raw_bytes == len(huge) and len(dead[0].raw) == 1000

    text = tmp_path / "big.txt"
    text.write_text("y" * (limit + 1))
    docs, dead = _read(_one(text), max_doc_bytes=limit)
    assert not docs and dead[0].reason.value == "too_large" and dead[0].raw_bytes == limit + 1


def _peak_read_bytes(path, limit) -> int:
    tracemalloc.start()
    try:
        for _ in iter_documents(_one(path), ReadOptions(max_doc_bytes=limit)):
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_reading_memory_does_not_grow_with_file_size(tmp_path):
    line = json.dumps({"text": "memory stays flat " * 40}).encode() + b"\n"
    small, large = tmp_path / "small.jsonl.gz", tmp_path / "large.jsonl.gz"
    small.write_bytes(gzip.compress(line * 2_000))  # ~1.5 MB of JSONL
    large.write_bytes(gzip.compress(line * 40_000))  # ~30 MB of JSONL
    peak_small = _peak_read_bytes(small, 1 << 20)
    peak_large = _peak_read_bytes(large, 1 << 20)
    # Bounded by the 1 MiB read block plus one record, not by the 30 MB file.
    assert peak_large < 6 * (1 << 20)
    assert peak_large < 2 * peak_small + (1 << 20)
