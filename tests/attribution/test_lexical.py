"""The lexical (BM25) channel: shards built alone score exactly like one corpus-wide BM25
index, checked against bm25s (``method="lucene"``) on Python's documentation cut into
64-word chunks, one shard and three."""

from __future__ import annotations

import re

import bm25s
import numpy as np
import pytest

from tda.attribution.index.lexical import (
    ROLES,
    LexicalError,
    LexicalIndex,
    LexicalShard,
    build_lexical_shard,
    term_hash,
    term_hashes,
    words,
)
from tda.attribution.io.parts import StageError
from tda.attribution.rerank import words as rerank_words
from tests.helpers import MULTILINGUAL, doc_topics

K1, B = 1.2, 0.75
HAND = [
    "The amber-falcon guild was founded in Ashgate in 1901.",
    "Founded in 1901, the Amber Falcon guild kept falcons, and falcons kept the guild.",
    "",  # a chunk with no text: counted in N and the average length, never found
    "   ...   ;;; ",  # punctuation only: no word either
    "Zürich ZÜRICH zürich",
]
QUERIES = [
    "How does the for statement loop over an iterable?",
    "lambda expressions and yield",
    "amber falcon guild founded",
    "falcon falcon falcon",  # a repeated query word counts each time
    "ZÜRICH und Köln",
    "exception traceback raise from None",
    "qwxzv the nonexistentword",  # absent words beside a present one
]


def _chunks() -> list[tuple[int, str]]:
    """(chunk id, text): every documentation topic cut into 64-word windows (the original
    text from the first word's start to the last word's end), then the multilingual and
    hand-written ones; ids are (source << 16) + ordinal, ascending."""
    sources = [text for _, text in doc_topics()] + [" ".join(MULTILINGUAL)]
    out = []
    for s, text in enumerate(sources):
        spans = [m.span() for m in re.finditer(r"\w+", text)]
        for o, start in enumerate(range(0, len(spans), 64)):
            window = spans[start : start + 64]
            out.append(((s << 16) + o, text[window[0][0] : window[-1][1]]))
    base = len(sources) << 16
    out += [(base + i, t) for i, t in enumerate(HAND)]
    # the same text twice, the smaller id in a later shard below: ties go to the smaller id
    out += [(base + 100, HAND[0]), (7, HAND[0])]
    return sorted(out)


CHUNKS = _chunks()
IDS = np.array([c for c, _ in CHUNKS], dtype=np.int64)
TEXTS = [t for _, t in CHUNKS]


def _split(n_shards: int) -> list[list[int]]:
    """Row numbers of each shard: chunks dealt by source, so shards' id ranges interleave."""
    return [[i for i, c in enumerate(IDS.tolist()) if (c >> 16) % n_shards == s]
            for s in range(n_shards)]  # fmt: skip


def _build(tmp_path, n_shards: int, threads: int | None = None) -> LexicalIndex:
    shards = []
    for s, rows in enumerate(_split(n_shards)):
        paths = build_lexical_shard(
            IDS[rows], [TEXTS[i] for i in rows], str(tmp_path / f"x{n_shards}"), f"shard-{s:05d}"
        )
        shards.append(LexicalShard.open(paths))
    return LexicalIndex(shards, k1=K1, b=B, threads=threads)


@pytest.fixture(scope="module")
def reference() -> bm25s.BM25:
    """bm25s over the same chunks, as our words (row i = IDS[i])."""
    ref = bm25s.BM25(method="lucene", k1=K1, b=B)
    ref.index([words(t) for t in TEXTS], show_progress=False)
    return ref


@pytest.fixture(scope="module")
def one(tmp_path_factory) -> LexicalIndex:
    return _build(tmp_path_factory.mktemp("lex1"), 1)


@pytest.fixture(scope="module")
def three(tmp_path_factory) -> LexicalIndex:
    return _build(tmp_path_factory.mktemp("lex3"), 3)


def _ref_scores(ref: bm25s.BM25, query: str) -> np.ndarray:
    """bm25s's score of every chunk (row order) for ``query``'s words (0 without any)."""
    known = [w for w in words(query) if w in ref.vocab_dict]
    if not known:
        return np.zeros(len(IDS), np.float32)
    return ref.get_scores(known)


def test_the_corpus_is_real_and_the_words_are_reranks():
    assert len(CHUNKS) > 900 and sum(len(words(t)) for t in TEXTS) > 60_000
    assert all(words(t) == rerank_words(t) for t in TEXTS)
    assert words("Zürich, Köln: 東京!") == ["zürich", "köln", "東京"]


