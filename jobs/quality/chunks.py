"""The chunk table every method ranks: each chunk of the harness's build root, with the
planted facts' sources (relevant chunks) and distractors marked by document id, and a
passage output's sources (the chunks its characters overlap, in every copy)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from .facts import Fact

__all__ = ["ChunkTable"]


class ChunkTable:
    """Every chunk of a build root, in file then row order: ``rows`` (chunk id, source,
    document id, record index, character span, text, and ``file_index`` from the part's
    name; the Arrow rows as read, what a prune list copies), ``ids`` and ``texts`` aligned
    with it, ``position``: chunk id -> its index in that order, and ``chunk_size``, the
    chunk stage's (from ROOT/chunks/manifest.json; None without one)."""

    COLUMNS = ("chunk_id", "source", "doc_id", "record_index", "char_start", "char_end", "text")

    def __init__(self, root: Path) -> None:
        import pyarrow.parquet as pq

        rows = []
        for part in sorted((root / "chunks").glob("part-*.parquet")):
            file_index = int(part.stem.split("-")[1])
            for row in pq.read_table(part, columns=list(self.COLUMNS)).to_pylist():
                rows.append({**row, "file_index": file_index})
        self.rows = rows
        self.ids = [r["chunk_id"] for r in rows]
        self.texts = [r["text"] or "" for r in rows]
        self.position = {cid: i for i, cid in enumerate(self.ids)}
        manifest = root / "chunks" / "manifest.json"
        self.chunk_size: int | None = (
            json.loads(manifest.read_text())["chunking"]["chunk_size"]
            if manifest.exists()
            else None
        )
        self._by_doc: dict[str, list[dict]] | None = None
        self._by_text: dict[str, list[dict]] | None = None

    def doc_chunks(self, doc_id: str) -> list[dict]:
        """The rows of document ``doc_id``, by character start (empty: no such chunk)."""
        if self._by_doc is None:
            by_doc: dict[str, list[dict]] = {}
            for r in self.rows:
                by_doc.setdefault(r["doc_id"], []).append(r)
            self._by_doc = {d: sorted(rs, key=lambda r: r["char_start"])
                            for d, rs in by_doc.items()}  # fmt: skip
        return self._by_doc.get(doc_id, [])

    def span_sources(self, copies: Sequence[str], start: int, end: int) -> dict[str, set[int]]:
        """The sources of the characters [start, end) of a document stored as ``copies``
        (doc ids holding the same text): per copy, its chunks whose characters overlap
        them; then any other chunk whose text is one of those chunks' (an identical
        copy elsewhere), under its own doc id. Their union is the relevant set."""
        if self._by_text is None:
            by_text: dict[str, list[dict]] = {}
            for r, text in zip(self.rows, self.texts, strict=True):
                by_text.setdefault(text, []).append(r)
            self._by_text = by_text
        found = {doc: _overlapping(self.doc_chunks(doc), start, end) for doc in copies}
        texts = {self.texts[self.position[c]] for ids in list(found.values()) for c in ids}
        for text in sorted(texts):
            for r in self._by_text.get(text, []):
                if r["doc_id"] not in copies:
                    found.setdefault(r["doc_id"], set()).add(r["chunk_id"])
        return found

    def relevant(self, fact: Fact) -> set[int]:
        """The planted sources of ``fact``: chunks of its own documents whose characters
        overlap an occurrence of its place. A statement cut between two chunks ("... was
        founded in Mill" | "haven.") makes both sources: training reads across the cut,
        and removing either one leaves that copy incomplete."""
        prefix = f"fact-{fact.index}-"
        found: set[int] = set()
        for doc in sorted({r["doc_id"] for r in self.rows if r["doc_id"].startswith(prefix)}):
            rows = self.doc_chunks(doc)
            text = self._doc_text(rows)
            at = text.find(fact.place)
            while at >= 0:
                found |= _overlapping(rows, at, at + len(fact.place))
                at = text.find(fact.place, at + 1)
        return found

    def _doc_text(self, rows: list[dict]) -> str:
        """A document's text put back together from its chunks (``rows``, by character
        start; each chunk's text written at its character span, gaps left as NULs)."""
        chars = ["\0"] * max((r["char_end"] for r in rows), default=0)
        for r in rows:
            text = self.texts[self.position[r["chunk_id"]]]
            chars[r["char_start"] : r["char_start"] + len(text)] = text
        return "".join(chars)

    def distractors(self, fact: Fact) -> set[int]:
        """The chunks of ``fact``'s distractor documents (same entity, another attribute)."""
        prefix = f"distractor-{fact.index}-"
        return {r["chunk_id"] for r in self.rows if r["doc_id"].startswith(prefix)}


def _overlapping(rows: list[dict], start: int, end: int) -> set[int]:
    """The chunk ids of ``rows`` (one document's chunks) whose characters overlap [start,
    end)."""
    return {r["chunk_id"] for r in rows if r["char_start"] < end and r["char_end"] > start}
