"""Token windows and chunk rows with exact character provenance (attribution/chunking.py)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tda.attribution.corpus.chunking import char_boundaries, chunk_documents, chunk_windows
from tda.attribution.corpus.readers import Document
from tda.attribution.corpus.tokenizer import Encoded, load_tokenizer
from tda.schemas import (
    CHUNK_SCHEMA,
    DEFAULT_CODEC,
    ChunkIdCodec,
    ChunkIdOverflowError,
    ChunkingPolicy,
)
from tests.helpers import MULTILINGUAL

# ---------------------------------------------------------------------------------------
# chunk_windows


@st.composite
def window_args(draw) -> tuple[int, int, int]:
    n = draw(st.integers(0, 5000))
    size = draw(st.integers(1, 300))
    stride = draw(st.integers(1, size))
    return n, size, stride


@settings(max_examples=400, deadline=None)
@given(window_args())
def test_windows_properties(args):
    n, size, step = args
    starts, ends = chunk_windows(n, size, step)
    assert starts.dtype == np.int64 and ends.dtype == np.int64
    assert starts.shape == ends.shape
    k = len(starts)
    assert (k == 0) == (n == 0)
    if n == 0:
        return
    # Starts are 0, step, 2*step, ...
    assert starts.tolist() == [i * step for i in range(k)]
    # Every window but the last is full; the last ends at n.
    lengths = ends - starts
    assert (lengths[:-1] == size).all()
    assert 1 <= lengths[-1] <= size
    assert ends[-1] == n
    # The windows stop at the first one that reaches n.
    assert (ends[:-1] < n).all()
    # Every token is covered: no gap between consecutive windows.
    assert starts[0] == 0
    assert (starts[1:] <= ends[:-1]).all()
    covered = np.zeros(n, dtype=bool)
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        covered[s:e] = True
    assert covered.all()
    # Consecutive windows overlap by exactly size - step tokens, and each one adds new
    # tokens (never contained in the previous window).
    assert ((ends[:-1] - starts[1:]) == size - step).all()
    assert (ends[1:] > ends[:-1]).all()
    assert (starts[1:] > starts[:-1]).all()
    # The fewest windows that do all that.
    assert k == (1 if n <= size else -(-(n - size) // step) + 1)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 5000), st.integers(1, 300))
def test_windows_tile_when_stride_equals_size(n, size):
    starts, ends = chunk_windows(n, size, size)
    if n == 0:
        assert len(starts) == len(ends) == 0
        return
    assert starts[0] == 0 and ends[-1] == n
    assert starts[1:].tolist() == ends[:-1].tolist()
    assert int((ends - starts).sum()) == n
    assert len(starts) == -(-n // size)


@pytest.mark.parametrize(
    ("n", "size", "step", "expected"),
    [
        (0, 4, 4, []),
        (1, 4, 4, [(0, 1)]),
        (4, 4, 4, [(0, 4)]),
        (5, 4, 4, [(0, 4), (4, 5)]),
        (10, 4, 2, [(0, 4), (2, 6), (4, 8), (6, 10)]),
        (9, 4, 2, [(0, 4), (2, 6), (4, 8), (6, 9)]),
        (3, 1, 1, [(0, 1), (1, 2), (2, 3)]),
        (5, 3, 1, [(0, 3), (1, 4), (2, 5)]),
    ],
)
def test_windows_examples(n, size, step, expected):
    starts, ends = chunk_windows(n, size, step)
    assert list(zip(starts.tolist(), ends.tolist(), strict=True)) == expected


def test_windows_negative_count_is_empty():
    starts, ends = chunk_windows(-3, 4, 4)
    assert len(starts) == len(ends) == 0


# ---------------------------------------------------------------------------------------
# char_boundaries


class FakeEncoded(Encoded):
    """An encoding whose char_starts come from a table (to feed odd offsets)."""

    def __init__(self, starts: Sequence[int]) -> None:
        self._starts = list(starts)
        self.n_tokens = len(self._starts)

    @property
    def ids(self) -> np.ndarray:
        return np.arange(self.n_tokens, dtype=np.int64)

    def char_starts(self, positions: Sequence[int]) -> list[int]:
        return [self._starts[p] for p in positions]


def test_char_boundaries_fixed_ends_and_inner_starts():
    enc = FakeEncoded([0, 3, 5, 9])
    positions = np.arange(5, dtype=np.int64)
    assert char_boundaries(enc, positions, 12).tolist() == [0, 3, 5, 9, 12]
    # B(0) is 0 and B(n) is len(text), whatever char_starts would say about them.
    enc = FakeEncoded([4, 6, 8])
    assert char_boundaries(enc, np.asarray([0, 3]), 10).tolist() == [0, 10]


def test_char_boundaries_monotone_and_clamped():
    enc = FakeEncoded([0, 7, 3, 50, 2, 9])
    positions = np.arange(7, dtype=np.int64)
    bounds = char_boundaries(enc, positions, 10)
    assert bounds.dtype == np.int64
    assert bounds.tolist() == [0, 7, 7, 10, 10, 10, 10]


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_char_boundaries_property(data):
    text_len = data.draw(st.integers(0, 60))
    starts = data.draw(st.lists(st.integers(0, 80), min_size=1, max_size=40))
    enc = FakeEncoded(starts)
    n = enc.n_tokens
    positions = np.asarray(
        sorted(data.draw(st.sets(st.integers(0, n), min_size=1))), dtype=np.int64
    )
    bounds = char_boundaries(enc, positions, text_len)
    assert bounds.shape == positions.shape
    assert (np.diff(bounds) >= 0).all()
    assert (bounds <= text_len).all()
    assert (bounds >= 0).all()
    if positions[0] == 0:
        assert bounds[0] == 0
    if positions[-1] == n:
        assert bounds[-1] == text_len


def test_char_boundaries_real_tokenizer(hf, real_docs):
    texts = [text for _, text in real_docs]
    for text, enc in zip(texts, hf.encode_batch(texts), strict=True):
        positions = np.arange(enc.n_tokens + 1, dtype=np.int64)
        bounds = char_boundaries(enc, positions, len(text))
        assert bounds[0] == 0 and bounds[-1] == len(text)
        assert (np.diff(bounds) >= 0).all()
        inner = enc.char_starts(range(1, enc.n_tokens))
        assert bounds[1:-1].tolist() == inner


# ---------------------------------------------------------------------------------------
# chunk_documents


@pytest.fixture(scope="module")
def hf(tokenizer_dir):
    return load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="module")
def documents(real_docs) -> list[Document]:
    return [
        Document(record_index=10 * i, doc_id=doc_id, source="pydoc", text=text)
        for i, (doc_id, text) in enumerate(real_docs)
    ]


@pytest.fixture(scope="module")
def encodings(hf, documents):
    return hf.encode_batch([d.text for d in documents])


def _chunk(documents, encodings, policy, *, codec=DEFAULT_CODEC, dataset=3, file=17, first=1000):
    return chunk_documents(documents, encodings, policy, codec, dataset, file, first)


def _rows_by_doc(rows: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for row in rows:
        grouped.setdefault(row["doc_id"], []).append(row)
    return grouped


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 257])
def test_chunks_tile_documents(documents, encodings, chunk_size):
    policy = ChunkingPolicy(chunk_size=chunk_size)
    result = _chunk(documents, encodings, policy)
    assert result.batch is not None
    assert result.batch.schema.equals(CHUNK_SCHEMA, check_metadata=True)
    rows = result.batch.to_pylist()
    assert result.n_chunks == len(rows) == result.batch.num_rows
    assert result.n_tokens == sum(e.n_tokens for e in encodings)
    assert result.no_tokens == []
    grouped = _rows_by_doc(rows)
    assert list(grouped) == [d.doc_id for d in documents]  # document order
    for doc, enc in zip(documents, encodings, strict=True):
        chunks = grouped[doc.doc_id]
        for row in chunks:
            assert row["text"] == doc.text[row["char_start"] : row["char_end"]]
            assert row["token_end"] - row["token_start"] == row["n_tokens"] <= chunk_size
            assert row["n_tokens"] >= 1
            assert row["source"] == "pydoc"
            assert row["record_index"] == doc.record_index
        assert "".join(row["text"] for row in chunks) == doc.text
        assert sum(row["n_tokens"] for row in chunks) == enc.n_tokens
        assert [row["chunk_index"] for row in chunks] == list(range(len(chunks)))
        assert chunks[0]["token_start"] == 0 and chunks[0]["char_start"] == 0
        assert chunks[-1]["token_end"] == enc.n_tokens
        assert chunks[-1]["char_end"] == len(doc.text)
        for prev, row in itertools.pairwise(chunks):
            assert row["token_start"] == prev["token_end"]
            assert row["char_start"] == prev["char_end"]


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5])
def test_multilingual_split_characters_go_to_later_chunk(hf, chunk_size):
    docs = [Document(i, f"m{i}", "multi", text) for i, text in enumerate(MULTILINGUAL)]
    encs = hf.encode_batch(MULTILINGUAL)
    rows = _chunk(docs, encs, ChunkingPolicy(chunk_size=chunk_size)).batch.to_pylist()
    grouped = _rows_by_doc(rows)
    split_boundaries = 0
    for doc, enc in zip(docs, encs, strict=True):
        chunks = grouped[doc.doc_id]
        assert "".join(row["text"] for row in chunks) == doc.text
        assert sum(row["n_tokens"] for row in chunks) == enc.n_tokens
        # Count chunk boundaries that fall inside a character (byte-level split).
        for row in chunks[1:]:
            token = row["token_start"]
            prev_start = enc.char_starts([token - 1])[0]
            if prev_start == enc.char_starts([token])[0]:
                split_boundaries += 1
        for row in chunks:
            assert row["text"] == doc.text[row["char_start"] : row["char_end"]]
    assert split_boundaries > 0  # the case this test is about really happens


def test_chunk_ids(documents, encodings):
    codec = ChunkIdCodec(5, 20, 38)
    result = _chunk(documents, encodings, ChunkingPolicy(chunk_size=50), codec=codec, first=77)
    ids = result.batch.column("chunk_id").to_pylist()
    n = len(ids)
    assert ids == [codec.encode(3, 17, o) for o in range(77, 77 + n)]
    assert ids == list(range(ids[0], ids[0] + n))  # consecutive
    for ordinal, chunk_id in zip(range(77, 77 + n), ids, strict=True):
        loc = codec.decode(chunk_id)
        assert (loc.dataset, loc.file_index, loc.ordinal) == (3, 17, ordinal)

    default = _chunk(documents[:3], encodings[:3], ChunkingPolicy(), dataset=0, file=5, first=0)
    for ordinal, chunk_id in enumerate(default.batch.column("chunk_id").to_pylist()):
        loc = DEFAULT_CODEC.decode(chunk_id)
        assert (loc.dataset, loc.file_index, loc.ordinal) == (0, 5, ordinal)


def test_chunk_ids_continue_across_batches(documents, encodings):
    policy = ChunkingPolicy(chunk_size=64)
    whole = _chunk(documents, encodings, policy).batch.to_pylist()
    first = _chunk(documents[:10], encodings[:10], policy)
    second = _chunk(documents[10:], encodings[10:], policy, first=1000 + first.n_chunks)
    assert first.batch.to_pylist() + second.batch.to_pylist() == whole


@pytest.mark.parametrize(("chunk_size", "stride"), [(64, 16), (10, 9), (5, 1)])
def test_overlapping_chunks(documents, encodings, chunk_size, stride):
    policy = ChunkingPolicy(chunk_size=chunk_size, stride=stride)
    result = _chunk(documents, encodings, policy)
    assert result.n_tokens == sum(e.n_tokens for e in encodings)
    grouped = _rows_by_doc(result.batch.to_pylist())
    overlaps = 0
    for doc, enc in zip(documents, encodings, strict=True):
        chunks = grouped[doc.doc_id]
        starts, ends = chunk_windows(enc.n_tokens, chunk_size, stride)
        assert [r["token_start"] for r in chunks] == starts.tolist()
        assert [r["token_end"] for r in chunks] == ends.tolist()
        assert [r["chunk_index"] for r in chunks] == list(range(len(chunks)))
        for row in chunks:
            assert row["text"] == doc.text[row["char_start"] : row["char_end"]]
            assert row["token_end"] - row["token_start"] == row["n_tokens"] <= chunk_size
        for prev, row in itertools.pairwise(chunks):
            assert row["token_start"] - prev["token_start"] == stride
            assert row["char_start"] >= prev["char_start"]
            assert row["char_start"] <= prev["char_end"]
            if row["char_start"] < prev["char_end"]:
                overlaps += 1
        assert chunks[0]["char_start"] == 0
        assert chunks[-1]["char_end"] == len(doc.text)
    assert overlaps > 0


def test_chunk_boundaries_follow_token_offsets(documents, encodings):
    # char_start of every chunk but a document's first is where its first token starts.
    grouped = _rows_by_doc(_chunk(documents, encodings, ChunkingPolicy(13)).batch.to_pylist())
    for doc, enc in zip(documents, encodings, strict=True):
        chunks = grouped[doc.doc_id]
        starts = [r["token_start"] for r in chunks[1:]]
        assert [r["char_start"] for r in chunks[1:]] == enc.char_starts(starts)


def test_no_text(documents, encodings):
    with_text = _chunk(documents, encodings, ChunkingPolicy(chunk_size=32))
    without = _chunk(documents, encodings, ChunkingPolicy(chunk_size=32, store_text=False))
    assert without.batch.schema.equals(CHUNK_SCHEMA, check_metadata=True)
    assert without.batch.column("text").null_count == without.batch.num_rows > 0
    assert without.n_chunks == with_text.n_chunks
    assert without.n_tokens == with_text.n_tokens
    # Everything else is the same.
    assert without.batch.drop_columns(["text"]).equals(with_text.batch.drop_columns(["text"]))


def test_documents_without_tokens(hf, documents, encodings):
    empty_a = Document(record_index=5, doc_id="empty-a", source="pydoc", text="")
    empty_b = Document(record_index=6, doc_id="empty-b", source="pydoc", text="")
    (enc_empty,) = hf.encode_batch([""])
    assert enc_empty.n_tokens == 0
    docs = [empty_a, documents[0], empty_b, documents[1]]
    encs = [enc_empty, encodings[0], enc_empty, encodings[1]]
    result = _chunk(docs, encs, ChunkingPolicy(chunk_size=64), first=0)
    assert result.no_tokens == [empty_a, empty_b]
    rows = result.batch.to_pylist()
    assert {r["doc_id"] for r in rows} == {documents[0].doc_id, documents[1].doc_id}
    assert result.n_tokens == encodings[0].n_tokens + encodings[1].n_tokens
    expected = _chunk(documents[:2], encodings[:2], ChunkingPolicy(chunk_size=64), first=0)
    assert result.batch.equals(expected.batch)
    # Ordinals stay consecutive over the documents that do have tokens.
    ordinals = [DEFAULT_CODEC.decode(r["chunk_id"]).ordinal for r in rows]
    assert ordinals == list(range(len(rows)))


def test_only_documents_without_tokens(hf):
    docs = [Document(0, "e", "s", "")]
    result = _chunk(docs, hf.encode_batch([""]), ChunkingPolicy())
    assert result.batch is None
    assert result.n_chunks == 0 and result.n_tokens == 0
    assert result.no_tokens == docs
    nothing = _chunk([], [], ChunkingPolicy())
    assert nothing.batch is None and nothing.no_tokens == [] and nothing.n_chunks == 0


def test_mismatched_lengths_rejected(documents, encodings):
    with pytest.raises(ValueError):
        _chunk(documents[:3], encodings[:2], ChunkingPolicy())


def test_chunk_id_overflow_propagates(documents, encodings):
    codec = ChunkIdCodec(2, 2, 3)  # at most 8 ordinals per file
    with pytest.raises(ChunkIdOverflowError, match="ordinal"):
        _chunk(documents[:1], encodings[:1], ChunkingPolicy(4), codec=codec, dataset=0, file=0)