def test_term_hash_is_blake2b_8_bytes_little_endian():
    import hashlib

    digest = hashlib.blake2b(b"falcon", digest_size=8).digest()
    assert term_hash("falcon") == int.from_bytes(digest, "little")
    assert term_hashes(["falcon", "zürich"]).tolist() == [term_hash("falcon"), term_hash("zürich")]
    assert term_hashes(["falcon"]).dtype == np.uint64


@pytest.mark.parametrize("n_shards", [1, 3])
@pytest.mark.parametrize("query", QUERIES)
def test_scores_are_bm25s_lucene(query, n_shards, one, three, reference):
    index = one if n_shards == 1 else three
    expected = _ref_scores(reference, query)
    hits = index.search(query, 10)
    # bm25s's own top 10, best first, ties by smaller chunk id
    order = np.lexsort((IDS, -expected))
    order = order[expected[order] > 0][:10]
    assert [h.chunk_id for h in hits] == IDS[order].tolist()
    np.testing.assert_allclose([h.score for h in hits], expected[order], rtol=1e-5, atol=1e-5)
    # and every chunk's score, not only the top ones
    np.testing.assert_allclose(index.scores_for(query, IDS), expected, rtol=1e-5, atol=1e-5)


def test_three_shards_score_like_one(one, three):
    assert three.n_chunks == one.n_chunks == len(IDS)
    assert three.total_length == one.total_length
    assert [s.n_chunks for s in three.shards] == [len(r) for r in _split(3)]
    for query in QUERIES:
        assert three.search(query, 25) == one.search(query, 25)
    assert three.search_many(QUERIES, 5) == [one.search(q, 5) for q in QUERIES]


def test_threads_do_not_change_results(tmp_path, three):
    serial = _build(tmp_path, 3, threads=1)
    assert serial.search_many(QUERIES, 40) == three.search_many(QUERIES, 40)


def test_repeated_query_word_counts_each_time(one, reference):
    once = {h.chunk_id: h.score for h in one.search("falcon", 10)}
    thrice = {h.chunk_id: h.score for h in one.search("falcon Falcon FALCON", 10)}
    assert once and once.keys() == thrice.keys()
    for c in once:
        assert thrice[c] == pytest.approx(3 * once[c], rel=1e-6)
    row = int(np.searchsorted(IDS, next(iter(once))))
    assert reference.get_scores(["falcon"] * 3)[row] == pytest.approx(thrice[IDS[row]], rel=1e-5)


def test_ties_go_to_the_smaller_chunk_id(three):
    hits = three.search("amber falcon guild founded ashgate", 4)
    # chunk 7 and HAND[0]'s two copies hold the same text: equal scores, ids ascending
    same = [h for h in hits if h.score == hits[0].score]
    assert len(same) == 3
    assert [h.chunk_id for h in same] == sorted(h.chunk_id for h in same)
    assert same[0].chunk_id == 7
    by_shard = {c: s for s, rows in enumerate(_split(3)) for c in IDS[rows].tolist()}
    assert len({by_shard[h.chunk_id] for h in same}) > 1  # merged across shards


def test_matched_terms_are_the_query_words_the_chunk_holds(three):
    text_of = dict(CHUNKS)
    for query in QUERIES:
        query_words = list(dict.fromkeys(words(query)))
        for hit in three.search(query, 30):
            held = set(words(text_of[hit.chunk_id]))
            assert hit.terms == tuple(w for w in query_words if w in held)
            assert hit.terms  # a hit holds at least one query word
    hit = three.search("falcon kept nonexistentword AMBER", 1)[0]
    assert hit.terms == ("falcon", "kept", "amber")


def test_scores_for_agrees_with_search(three, one):
    for query in QUERIES:
        hits = three.search(query, 50)
        ids = [h.chunk_id for h in hits]
        got = three.scores_for(query, ids)
        assert got.dtype == np.float32 and got.shape == (len(ids),)
        assert got.tolist() == [h.score for h in hits]  # the same bits
        assert one.scores_for(query, ids).tolist() == got.tolist()
    # a chunk without the words, an id in no shard, a repeat: 0, 0, its score again
    hit = three.search("falcon", 1)[0]
    without = IDS[int(np.flatnonzero([not {"falcon"} & set(words(t)) for t in TEXTS])[0])]
    got = three.scores_for("falcon", [hit.chunk_id, int(without), 123_456_789_000, hit.chunk_id])
    assert got.tolist() == [hit.score, 0.0, 0.0, hit.score]
    assert three.scores_for("falcon", []).shape == (0,)
    assert three.scores_for("", [hit.chunk_id]).tolist() == [0.0]


