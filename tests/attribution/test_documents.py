"""A document rebuilt from its chunks (``document_of``): the walk to the document's ends,
the cap and its window around the chunk asked for, gaps, and the text joined by character
offsets for tiling and for overlapping chunks. The lookup is a dict over chunk records cut
from real text with the chunker's own window arithmetic."""

from __future__ import annotations

import pytest

from tda.attribution.corpus.chunking import chunk_windows
from tda.attribution.index.documents import document_of, join_chunks
from tda.attribution.index.reader import IndexReadError
from tda.schemas import ChunkRecord

TEXT = (
    "Call me Ishmael. Some years ago, never mind how long precisely, having little or no "
    "money in my purse, and nothing particular to interest me on shore, I thought I would "
    "sail about a little and see the watery part of the world."
)


class DictLookup:
    """chunk id -> record, raising as ChunkLookup does for an id it does not hold."""

    def __init__(self, records: list[ChunkRecord]) -> None:
        self.records = {r.chunk_id: r for r in records}
        self.calls = 0

    def get(self, chunk_id: int) -> ChunkRecord:
        self.calls += 1
        if chunk_id < 0:
            raise ValueError("negative id")
        if chunk_id not in self.records:
            raise IndexReadError(f"chunk id {chunk_id} is not in this index")
        return self.records[chunk_id]


def _doc(doc_id: str, text: str, first_id: int, size: int, step: int, record_index: int):
    """One document cut into character windows as chunk_windows cuts token windows (a
    'token' is a character here), ids from first_id."""
    starts, ends = chunk_windows(len(text), size, step)
    return [
        ChunkRecord(first_id + i, "src", doc_id, record_index, i, int(a), int(b),
                    text[a:b], "file:///corpus.jsonl")
        for i, (a, b) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True))
    ]  # fmt: skip


def _file(size: int, step: int):
    """Three documents back to back in one file: 'before', 'moby' (TEXT), 'after'."""
    first = _doc("before", "An earlier record.", 0, size, step, 0)
    moby = _doc("moby", TEXT, len(first), size, step, 1)
    last = _doc("after", "A later record.", len(first) + len(moby), size, step, 2)
    return first, moby, last


@pytest.mark.parametrize(("size", "step"), [(16, 16), (16, 5), (16, 1)])
def test_whole_document_from_any_of_its_chunks(size, step):
    first, moby, last = _file(size, step)
    lookup = DictLookup(first + moby + last)
    for chunk in (moby[0], moby[len(moby) // 2], moby[-1]):
        view = document_of(lookup, chunk.chunk_id)
        assert [c.chunk_id for c in view.chunks] == [c.chunk_id for c in moby]
        assert (view.text, view.text_start, view.text_end) == (TEXT, 0, len(TEXT))
        assert not view.truncated
        assert (view.chunk_id, view.doc_id, view.record_index) == (chunk.chunk_id, "moby", 1)


def test_the_cap_keeps_a_window_around_the_chunk_and_says_truncated():
    _, moby, _ = _file(16, 4)
    lookup = DictLookup(moby)
    assert len(moby) > 40
    middle = moby[20]
    view = document_of(lookup, middle.chunk_id, limit=5)
    assert [c.chunk_index for c in view.chunks] == [18, 19, 20, 21, 22]
    assert view.truncated
    a, b = moby[18].char_start, moby[22].char_end
    assert (view.text_start, view.text_end, view.text) == (a, b, TEXT[a:b])
    # near an end the window fills from the other side; the whole cap is used
    view = document_of(lookup, moby[-1].chunk_id, limit=5)
    assert [c.chunk_index for c in view.chunks] == list(range(len(moby) - 5, len(moby)))
    assert view.truncated and view.text.endswith("of the world.")
    view = document_of(lookup, moby[0].chunk_id, limit=1)
    assert [c.chunk_index for c in view.chunks] == [0] and view.truncated
    # the walk is bounded by the cap, not by the document's length
    lookup.calls = 0
    document_of(lookup, middle.chunk_id, limit=3)
    assert lookup.calls <= 6


def test_a_chunk_the_index_no_longer_holds_ends_the_walk():
    _, moby, _ = _file(16, 16)
    held = [c for c in moby if c.chunk_index != 3]  # chunk 3 pruned
    view = document_of(DictLookup(held), moby[5].chunk_id)
    assert [c.chunk_index for c in view.chunks] == list(range(4, len(moby)))
    assert view.truncated and view.text == TEXT[moby[4].char_start :]
    with pytest.raises(IndexReadError):
        document_of(DictLookup(held), moby[3].chunk_id)


def test_text_not_stored_and_bad_limit():
    _, moby, _ = _file(16, 16)
    bare = [ChunkRecord(**{**c.__dict__, "text": None}) for c in moby]
    view = document_of(DictLookup(bare), moby[2].chunk_id)
    assert view.text is None and (view.text_start, view.text_end) == (0, len(TEXT))
    with pytest.raises(ValueError, match="limit"):
        document_of(DictLookup(moby), moby[0].chunk_id, limit=0)


def test_join_keeps_offsets_exact_over_a_hole():
    from tda.attribution.index.documents import DocumentChunk

    chunks = [DocumentChunk(1, 0, 0, 4, "Call"), DocumentChunk(2, 1, 7, 15, "Ishmael.")]
    assert join_chunks(chunks) == (0, 15, "Call   Ishmael.")
