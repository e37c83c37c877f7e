"""The exact-span channel (``tda.attribution.index.spans``) on real text: Python's own
documentation topics as byte tokens (vocab 256), cut into 64-token chunks, each topic one
segment; and against a plain-Python reference on random small corpora."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tda.attribution.index.spans import (
    Segment,
    SpanError,
    SpanHit,
    SpanIndex,
    SpanMatch,
    SpanShard,
    build_span_shard,
    rarity,
)
from tests.helpers import doc_topics

SIZE = 64
# Byte 0 never occurs in the documentation: it ends any span, a query's "foreign" token.
GAP = 0


def chunk_doc(ids, doc: int, size: int = SIZE, stride: int = SIZE) -> Segment:
    """One document as a segment of windows of ``size`` every ``stride`` tokens; chunk id
    :func:`cid` (doc, window)."""
    ids = np.asarray(ids, dtype=np.int64)
    starts = np.arange(0, len(ids), stride, dtype=np.int64)
    ends = np.minimum(starts + size, len(ids))
    return Segment(ids, cid(doc, np.arange(len(starts), dtype=np.int64)), starts, ends)


def cid(doc: int, window):
    return doc * 10_000 + window


def build(segments, vocab: int, directory: Path, stem: str = "shard") -> SpanShard:
    paths = build_span_shard(segments, vocab, str(directory), stem)
    return SpanShard.open(paths["tokens"], paths["table"], paths["chunks"], vocab)


@pytest.fixture(scope="module")
def docs() -> list[np.ndarray]:
    out = [
        np.frombuffer(text.encode(), dtype=np.uint8).astype(np.int64) for _, text in doc_topics()
    ]
    assert not any((d == GAP).any() for d in out)
    return out


@pytest.fixture(scope="module")
def shard(docs, tmp_path_factory) -> SpanShard:
    return build([chunk_doc(d, i) for i, d in enumerate(docs)], 256, tmp_path_factory.mktemp("one"))


@pytest.fixture(scope="module")
def index(shard) -> SpanIndex:
    return SpanIndex([shard])


def occurrences_in(docs, span) -> int:
    """Brute-force count of ``span`` in byte-token ``docs`` (overlapping matches counted,
    none across documents)."""
    needle = bytes(int(t) for t in span)
    total = 0
    for d in docs:
        hay = bytes(d.astype(np.uint8))
        at = hay.find(needle)
        while at >= 0:
            total += 1
            at = hay.find(needle, at + 1)
    return total


def unique_passage(docs, length: int, offset_in_chunk: int):
    """(doc, chunk, passage ids) of the first passage of ``length`` tokens starting
    ``offset_in_chunk`` into a chunk that occurs once in the corpus."""
    for d, ids in enumerate(docs):
        for c in range(1, len(ids) // SIZE - 1):
            start = c * SIZE + offset_in_chunk
            passage = ids[start : start + length]
            if len(passage) == length and occurrences_in(docs, passage) == 1:
                return d, c, passage
    raise AssertionError("no unique passage")


def test_extension_loads_without_the_package_init():
    code = (
        "import sys\n"
        "from tda.attribution.index import span_tables\n"
        "m = span_tables.tokengrams_module()\n"
        "assert m.__name__ == 'tokengrams.tokengrams', m\n"
        "assert 'tokengrams' not in sys.modules, 'package __init__ ran'\n"
        "assert 'transformers' not in sys.modules and 'datasets' not in sys.modules\n"
        "assert span_tables.tokengrams_module() is m\n"
        "import tokengrams\n"  # a later ordinary import reuses the loaded extension
        "assert tokengrams.MemmapIndex is m.MemmapIndex\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


def test_verbatim_passage_found_with_its_chunk(docs, index):
    d, c, passage = unique_passage(docs, 40, 10)
    other = docs[(d + 1) % len(docs)]
    query = [*other[100:164], GAP, *passage, GAP, *other[300:310]]
    a = 65
    region = (a, a + 40)
    assert index.maximal_spans(query, region, min_len=6) == [SpanMatch(a, a + 40, 1)]
    hits = index.search(query, region, k=5)
    assert hits == [SpanHit(cid(d, c), 40 + rarity(1), 40, a, a + 40, 10, 50, 1)]
    assert hits[0].score == 40.5


def test_passage_across_a_chunk_boundary_credits_both_chunks(docs, index, tmp_path):
    d, c, passage = unique_passage(docs, 60, 40)  # 24 tokens in chunk c, 36 in c + 1
    query = [GAP, *passage]
    hits = index.search(query, (1, 61), k=10)
    assert hits == [
        SpanHit(cid(d, c + 1), 36 + rarity(1), 36, 25, 61, 0, 36, 1),
        SpanHit(cid(d, c), 24 + rarity(1), 24, 1, 25, 40, 64, 1),
    ]
    # Overlapping windows (stride 32): every window the match touches, clipped to it.
    start = c * SIZE + 40
    overlapping = build([chunk_doc(docs[d], d, SIZE, 32)], 256, tmp_path)
    w = start // 32  # windows w-1 .. w+2 overlap [start, start + 60)
    assert overlapping.occurrences(passage, limit=10) == [
        (cid(d, w - 1), 40, 64),
        (cid(d, w), 8, 64),
        (cid(d, w + 1), 0, 36),
        (cid(d, w + 2), 0, 4),
    ]
    assert overlapping.occurrences(passage, limit=2) == overlapping.occurrences(passage, 10)[:2]
    found = {h.chunk_id: h for h in SpanIndex([overlapping]).search(query, (1, 61), k=10)}
    assert {cid: (h.length, h.query_start, h.chunk_start) for cid, h in found.items()} == {
        cid(d, w - 1): (24, 1, 40),
        cid(d, w): (56, 1, 8),
        cid(d, w + 1): (36, 25, 0),
        cid(d, w + 2): (4, 57, 0),
    }


def test_spans_never_cross_a_segment_separator(docs, shard):
    # The end of one document and the start of the next are neighbours in the token file.
    for i in range(0, len(docs) - 1, 7):
        query = [*docs[i][-20:], *docs[i + 1][:20]]
        assert occurrences_in(docs, query) == 0
        n = 0  # the reference: the longest prefix found inside one document
        while occurrences_in(docs, query[: n + 1]):
            n += 1
        assert shard.longest(query, 256)[0] == n < 40


def test_maximal_span_rules(tmp_path):
    text = [b"the quick brown fox", b"quick brown dog"]
    shard = build(
        [chunk_doc(np.frombuffer(t, np.uint8), i, 8) for i, t in enumerate(text)], 256, tmp_path
    )
    index = SpanIndex([shard])
    query = list(b"the quick brown dog")
    # start 0: "the quick brown " (16); 1..3 lie inside it; start 4: "quick brown dog" (15)
    assert shard.longest(query, 256).tolist()[:5] == [16, 15, 14, 13, 15]
    whole = (0, len(query))
    assert index.maximal_spans(query, whole, 1) == [SpanMatch(0, 16, 1), SpanMatch(4, 19, 1)]
    assert index.maximal_spans(query, whole, 16) == [SpanMatch(0, 16, 1)]
    assert index.maximal_spans(query, (17, 19), 1) == [SpanMatch(4, 19, 1)]
    assert index.maximal_spans(query, (0, 4), 1) == [SpanMatch(0, 16, 1)]
    assert index.maximal_spans(query, (3, 3), 1) == []
    assert shard.longest(query, 5).tolist()[:3] == [5, 5, 5]


def test_a_match_longer_than_max_len_is_tiled(docs, index):
    _, _, passage = unique_passage(docs, 43, 0)
    query = [GAP] * 3 + [*passage] + [GAP] * 3
    spans = index.maximal_spans(query, (0, len(query)), min_len=8, max_len=8)
    starts = [s.start for s in spans]
    # the run of capped starts is 3..38: its first and last, and the multiples of 8
    assert starts == [3, 8, 16, 24, 32, 38]
    assert all(s.end - s.start == 8 for s in spans)
    assert [s.count for s in spans] == [occurrences_in(docs, query[s.start : s.end]) for s in spans]
    inside = index.maximal_spans(query, (20, 30), min_len=8, max_len=8)
    assert [s.start for s in inside] == [16, 24]


def test_count_and_max_count(docs, tmp_path):
    licence = np.frombuffer(b"Permission is hereby granted, free of charge, to any", np.uint8)
    # wholly inside the first chunk of each copy
    copies = [chunk_doc([*docs[i][:5], *licence, *docs[i][5:90]], 500 + i) for i in range(5)]
    shard = build([chunk_doc(d, i) for i, d in enumerate(docs[:10])] + copies, 256, tmp_path)
    index = SpanIndex([shard])
    query = [GAP, *licence, GAP]
    region = (1, 1 + len(licence))
    spans = index.maximal_spans(query, region, 6)
    assert spans == [SpanMatch(1, 1 + len(licence), 5)]
    assert shard.count(licence) == index.count(licence) == 5
    assert shard.count(licence[:4]) == occurrences_in(
        [*docs[:10], *(s.ids for s in copies)], licence[:4]
    )
    assert index.search(query, region, k=10, max_count=4) == []
    hits = index.search(query, region, k=10, max_count=5)
    assert [h.chunk_id for h in hits] == [cid(500 + i, 0) for i in range(5)]
    assert all(h.count == 5 and h.length == len(licence) for h in hits)
    assert hits[0].score == len(licence) + rarity(5) < len(licence) + rarity(1)
    assert index.search(query, region, k=2) == hits[:2]


def test_rarer_span_wins_among_equal_lengths(tmp_path):
    common = list(b"abcdefgh")
    rare = list(b"ijklmnop")
    segs = [chunk_doc(common, 1), chunk_doc(common, 2), chunk_doc(rare, 3)]
    index = SpanIndex([build(segs, 256, tmp_path)])
    query = [*common, GAP, *rare]
    hits = index.search(query, (0, len(query)), k=3, min_len=4)
    assert [(h.chunk_id, h.count) for h in hits] == [(cid(3, 0), 1), (cid(1, 0), 2), (cid(2, 0), 2)]
    assert [h.length for h in hits] == [8, 8, 8]


def test_files_are_deterministic(docs, tmp_path):
    segs = [chunk_doc(d, i, SIZE, 48) for i, d in enumerate(docs[:20])]
    first = build_span_shard(segs, 256, str(tmp_path / "a"), "s")
    second = build_span_shard(segs, 256, str(tmp_path / "b"), "s")
    for role in ("tokens", "table", "chunks"):
        assert Path(first[role]).read_bytes() == Path(second[role]).read_bytes(), role
    tokens = np.fromfile(first["tokens"], dtype="<u2")
    assert len(tokens) == sum(len(d) + 1 for d in docs[:20])
    assert os.path.getsize(first["table"]) == 8 * len(tokens)
    chunks = np.load(first["chunks"])
    assert chunks.dtype == np.int64 and chunks.shape == (3, sum(len(s.chunk_ids) for s in segs))
    assert (np.diff(chunks[1]) >= 0).all()
    # each chunk's tokens in the file are its document's
    offset = 0
    by_id = {int(c): (int(s), int(e)) for c, s, e in chunks.T}
    for s in segs:
        for cid, a, b in zip(s.chunk_ids, s.starts, s.ends, strict=True):
            assert by_id[int(cid)] == (offset + a, offset + b)
            assert (tokens[offset + a : offset + b] == s.ids[a:b]).all()
        offset += len(s.ids) + 1
        assert tokens[offset - 1] == 256


def test_empty_shard_answers_nothing(docs, shard, tmp_path):
    empty = build([], 256, tmp_path)
    assert empty.n_tokens == 1
    query = [*docs[3][:80]]
    assert empty.longest(query, 256).tolist() == [0] * 80
    assert empty.count(query[:5]) == 0 and empty.occurrences(query[:5], 10) == []
    assert SpanIndex([empty]).search(query, (0, 80), k=5) == []
    assert SpanIndex([empty]).maximal_spans(query, (0, 80), 1) == []
    assert SpanIndex([]).search(query, (0, 80), k=5) == []
    assert SpanIndex([empty, shard]).search(query, (16, 80), k=5) == SpanIndex([shard]).search(
        query, (16, 80), k=5
    )


def test_several_shards_give_the_hits_of_one(docs, index, tmp_path):
    parts = [[chunk_doc(d, i) for i, d in enumerate(docs) if i % 3 == r] for r in range(3)]
    shards = [build(p, 256, tmp_path, f"s{r}") for r, p in enumerate(parts)]
    empty = build([], 256, tmp_path, "empty")
    many = SpanIndex([*shards, empty])
    threaded = SpanIndex([*shards, empty], threads=4)
    rng = np.random.default_rng(7)
    queries = []
    for _ in range(12):
        a, b, c = rng.choice(len(docs), 3, replace=False)
        pieces = [docs[a], docs[b], docs[c]]
        starts = [int(rng.integers(0, len(p) - 64)) for p in pieces]
        query = [*pieces[0][starts[0] : starts[0] + 40], *pieces[1][starts[1] : starts[1] + 24]]
        query += [*pieces[2][starts[2] : starts[2] + 64]]
        region = (64, 128)
        expected = index.search(query, region, k=20)
        assert expected, "a verbatim passage must be found"
        assert many.search(query, region, k=20) == expected
        assert threaded.search(query, region, k=20) == expected
        assert many.maximal_spans(query, region, 6) == index.maximal_spans(query, region, 6)
        assert (many.longest(query) == index.longest(query)).all()
        queries.append((query, region, expected))
    # concurrent readers of one index see what one reader sees
    with ThreadPoolExecutor(4) as pool:
        found = list(pool.map(lambda q: threaded.search(q[0], q[1], k=20), queries * 3))
    assert found == [e for _, _, e in queries * 3]


@pytest.mark.parametrize("vocab", [65535, 65536, 70000])
def test_token_width_follows_the_vocab(docs, tmp_path, vocab):
    # ids spread up to the top of the vocab: byte b -> b or vocab - 256 + b
    mapped = [np.where(d % 2 == 1, vocab - 256 + d, d) for d in docs[:12]]
    shard = build([chunk_doc(m, i) for i, m in enumerate(mapped)], vocab, tmp_path)
    width = 2 if vocab + 1 <= 1 << 16 else 4
    n = sum(len(m) + 1 for m in mapped)
    assert os.path.getsize(tmp_path / "shard.tokens") == width * n
    d, c, original = unique_passage(docs[:12], 40, 10)  # the mapping is one-to-one
    passage = mapped[d][c * SIZE + 10 : c * SIZE + 50]
    assert passage.max() >= vocab - 256
    assert (passage == np.where(original % 2 == 1, vocab - 256 + original, original)).all()
    query = [vocab - 1, *passage, vocab, -1]  # vocab and -1 are no tokens: never a match
    hits = SpanIndex([shard]).search(query, (1, 41), k=3)
    assert hits == [SpanHit(cid(d, c), 40 + rarity(1), 40, 1, 41, 10, 50, 1)]
    assert shard.longest(query, 256)[-2:].tolist() == [0, 0]


def corrupt(paths: dict[str, str], kind: str) -> None:
    if kind == "missing table":
        os.remove(paths["table"])
    elif kind == "scrambled table":
        table = np.fromfile(paths["table"], dtype="<u8")
        table[[0, -1]] = table[[-1, 0]]
        table.tofile(paths["table"])
    elif kind == "truncated table":
        os.truncate(paths["table"], os.path.getsize(paths["table"]) - 8)
    elif kind == "odd tokens":
        os.truncate(paths["tokens"], os.path.getsize(paths["tokens"]) - 1)
    elif kind == "tokens without separator":
        os.truncate(paths["tokens"], os.path.getsize(paths["tokens"]) - 2)
    elif kind == "chunks not npy":
        Path(paths["chunks"]).write_bytes(b"not an npy file at all, just text\n")
    elif kind == "chunks truncated":
        data = Path(paths["chunks"]).read_bytes()
        Path(paths["chunks"]).write_bytes(data[:-16])
    elif kind == "chunks wrong shape":
        np.save(paths["chunks"], np.zeros((2, 4), np.int64))
    elif kind == "chunks unsorted":
        np.save(paths["chunks"], np.load(paths["chunks"])[:, ::-1].copy())
    elif kind == "chunks past the tokens":
        chunks = np.load(paths["chunks"])
        chunks[2, -1] = 10**9
        np.save(paths["chunks"], chunks)


@pytest.mark.parametrize(
    "kind",
    [
        "missing table", "scrambled table", "truncated table", "odd tokens",
        "tokens without separator",
        "chunks not npy", "chunks truncated", "chunks wrong shape", "chunks unsorted",
        "chunks past the tokens",
    ],
)  # fmt: skip
def test_bad_files_raise_span_error(docs, tmp_path, kind):
    paths = build_span_shard(
        [chunk_doc(d, i) for i, d in enumerate(docs[:3])], 256, str(tmp_path), "s"
    )
    corrupt(paths, kind)
    with pytest.raises(SpanError) as error:
        SpanShard.open(paths["tokens"], paths["table"], paths["chunks"], 256)
    assert "\n" not in str(error.value)


def test_another_vocab_is_refused(docs, tmp_path):
    paths = build_span_shard([chunk_doc(docs[0], 0)], 256, str(tmp_path), "s")
    for vocab in (255, 70000):
        with pytest.raises(SpanError, match=r"separator|multiple"):
            SpanShard.open(paths["tokens"], paths["table"], paths["chunks"], vocab)


def test_bad_input_raises_span_error(docs, shard, index, tmp_path):
    with pytest.raises(SpanError, match="token id 300"):
        build_span_shard([chunk_doc([1, 2, 300], 0)], 256, str(tmp_path), "s")
    bad_chunk = Segment(np.arange(10), np.array([1]), np.array([0]), np.array([11]))
    with pytest.raises(SpanError, match="not inside"):
        build_span_shard([bad_chunk], 256, str(tmp_path), "s")
    unsorted = Segment(np.arange(10), np.array([1, 2]), np.array([5, 0]), np.array([9, 4]))
    with pytest.raises(SpanError, match="ascending"):
        build_span_shard([unsorted], 256, str(tmp_path), "s")
    with pytest.raises(SpanError, match="vocab_size"):
        build_span_shard([], 2**32, str(tmp_path), "s")
    with pytest.raises(SpanError, match="region"):
        index.search(list(docs[0][:10]), (5, 11), k=3)
    with pytest.raises(SpanError, match="1-D"):
        index.search(np.zeros((2, 3), np.int64), (0, 1), k=3)
    with pytest.raises(SpanError, match="max_len"):
        shard.longest([1, 2, 3], 0)


# --------------------------------------------------------------------------------------
# Against a plain-Python reference on random small corpora


def occurs(docs, span) -> bool:
    n = len(span)
    return any(list(d[j : j + n]) == list(span) for d in docs for j in range(len(d) - n + 1))


def reference_longest(docs, query, max_len: int) -> list[int]:
    out = []
    for i in range(len(query)):
        n = 0
        while n < max_len and i + n < len(query) and occurs(docs, query[i : i + n + 1]):
            n += 1
        out.append(n)
    return out


def reference_maximal(docs, query, region, min_len, max_len):
    """The documented rule, on the reference longest of every start."""
    longest = reference_longest(docs, query, max_len)
    a, b = region
    out = []
    for i, n in enumerate(longest):
        before = longest[i - 1] if i else 0
        after = longest[i + 1] if i + 1 < len(longest) else 0
        if n == max_len:
            if before == max_len and after == max_len and i % max_len:
                continue
        elif before > n:
            continue
        if n >= max(min_len, 1) and max(i, a) < min(i + n, b):  # overlaps [a, b)
            out.append((i, i + n))
    return [SpanMatch(s, e, occurrences_of(docs, query[s:e])) for s, e in out]


def occurrences_of(docs, span) -> int:
    n = len(span)
    return sum(list(d[j : j + n]) == list(span) for d in docs for j in range(len(d) - n + 1))


def reference_overlaps(docs, segments, span):
    """(chunk, chunk start, chunk end, span offset) for every match, in file order."""
    n = len(span)
    out = []
    for d, seg in zip(docs, segments, strict=True):
        order = sorted(zip(seg.starts, seg.ends, seg.chunk_ids, strict=True))
        for p in range(len(d) - n + 1):
            if list(d[p : p + n]) != list(span):
                continue
            for s, e, cid in order:
                if s < p + n and e > p:
                    inside = max(p, s)
                    out.append((int(cid), inside - s, min(p + n, e) - s, inside - p))
    return out


def reference_search(docs, segments, query, region, k, min_len, max_count, max_len):
    best = {}
    for m in reference_maximal(docs, query, region, min_len, max_len):
        if m.count > max_count:
            continue
        a, b = region
        for cid, c0, c1, off in reference_overlaps(docs, segments, query[m.start : m.end]):
            q0 = m.start + off
            # only the part of the overlap inside the region counts
            lo, hi = max(q0, a), min(q0 + c1 - c0, b)
            if hi <= lo:
                continue
            c0, c1, q0 = c0 + lo - q0, c0 + hi - q0, lo
            length = c1 - c0
            key = (length, -m.count, -q0, -c0)
            if cid not in best or key > best[cid][0]:
                hit = SpanHit(
                    cid, length + rarity(m.count), length, q0, q0 + length, c0, c1, m.count
                )
                best[cid] = (key, hit)
    return sorted((h for _, h in best.values()), key=lambda h: (-h.score, h.chunk_id))[:k]


@st.composite
def corpora(draw):
    vocab = 4  # a small alphabet: many repeats and long matches
    docs = draw(st.lists(st.lists(st.integers(0, vocab - 1), max_size=30), max_size=5))
    segments = []
    next_id = 0
    for d in docs:
        size = draw(st.integers(1, 6))
        stride = draw(st.integers(1, size))
        starts = np.arange(0, len(d), stride, dtype=np.int64)
        ends = np.minimum(starts + size, len(d))
        ids = np.arange(next_id, next_id + len(starts), dtype=np.int64)
        next_id += len(starts)
        segments.append(Segment(np.asarray(d, dtype=np.int64), ids, starts, ends))
    # -1 and vocab (the separator's value) are ids no document holds
    query = draw(st.lists(st.integers(-1, vocab), max_size=20))
    a = draw(st.integers(0, len(query)))
    b = draw(st.integers(a, len(query)))
    return vocab, docs, segments, query, (a, b)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    corpus=corpora(),
    max_len=st.integers(1, 12),
    min_len=st.integers(0, 4),
    max_count=st.integers(1, 6),
    shards=st.integers(1, 3),
)
def test_against_reference(corpus, max_len, min_len, max_count, shards):
    vocab, docs, segments, query, region = corpus
    with tempfile.TemporaryDirectory() as scratch:
        one = build(segments, vocab, Path(scratch), "one")
        assert one.longest(query, max_len).tolist() == reference_longest(docs, query, max_len)
        for span in (query[:3], *(d[1:5] for d in docs)):
            expected = reference_overlaps(docs, segments, span) if len(span) else []
            assert one._overlaps(span, None) == expected
            assert one.occurrences(span, 2) == [x[:3] for x in expected[:2]]
            assert one.count(span) == (occurrences_of(docs, span) if len(span) else 0)
        split = [
            build(segments[r::shards], vocab, Path(scratch), f"part{r}") for r in range(shards)
        ]
        index = SpanIndex(split)
        assert index.maximal_spans(query, region, min_len, max_len) == reference_maximal(
            docs, query, region, min_len, max_len
        )
        assert index.search(
            query, region, 5, min_len=min_len, max_count=max_count, max_len=max_len
        ) == reference_search(docs, segments, query, region, 5, min_len, max_count, max_len)