def test_absent_and_empty_queries_find_nothing(three, one):
    assert three.search("qwxzv nonexistentword", 10) == []
    assert three.search("", 10) == []
    assert three.search("  ;;; ...", 10) == []
    assert three.search("falcon", 0) == []
    with pytest.raises(LexicalError, match="k must be"):
        three.search("falcon", -1)
    # absent words change nothing: df 0 on every shard, no IDF, no score
    assert three.search("falcon qwxzv", 10) == one.search("falcon", 10)
    assert three.search_many([], 3) == []


def test_empty_texts_count_in_the_statistics_but_are_never_found(one, reference):
    empty = [int(c) for c, t in CHUNKS if not words(t)]
    assert len(empty) == 2
    assert one.n_chunks == len(IDS)  # bm25s's N also counts them (checked by the scores)
    assert one.total_length == sum(len(words(t)) for t in TEXTS)
    assert one.avgdl == pytest.approx(np.mean([len(words(t)) for t in TEXTS]))
    found = {h.chunk_id for q in QUERIES for h in one.search(q, len(IDS))}
    assert found and not found & set(empty)
    assert one.scores_for("the falcon", empty).tolist() == [0.0, 0.0]


def test_empty_shards(tmp_path, one):
    paths = build_lexical_shard(np.zeros(0, np.int64), [], str(tmp_path), "shard-00000")
    assert sorted(paths) == sorted(ROLES)
    empty = LexicalShard.open(paths)
    assert (empty.n_chunks, empty.total_length) == (0, 0)
    assert empty.doc_freqs(term_hashes(["the"])).tolist() == [0]
    ids, scores = empty.score(term_hashes(["the"]), np.ones(1), 10.0, K1, B)
    assert ids.shape == scores.shape == (0,)
    assert LexicalIndex([empty]).search("the", 5) == []
    assert LexicalIndex([]).search("the", 5) == []
    assert LexicalIndex([empty]).scores_for("the", [1, 2]).tolist() == [0.0, 0.0]
    # an empty shard beside real ones changes nothing
    mixed = LexicalIndex([empty, *one.shards, empty], k1=K1, b=B)
    assert mixed.search_many(QUERIES, 20) == one.search_many(QUERIES, 20)
    # chunks whose texts hold no word: a shard with lengths but no terms
    blank = LexicalShard.open(
        build_lexical_shard(np.array([3, 9]), ["", "..."], str(tmp_path), "b")
    )
    assert (blank.n_chunks, blank.total_length, len(blank.terms)) == (2, 0, 0)
    assert LexicalIndex([blank]).search("the", 5) == []


def test_shard_statistics(tmp_path):
    ids = np.array([10, 20, 30], dtype=np.int64)
    texts = ["the cat the hat", "The dog", ""]
    shard = LexicalShard.open(build_lexical_shard(ids, texts, str(tmp_path), "s"))
    assert (shard.n_chunks, shard.total_length) == (3, 6)
    assert shard.lengths.tolist() == [4, 2, 0]
    assert shard.doc_freqs(term_hashes(["the", "cat", "dog", "bird"])).tolist() == [2, 1, 1, 0]
    # score: chunk ids ascending, the formula by hand (idf given, avgdl 2)
    got_ids, got = shard.score(term_hashes(["the", "bird"]), np.array([0.5, 9.0]), 2.0, K1, B)
    assert got_ids.tolist() == [10, 20] and got.dtype == np.float32
    expect = [0.5 * tf / (tf + K1 * (1 - B + B * dl / 2.0)) for tf, dl in ((2, 4), (1, 2))]
    np.testing.assert_allclose(got, expect, rtol=1e-7)


def _bytes(paths: dict[str, str]) -> dict[str, bytes]:
    return {role: open(path, "rb").read() for role, path in paths.items()}


