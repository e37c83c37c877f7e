"""A training document rebuilt from its chunks in the index: what the viewer shows when a
hit is opened in full (``GET /api/documents/{chunk_id}``).

Algorithm, given a chunk id and a cap of ``limit`` chunks:

1. Look the chunk up; its document is its (source, doc_id, record_index).
2. Chunk ids are ordinals within their input file and a file's chunks are written in
   document order, so the document's other chunks are the ids just before and after it.
   Walk back by one id at a time while the previous id is the same document's previous
   chunk (``chunk_index`` one lower), at most ``limit // 2`` steps; walk forward likewise
   until the document ends or ``limit`` chunks are held; if the forward walk ended early,
   walk back further with what is left of the cap. So the chunk asked for is always
   returned, near the middle of a document longer than the cap.
3. A walk stops at the first id the index does not hold (an id past the end of the file,
   or a chunk removed by ``tda prune apply``): the document shows the part around the
   chunk up to that gap, and says ``truncated``.
4. Join the texts by character offsets: with stride == chunk size the chunks tile the
   document and their texts concatenate; with overlapping chunks each one adds only the
   characters past the end of the text so far.
"""

from __future__ import annotations

from dataclasses import dataclass

from tda.attribution.index.reader import IndexReadError
from tda.schemas import ChunkRecord

__all__ = ["DOCUMENT_CHUNK_LIMIT", "DocumentChunk", "DocumentView", "document_of"]

# A document can be 16 MiB (about 65,000 chunks of 64 tokens); 2,000 chunks is about half
# a megabyte of text, which a browser lays out in well under a second.
DOCUMENT_CHUNK_LIMIT = 2000


@dataclass(frozen=True)
class DocumentChunk:
    """One chunk of a document: its id, position in the document, and text."""

    chunk_id: int
    chunk_index: int  # 0 for the document's first chunk
    char_start: int  # offsets in the document's text
    char_end: int
    text: str | None  # None when the run used --no-text


@dataclass(frozen=True)
class DocumentView:
    """A document as far as the index holds it around one chunk: provenance, its chunks in
    order, and their text joined. ``text`` is the document's characters
    ``[text_start, text_end)`` (None when the chunks have no stored text);
    ``truncated``: the document has chunks before or after the ones returned (the cap, or
    a gap the index does not hold)."""

    chunk_id: int  # the chunk asked for
    source: str
    doc_id: str
    record_index: int
    url: str  # the input file
    chunks: list[DocumentChunk]
    text_start: int
    text_end: int
    text: str | None
    truncated: bool


def document_of(lookup, chunk_id: int, limit: int = DOCUMENT_CHUNK_LIMIT) -> DocumentView:
    """``lookup`` (a :class:`~tda.attribution.index.reader.ChunkLookup`, or anything whose
    ``get(chunk_id)`` returns a :class:`ChunkRecord` and raises :class:`IndexReadError`,
    ``ValueError`` or ``OverflowError`` for an id it does not hold), a chunk id and a cap
    ``limit`` >= 1 -> the :class:`DocumentView` of at most ``limit`` consecutive chunks of
    that chunk's document, the chunk among them. The lookup's errors for ``chunk_id``
    itself propagate (the caller maps them to a 404)."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    record = lookup.get(chunk_id)

    def neighbour(rec: ChunkRecord, step: int) -> ChunkRecord | None:
        """The document's chunk just before (step -1) or after (+1) ``rec``, or None."""
        if step < 0 and rec.chunk_index == 0:
            return None  # the document's first chunk: nothing to look up
        try:
            other = lookup.get(rec.chunk_id + step)
        except (IndexReadError, ValueError, OverflowError):
            return None  # past the file's ends, or a chunk the index no longer holds
        same = (other.source, other.doc_id, other.record_index) == (
            record.source,
            record.doc_id,
            record.record_index,
        )
        return other if same and other.chunk_index == rec.chunk_index + step else None

    def walk(start: ChunkRecord, step: int, steps: int) -> list[ChunkRecord]:
        out, rec = [], start
        for _ in range(steps):
            rec = neighbour(rec, step)
            if rec is None:
                break
            out.append(rec)
        return out

    before = walk(record, -1, (limit - 1) // 2)
    after = walk(record, 1, limit - 1 - len(before))
    if len(before) == (limit - 1) // 2:  # the back walk hit the cap: use what is left
        before += walk(before[-1] if before else record, -1, limit - 1 - len(before) - len(after))
    records = [*before[::-1], record, *after]
    truncated = records[0].chunk_index > 0 or neighbour(records[-1], 1) is not None
    chunks = [
        DocumentChunk(r.chunk_id, r.chunk_index, r.char_start, r.char_end, r.text) for r in records
    ]
    text_start, text_end, text = join_chunks(chunks)
    return DocumentView(
        chunk_id=record.chunk_id,
        source=record.source,
        doc_id=record.doc_id,
        record_index=record.record_index,
        url=record.url,
        chunks=chunks,
        text_start=text_start,
        text_end=text_end,
        text=text,
        truncated=truncated,
    )


def join_chunks(chunks: list[DocumentChunk]) -> tuple[int, int, str | None]:
    """Consecutive chunks of one document (at least one) -> (text_start, text_end, text):
    the document's characters ``[text_start, text_end)`` that they cover, each character
    taken once however much the chunks overlap; text None if any chunk has none."""
    start = end = chunks[0].char_start
    pieces: list[str] = []
    for chunk in chunks:
        if chunk.text is None:
            return chunks[0].char_start, max(c.char_end for c in chunks), None
        if chunk.char_start > end:
            # never for chunks cut by chunk_documents (they tile or overlap); spaces keep
            # every later offset exact should a writer leave a hole
            pieces.append(" " * (chunk.char_start - end))
            end = chunk.char_start
        if chunk.char_end > end:
            pieces.append(chunk.text[end - chunk.char_start :])
            end = chunk.char_end
    return start, end, "".join(pieces)
