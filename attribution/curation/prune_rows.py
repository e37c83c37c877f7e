"""What a prune list removes from one input file's chunks table, as pure functions of
the :class:`~.prune.PrunePlan` and the table (the compute phase of
:meth:`~.prune.PruneStage.process`): which rows go, the counts per source, the edits to
the corpus file (records dropped or character spans cut) and the tokens removed.

A chunks table here has the columns of ``tda.schemas.CHUNK_SCHEMA`` that are read:
``chunk_id``, ``source``, ``record_index``, ``char_start`` / ``char_end`` and
``token_start`` / ``token_end``.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["PruneSelection", "corpus_edits", "per_source", "pruned_rows", "tokens_removed"]


class PruneSelection(Protocol):
    """What these functions read of a prune plan (:class:`~.prune.PrunePlan` has it; a
    protocol rather than an import, since :mod:`.prune` imports this module)."""

    level: str  # chunk | document | source
    sources: Set[str]  # source level: the sources removed
    documents: Mapping[int, Set[int]]  # document level: file index -> record indices
    chunks: Mapping[int, Set[int]]  # chunk level: file index -> chunk ids


def pruned_rows(plan: PruneSelection, file_index: int, chunks: pa.Table) -> np.ndarray:
    """(rows,) bool: the chunks of one file's table that the prune list removes."""
    if plan.level == "source":
        remove = pc.is_in(chunks["source"], pa.array(sorted(plan.sources))).to_numpy(
            zero_copy_only=False
        )
    elif plan.level == "document":
        wanted = np.fromiter(plan.documents.get(file_index, ()), dtype=np.int64)
        remove = np.isin(chunks["record_index"].to_numpy(), wanted)
    else:
        wanted = np.fromiter(plan.chunks.get(file_index, ()), dtype=np.int64)
        remove = np.isin(chunks["chunk_id"].to_numpy(), wanted)
    return np.asarray(remove, dtype=bool)


def per_source(plan: PruneSelection, removed: pa.Table) -> dict[str, dict[str, int]]:
    """Removed chunks -> per source {"chunks": n, "documents": m} (documents: 0 at chunk
    level, where documents are edited, not removed)."""
    per_source: dict[str, dict[str, int]] = {}
    for row in (
        removed.group_by("source", use_threads=False)
        .aggregate([("chunk_id", "count"), ("record_index", "count_distinct")])
        .to_pylist()
    ):
        per_source[row["source"]] = {
            "chunks": int(row["chunk_id_count"]),
            "documents": int(row["record_index_count_distinct"]) if plan.level != "chunk" else 0,
        }
    return per_source


def corpus_edits(plan: PruneSelection, removed: pa.Table):
    """Removed chunks -> (records to drop, {record: character spans to cut}): chunk level
    cuts spans out of documents, the other levels drop whole records."""
    drop: set[int] = set()
    cuts: dict[int, list[tuple[int, int]]] = {}
    if plan.level == "chunk":
        for row in removed.select(["record_index", "char_start", "char_end"]).to_pylist():
            cuts.setdefault(int(row["record_index"]), []).append(
                (row["char_start"], row["char_end"])
            )
    else:
        drop = {int(r) for r in np.unique(removed["record_index"].to_numpy())}
    return drop, cuts


def tokens_removed(plan: PruneSelection, removed: pa.Table) -> int:
    """Tokens the removed chunks covered (overlapping chunks counted once; a removed
    document counts its every token)."""
    if plan.level == "chunk":
        return sum(sum(e - s for s, e in _merge(spans)) for spans in _token_spans(removed).values())
    return int(
        sum(
            r["token_end_max"]
            for r in removed.group_by("record_index", use_threads=False)
            .aggregate([("token_end", "max")])
            .to_pylist()
        )
    )


def _token_spans(removed: pa.Table) -> dict[int, list[tuple[int, int]]]:
    spans: dict[int, list[tuple[int, int]]] = {}
    for row in removed.select(["record_index", "token_start", "token_end"]).to_pylist():
        spans.setdefault(row["record_index"], []).append((row["token_start"], row["token_end"]))
    return spans


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in sorted(spans):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out
