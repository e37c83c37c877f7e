"""The index of a new generation, written through the index stage's own steps
(:class:`~tda.attribution.stages.index.IndexStage`: ``fill`` / ``write_marker`` /
``finish``), never by touching its files here: shards the change does not affect keep
their files and are re-committed with their old markers; new or affected shards are
filled from the root's trained quantizer with the new generation's embeddings; the
manifest is written last with the change's lineage.

Used by ``tda add`` (new shards for new files), ``tda takedown`` (shards holding a
taken-down chunk refilled) and, for the retrained index, ``tda index retrain``.
"""

from __future__ import annotations

from collections.abc import Sequence

from tda.schemas import EmbedManifest, IndexConfig, IndexManifest, Manifest

__all__ = ["group_new_files", "shard_files", "write_generation_index"]


def group_new_files(counts: Sequence[tuple[int, int]], target: int) -> list[tuple[int, ...]]:
    """(file index, vectors) of added files, in file order -> new shards of consecutive
    files holding at most ``target`` vectors each (a larger file is a shard alone)."""
    groups: list[list[int]] = []
    size = 0
    for index, n in counts:
        if not groups or (groups[-1] and size + n > target):
            groups.append([])
            size = 0
        groups[-1].append(index)
        size += n
    return [tuple(g) for g in groups]


def _companions(index: IndexManifest, shard: int) -> list:
    """The files the index lists beside shard ``shard``'s own file under the same stem
    (``shards/shard-00003.*``: e.g. its re-rank codes and ids), whatever the index
    format writes there."""
    path = index.shards[shard].path
    stem = path.rsplit(".", 1)[0] + "."
    return [f for f in index.files if f.path.startswith(stem) and f.path != path]


def shard_files(index: IndexManifest, shard: int) -> list[str]:
    """Shard ``shard``'s files relative to ROOT (its FAISS file, the files beside it and
    its channels' files): what a refill replaces, so what a change preserves first."""
    paths = [f"index/{index.shards[shard].path}"]
    paths += [f"index/{f.path}" for f in _companions(index, shard)]
    for channel in index.channels:
        paths += [f"index/{p}" for p in channel.shards[shard].values()]
    return paths


def write_generation_index(
    root: str,
    index: IndexManifest,
    embed: EmbedManifest,
    chunks: Manifest,
    embed_sha: str,
    shards: Sequence[tuple[int, ...]],
    refill: Sequence[int],
    lineage: dict,
    threads: int | None = None,
) -> IndexManifest:
    """The new generation's index in ROOT: shards ``shards`` (input files per shard; the
    first ``len(index.shards)`` are the parent's, in order), of which ``refill`` are
    filled from the trained quantizer with ``embed``'s vectors (and their span /
    lexical channels built, where the index has them) and the others kept as the parent
    ``index`` lists them; then ``index/manifest.json`` (last) with ``lineage``.
    ``embed`` / ``chunks`` / ``embed_sha``: the new generation's manifests."""
    from tda.attribution.stages.index import IndexStage, ShardMarker
    from tda.attribution.stages.index_reuse import plan_from_index

    stage = IndexStage()
    channels = tuple(c.name for c in index.channels)
    config = IndexConfig(
        root=root, factory=index.factory, shards=len(shards), nprobe=index.nprobe,
        metric=index.metric, threads=threads, channels=channels,
    )  # fmt: skip
    # the parent's factory, nprobe, re-rank codes and reduction, for the new grouping
    plan = plan_from_index(
        index, config, embed, chunks, embed_sha, tuple(tuple(s) for s in shards), channels
    )
    files = {f.path: f for f in index.files}
    refill = sorted(set(refill))
    for i, info in enumerate(index.shards):
        if i in refill:
            continue
        roles = {c.name: dict(c.shards[i]) for c in index.channels}
        marker = ShardMarker(
            info,
            files[info.path],
            roles,
            tuple(files[p] for r in roles.values() for p in r.values()),
            tuple(_companions(index, i)),
        )
        stage.write_marker(plan, i, marker)
    for _ in stage.fill(plan, refill, plan.fill_threads()):
        pass
    return stage.finish(plan, lineage=lineage)
