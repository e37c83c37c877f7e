"""Refilling an existing index: the plan and copies ``tda prune apply``, ``tda add`` and
``tda takedown`` use to fill shards with an index's trained quantizer (never retrained).

1. :func:`copy_index_files`: the index-level files (:func:`index_level_files`: the trained
   quantizer, concept names, re-rank encoder) into the new ``index/``;
2. :func:`plan_from_index`: an :class:`~tda.attribution.stages.index.IndexPlan` carrying
   the index's factory, nprobe, re-rank and reduction, for the new shard grouping;
3. per shard, :meth:`IndexStage.fill` (refill from embeddings) or
   :func:`copy_shard` (unchanged), then :meth:`IndexStage.finish`.
"""

from __future__ import annotations

from tda.attribution.index.dense import refine_paths
from tda.attribution.io.fs import atomic_open, build_root
from tda.attribution.stages.index import IndexPlan, IndexStage, ShardMarker
from tda.schemas import EmbedManifest, IndexConfig, IndexManifest, Manifest

__all__ = ["copy_index_files", "copy_shard", "index_level_files", "plan_from_index"]


def plan_from_index(
    manifest: IndexManifest,
    config: IndexConfig,
    embed: EmbedManifest,
    chunks: Manifest,
    embed_manifest_sha256: str,
    shards: tuple[tuple[int, ...], ...],
    channels: tuple[str, ...] = (),
) -> IndexPlan:
    """A plan that fills ``shards`` (input file indices per shard) with the existing
    index's trained quantizer, re-rank codes and reduction (what ``tda prune apply``,
    ``tda add`` and ``tda takedown`` refill with), building ``channels`` (of the index's)
    beside refilled shards: copy its index-level files into ``config.root`` first
    (:func:`copy_index_files`), then :meth:`IndexStage.fill` /
    :func:`copy_shard` each shard and :meth:`IndexStage.finish`. ``embed`` /
    ``chunks`` / ``embed_manifest_sha256``: the new root's manifests."""
    counts = {e.file_index: e.chunks for e in embed.files}
    refine = manifest.refine or {}
    return IndexPlan(
        config=config,
        embed=embed,
        chunks=chunks,
        embed_manifest_sha256=embed_manifest_sha256,
        factory=manifest.factory,
        nprobe=manifest.nprobe,
        train_size=manifest.train_vectors,
        shards=shards,
        shard_counts=tuple(sum(counts[f] for f in s) for s in shards),
        channels=channels,
        refine=refine.get("codes", "none"),
        refine_factor=int(refine.get("factor", 0)),
        reduce=manifest.reduce,
    )


def index_level_files(manifest: IndexManifest) -> tuple[str, ...]:
    """The files of ``index/`` every shard depends on (relative paths): the trained
    quantizer, the concept names and, with stored re-rank codes, their encoder."""
    extra = (manifest.refine["file"],) if manifest.refine and "file" in manifest.refine else ()
    return ("trained.faiss", "concepts.json", *extra)


def copy_index_files(src_fs, src_index_dir: str, fs, index_dir: str, manifest) -> None:
    """Copy :func:`index_level_files` of an index into another ``index/`` folder."""
    fs.makedirs(f"{index_dir}/shards", exist_ok=True)
    for name in index_level_files(manifest):
        with (
            src_fs.open(f"{src_index_dir}/{name}", "rb") as src,
            atomic_open(fs, f"{index_dir}/{name}") as dst,
        ):
            dst.write(src.read())


def copy_shard(
    plan: IndexPlan, number: int, manifest: IndexManifest, src_fs, src_index_dir: str
) -> ShardMarker:
    """Copy shard ``number`` of the index ``manifest`` (in ``src_index_dir``) unchanged
    into this plan's root, with its re-rank files and its files of ``plan.channels``,
    and write its marker."""
    fs, root = build_root(plan.config.root)
    shard = manifest.shards[number]
    listed = {f.path: f for f in manifest.files}
    extra = [p for p in refine_paths(shard.path) if p in listed]
    roles = {c.name: dict(c.shards[number]) for c in manifest.channels if c.name in plan.channels}
    channel_files = [p for r in roles.values() for p in r.values()]
    for relative in (shard.path, *extra, *channel_files):
        fs.makedirs(f"{root.index_dir}/{relative}".rsplit("/", 1)[0], exist_ok=True)
        with (
            src_fs.open(f"{src_index_dir}/{relative}", "rb") as src,
            atomic_open(fs, f"{root.index_dir}/{relative}") as dst,
        ):
            dst.write(src.read())
    marker = ShardMarker(
        shard,
        listed[shard.path],
        roles,
        tuple(listed[p] for p in channel_files),
        tuple(listed[p] for p in extra),
    )
    IndexStage().write_marker(plan, number, marker)
    return marker
