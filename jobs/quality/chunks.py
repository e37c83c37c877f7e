"""The chunk table every method ranks: each chunk of the harness's build root, with the
planted facts' sources (relevant chunks) and distractors marked by document id."""

from __future__ import annotations

from pathlib import Path

from .facts import Fact

__all__ = ["ChunkTable"]


class ChunkTable:
    """Every chunk of a build root, in file then row order: ``rows`` (chunk id, source,
    document id, record index, character span, text, and ``file_index`` from the part's
    name; the Arrow rows as read, what a prune list copies), ``ids`` and ``texts`` aligned
    with it, and ``position``: chunk id -> its index in that order."""

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

    def relevant(self, fact: Fact) -> set[int]:
        """The planted sources of ``fact``: chunks of its own documents that contain its
        place."""
        return {
            r["chunk_id"] for r, text in zip(self.rows, self.texts, strict=True)
            if r["doc_id"].startswith(f"fact-{fact.index}-") and fact.place in text
        }  # fmt: skip

    def distractors(self, fact: Fact) -> set[int]:
        """The chunks of ``fact``'s distractor documents (same entity, another attribute)."""
        prefix = f"distractor-{fact.index}-"
        return {r["chunk_id"] for r in self.rows if r["doc_id"].startswith(prefix)}