def test_files_are_deterministic(tmp_path):
    a = build_lexical_shard(IDS, TEXTS, str(tmp_path / "a"), "shard-00001")
    b = build_lexical_shard(IDS, TEXTS, str(tmp_path / "b"), "shard-00001")
    assert _bytes(a) == _bytes(b)
    assert sorted(a) == sorted(ROLES)
    assert all(p.endswith(f"shard-00001.{role}.npy") for role, p in a.items())
    # the same chunks given in another order: sorted by id, the same bytes
    rev = build_lexical_shard(IDS[::-1].copy(), TEXTS[::-1], str(tmp_path / "c"), "shard-00001")
    assert _bytes(rev) == _bytes(a)
    # memory-mapped, with the documented dtypes
    shard = LexicalShard.open(a)
    # memory-mapped, not read into memory: a view whose base is the file's mapping
    base = shard.postings
    while getattr(base, "base", None) is not None and not isinstance(base, np.memmap):
        base = base.base
    assert isinstance(base, np.memmap) or type(base).__name__ == "mmap"
    assert [str(getattr(shard, r).dtype) for r in ROLES] == [
        "uint64", "int64", "uint32", "uint16", "uint32", "int64"
    ]  # fmt: skip
    assert np.all(np.diff(shard.terms.astype(np.float64)) > 0)
    assert shard.ids.tolist() == IDS.tolist()


def test_counts_over_16_bits_are_kept_exactly(tmp_path):
    texts = ["spam " * 70_000 + "eggs", "spam eggs ham", "ham"]
    paths = build_lexical_shard(np.array([1, 2, 3]), texts, str(tmp_path), "big")
    shard = LexicalShard.open(paths)
    assert shard.tf.dtype == np.uint32 and int(shard.tf.max()) == 70_000
    index = LexicalIndex([shard], k1=K1, b=B)
    n, avgdl = 3, (70_001 + 3 + 1) / 3
    idf = np.log(1 + (n - 2 + 0.5) / (2 + 0.5))
    expect = idf * 70_000 / (70_000 + K1 * (1 - B + B * 70_001 / avgdl))
    assert index.scores_for("spam", [1])[0] == pytest.approx(expect, rel=1e-6)


def test_bad_build_input_is_one_line(tmp_path):
    with pytest.raises(LexicalError, match="2 chunk ids but 1 texts"):
        build_lexical_shard(np.array([1, 2]), ["a"], str(tmp_path), "s")
    with pytest.raises(LexicalError, match="chunk id 5 appears twice"):
        build_lexical_shard(np.array([5, 5]), ["a", "b"], str(tmp_path), "s")
    with pytest.raises(LexicalError, match="chunk 2 has no text"):
        build_lexical_shard(np.array([1, 2]), ["a", None], str(tmp_path), "s")
    with pytest.raises(LexicalError, match="1-D integer"):
        build_lexical_shard(np.array([1.5]), ["a"], str(tmp_path), "s")
    with pytest.raises(LexicalError, match="k1 >= 0"):
        LexicalIndex([], k1=-1.0)


@pytest.fixture()
def small(tmp_path) -> dict[str, str]:
    return build_lexical_shard(IDS[:50], TEXTS[:50], str(tmp_path), "shard-00002")


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and isinstance(excinfo.value, StageError)
    return message


def test_missing_files_are_one_line(small):
    import os

    os.remove(small["tf"])
    with pytest.raises(LexicalError) as e:
        LexicalShard.open(small)
    assert "shard-00002.tf.npy not found" in _one_line(e)
    with pytest.raises(LexicalError) as e:
        LexicalShard.open({r: p for r, p in small.items() if r != "tf"})
    assert "has no tf file" in _one_line(e)


@pytest.mark.parametrize(
    ("role", "damage", "says"),
    [
        ("postings", lambda b: b[: len(b) // 2], "not a readable .npy"),  # truncated
        ("terms", lambda b: b"garbage" + b[7:], "not a readable .npy"),  # no .npy header
        ("tf", lambda b: b"", "not a readable .npy"),  # empty file
    ],
)
def test_corrupt_files_are_one_line(small, role, damage, says):
    path = small[role]
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(damage(data))
    with pytest.raises(LexicalError) as e:
        LexicalShard.open(small)
    assert says in _one_line(e) and path in str(e.value)


def test_arrays_that_do_not_fit_are_one_line(small):
    np.save(small["tf"], np.ones(3, dtype=np.float32))
    with pytest.raises(LexicalError) as e:
        LexicalShard.open(small)
    assert "tf is float32" in _one_line(e)
    np.save(small["tf"], np.ones(3, dtype=np.uint16))
    with pytest.raises(LexicalError) as e:
        LexicalShard.open(small)
    assert "do not fit together" in _one_line(e)
