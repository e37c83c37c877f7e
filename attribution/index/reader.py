"""Reading an index: open the manifest, check files, search shards in parallel, merge the
top-k exactly, and turn chunk ids back into provenance.

* :meth:`IndexReader.open`: read ``index/manifest.json`` (local, or remote through fsspec
  with a local cache keyed by sha256), refuse any file whose size differs from the
  manifest, memory-map the shards.
* :meth:`IndexReader.search`: every shard searched in its own thread (FAISS releases the
  GIL), results merged exactly by :func:`merge_topk`.
* :class:`ChunkLookup`: id -> chunk row by decoding the id to (input file, ordinal) and
  reading that row's Parquet row group, never by scanning. Each chunks / embeddings part
  is checked against its size and sha256 in its stage's manifest before it is read (the
  hash once per process, :mod:`tda.attribution.io.integrity`); the chunks manifest must
  be the one the index was built from.
* :func:`verify_index`: sha256 of every file against the manifest.

Its records (:class:`~tda.schemas.ChunkRecord`, :class:`~tda.schemas.SearchHit`) are
contracts in ``schemas``; this module re-exports them under their old names.
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np

from tda.attribution.index.channels import OpenedChannels, open_channels
from tda.attribution.index.dense import (
    DenseSearch,
    IndexReadError,
    _search_preassigned,
    merge_topk,
    open_dense,
)
from tda.attribution.io.fs import build_root, is_local, local_sha256, open_parquet, sha256_file
from tda.attribution.io.integrity import ListedFiles, fix_for, parquet_errors
from tda.attribution.io.parts import ROW_GROUP_ROWS, StageError, read_manifest
from tda.schemas import (
    ChunkRecord,
    EmbedManifest,
    EncoderInfo,
    IndexManifest,
    Manifest,
    ManifestError,
    MergedIndexManifest,
    SearchHit,
    float16_values,
    vectors_from_arrow,
)

__all__ = [
    "ChunkLookup",
    "IndexReadError",
    "IndexReader",
    "merge_topk",
    "read_index_manifest",
    "verify_index",
]


class PartRows:
    """Rows of one kind of per-input-file part (chunks or embeddings), found by chunk id,
    with the last row groups read and every part's chunk-id ranges cached.

    Full parts hold a chunk at row ``ordinal`` (one row-group read); parts written by
    ``tda prune apply`` lack the pruned rows, so there the row group is found from the
    chunk-id statistics and the row by binary search (ids ascend within a part). Never a
    scan.

    ``listed``: the manifest's records the parts are checked against before each open
    (size; sha256 once per process); a part that fails, or that pyarrow cannot read, is
    a :class:`~tda.attribution.io.integrity.CorruptFileError` naming it."""

    def __init__(self, fs, part_path, listed: ListedFiles | None = None) -> None:
        self._fs, self._path = fs, part_path  # part_path: file index -> part path
        self._listed = listed
        self.group = lru_cache(maxsize=64)(self._read_group)
        self._ranges = lru_cache(maxsize=256)(self._read_ranges)

    def _open(self, file_index: int):
        """(path, fix) of a part, checked against its manifest."""
        path = self._path(file_index)
        if self._listed is None:
            return path, "restore it from a backup"
        return path, self._listed.check(path)

    def _read_group(self, file_index: int, group: int):
        path, fix = self._open(file_index)
        with parquet_errors(path, fix), open_parquet(self._fs, path) as parquet:
            if group >= parquet.num_row_groups:
                return None
            # kept as Arrow: converting a whole 8,192-row group to Python cost ~50 ms a hit
            return parquet.read_row_group(group)

    def _read_ranges(self, file_index: int) -> list[tuple[int, int] | None]:
        """Per row group, its (min, max) chunk id from the Parquet statistics."""
        path, fix = self._open(file_index)
        with parquet_errors(path, fix), open_parquet(self._fs, path) as parquet:
            column = parquet.schema_arrow.get_field_index("chunk_id")
            ranges = []
            for g in range(parquet.num_row_groups):
                stats = parquet.metadata.row_group(g).column(column).statistics
                ok = stats is not None and stats.has_min_max
                ranges.append((int(stats.min), int(stats.max)) if ok else None)
            return ranges

    def find(self, file_index: int, ordinal: int, chunk_id: int):
        """(row group table, row) holding ``chunk_id``, or None."""
        group = self.group(file_index, ordinal // ROW_GROUP_ROWS)
        row = ordinal % ROW_GROUP_ROWS
        if (
            group is not None
            and row < group.num_rows
            and group["chunk_id"][row].as_py() == chunk_id
        ):
            return group, row
        for g, span in enumerate(self._ranges(file_index)):
            if span is None or not span[0] <= chunk_id <= span[1]:
                continue
            table = self.group(file_index, g)
            ids = table["chunk_id"].to_numpy()
            row = int(np.searchsorted(ids, chunk_id))
            if row < len(ids) and ids[row] == chunk_id:
                return table, row
        return None


class ChunkLookup:
    """chunk id -> :class:`ChunkRecord`, by decoding the id (no scan). ``chunks`` /
    ``embeddings``: the records their parts are checked against (None: unchecked)."""

    def __init__(
        self,
        root: str,
        manifest: IndexManifest,
        chunks: ListedFiles | None = None,
        embeddings: ListedFiles | None = None,
    ) -> None:
        fs, broot = build_root(root)
        self._codec = manifest.id_codec
        self._urls = {f.index: f.url for f in manifest.inputs}
        self.chunks = PartRows(fs, broot.chunk_part, chunks)
        self.embeddings = PartRows(fs, broot.embed_part, embeddings)

    def has_file(self, file_index: int) -> bool:
        return file_index in self._urls

    def get(self, chunk_id: int) -> ChunkRecord:
        loc = self._codec.decode(int(chunk_id))
        if loc.file_index not in self._urls:
            raise IndexReadError(
                f"chunk id {chunk_id} points at input file {loc.file_index}, not in this index"
            )
        found = self.chunks.find(loc.file_index, loc.ordinal, chunk_id)
        if found is None:
            raise IndexReadError(f"chunk id {chunk_id} is not in this index")
        table, offset = found
        row = table.slice(offset, 1).to_pylist()[0]
        return ChunkRecord(
            chunk_id=row["chunk_id"],
            source=row["source"],
            doc_id=row["doc_id"],
            record_index=row["record_index"],
            chunk_index=row["chunk_index"],
            char_start=row["char_start"],
            char_end=row["char_end"],
            text=row["text"],
            url=self._urls[loc.file_index],
        )


def _read_manifest(fs, root) -> tuple[IndexManifest, str]:
    return read_manifest(
        fs, root.index_manifest, IndexManifest.from_json, "tda index build", IndexReadError
    )


def verify_index(root_url: str) -> list[str]:
    """Every problem with the index files: missing, wrong size, wrong sha256 ([] = sound)."""
    fs, root = build_root(root_url)
    manifest, _ = _read_manifest(fs, root)
    problems = []
    for entry in manifest.files:
        path = f"{root.index_dir}/{entry.path}"
        if not fs.exists(path):
            problems.append(f"{entry.path}: missing")
            continue
        digest, size = sha256_file(fs, path)
        if size != entry.size:
            problems.append(f"{entry.path}: {size} bytes, the manifest says {entry.size}")
        elif digest != entry.sha256:
            problems.append(f"{entry.path}: sha256 differs from the manifest (corrupt)")
    return problems


class IndexReader:
    """An opened index: the manifest, its shards (memory-mapped) and a chunk lookup."""

    def __init__(
        self, root: str, manifest: IndexManifest, manifest_id: str, shards: list,
        channels: OpenedChannels | None = None, parts: tuple | None = None,
    ) -> None:  # fmt: skip
        """``parts``: (chunks, embeddings) :class:`ListedFiles` the lookups check parts
        against (:meth:`open` reads them from the stages' manifests)."""
        self.root = root
        self.manifest = manifest
        self.manifest_id = manifest_id  # sha256 of manifest.json: names this exact index
        self._shards = shards
        # the span / lexical channels beside the dense shards (none for an older index)
        self.channels = channels or OpenedChannels(None, None)
        self._pool = ThreadPoolExecutor(max_workers=max(1, min(len(shards), os.cpu_count() or 1)))
        self.lookup = ChunkLookup(root, manifest, *(parts or (None, None)))
        # the shared-quantizer search with its re-rank (:mod:`.dense`); None: older layout
        self._dense: DenseSearch | None = None

    @property
    def quantizer_shard(self):
        """The first searchable shard, whose coarse quantizer every IVF shard shares (what
        drift measurement reads); None when the index has no shard."""
        return self._shards[0] if self._shards else None

    @classmethod
    def open(
        cls,
        root_url: str,
        encoder: EncoderInfo | None = None,
        cache_dir: str | None = None,
        verify: bool = True,
        merged: bool = False,
    ) -> IndexReader:
        """Open ROOT's index; with ``encoder``, refuse an index built by another model.

        Every shard's size is checked against the manifest; with ``verify`` (default) its
        sha256 too, so a corrupt byte is refused before any search (about 1 s per GB;
        remote shards are verified once, when copied into the cache). With ``merged``, the
        on-disk merged variant (``tda index merge``) is searched instead of the shards."""

        fs, root = build_root(root_url)
        manifest, manifest_id = _read_manifest(fs, root)
        if encoder is not None and encoder.fingerprint != manifest.encoder.fingerprint:
            raise IndexReadError(
                f"the index in {root_url} was built with encoder {manifest.encoder.spec} "
                f"({manifest.encoder.fingerprint[:19]}), not {encoder.spec} "
                f"({encoder.fingerprint[:19]}): its vectors are not comparable"
            )
        parts = _listed_parts(fs, root, manifest, root_url)
        try:
            channels = open_channels(fs, root, manifest, verify, cache_dir)
        except StageError as exc:
            raise IndexReadError(str(exc)) from None
        sizes = {f.path: f for f in manifest.files}

        def local(relative: str) -> str:
            return _checked_file(fs, root, sizes[relative], verify, cache_dir, root_url)

        if merged:
            index = _open_merged(root_url, manifest_id, verify)
            _set_nprobe(index, manifest.nprobe)
            shards = [index]
        else:
            shards = [_read_shard(local(s.path), s, root, manifest.nprobe) for s in manifest.shards]
        reader = cls(root_url, manifest, manifest_id, shards, channels, parts)
        if manifest.quantizer is not None or (merged and manifest.refine is not None):
            reader._dense = open_dense(manifest, local, shards, merged, reader.vector, reader._pool)
        return reader

    def search(self, queries: np.ndarray, k: int = 10, nprobe: int | None = None):
        """queries (q, D) float32 -> (scores (q, k), ids (q, k)), best first, over all shards."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.manifest.dim:
            raise IndexReadError(f"queries must be (q, {self.manifest.dim}), got {queries.shape}")
        if self._dense is not None:
            return self._dense.search(queries, k, nprobe or self.manifest.nprobe)
        results = self._search_shards(queries, k, nprobe or self.manifest.nprobe)
        scores = np.stack([r[0] for r in results])
        ids = np.stack([r[1] for r in results])
        return merge_topk(scores, ids, k, self.manifest.metric)

    def _search_shards(self, queries: np.ndarray, k: int, nprobe: int) -> list:
        """Per shard (D, I). ``nprobe`` travels with the call as FAISS search parameters:
        the shard objects are shared by every thread of ``tda serve`` and are never
        mutated by a search. IVF shards share one trained quantizer, so the coarse
        assignment (the nprobe nearest centroids) is computed once for all of them and
        each shard scans only its lists (``search_preassigned``); anything else (flat,
        OPQ pre-transforms) is searched whole."""
        import faiss

        shards = self._shards
        if isinstance(shards[0], faiss.IndexIVF):
            # FAISS probes at most nlist lists and reads a preassigned coarse table with
            # that row width: a wider one (nprobe > nlist) was read misaligned, wrong hits
            nprobe = min(nprobe, shards[0].nlist)
        params = _search_params(shards[0], nprobe)
        if len(shards) == 1:  # no thread hand-off (~3 ms) for one shard
            return [shards[0].search(queries, k, params=params)]
        if not all(isinstance(i, faiss.IndexIVF) for i in shards):
            return list(
                self._pool.map(lambda index: index.search(queries, k, params=params), shards)
            )
        coarse_d, coarse_i = shards[0].quantizer.search(queries, nprobe)
        return list(
            self._pool.map(
                lambda ivf: _search_preassigned(ivf, queries, k, coarse_i, coarse_d, params),
                shards,
            )
        )

    def hits(
        self, queries: np.ndarray, k: int = 10, nprobe: int | None = None
    ) -> list[list[SearchHit]]:
        """Like :meth:`search`, with each id resolved to its chunk's provenance and text."""
        scores, ids = self.search(queries, k, nprobe)
        return [
            [
                SearchHit(float(s), self.lookup.get(int(i)))
                for s, i in zip(srow, irow, strict=True)
                if i >= 0
            ]
            for srow, irow in zip(scores, ids, strict=True)
        ]

    def _embedding_row(self, chunk_id: int) -> tuple[dict, int]:
        """chunk id -> (its embeddings row group as columns, row in it); decoded, no scan."""
        loc = self.manifest.id_codec.decode(int(chunk_id))
        if not self.lookup.has_file(loc.file_index):
            raise IndexReadError(f"chunk id {chunk_id} has no embedding in {self.root}")
        found = self.lookup.embeddings.find(loc.file_index, loc.ordinal, chunk_id)
        if found is None:
            raise IndexReadError(f"chunk id {chunk_id} has no embedding in {self.root}")
        return found

    def vector(self, chunk_id: int) -> np.ndarray:
        """The stored (float16) vector of one chunk, (D,) float32, read from its embeddings
        row (decoded from the id, like the chunk lookup)."""
        group, row = self._embedding_row(chunk_id)
        vectors = vectors_from_arrow(group["vector"].slice(row, 1), self.manifest.dim)
        return vectors[0].astype(np.float32)

    def concepts(self, chunk_id: int) -> tuple[np.ndarray, np.ndarray]:
        """One chunk's stored top-k known concepts: (ids (k,) int64, weights (k,) float32),
        strongest first."""
        group, row = self._embedding_row(chunk_id)
        ids = group["concept_ids"].slice(row, 1).combine_chunks().flatten()
        weights = group["concept_weights"].slice(row, 1).combine_chunks().flatten()
        ids = ids.to_numpy(zero_copy_only=False).astype(np.int64)
        return ids, float16_values(weights).astype(np.float32)


def _listed_parts(
    fs, root, manifest: IndexManifest, root_url: str
) -> tuple[ListedFiles, ListedFiles]:
    """The chunks and embeddings parts' records, from the manifests the index was built
    from (compared by sha256 before they are parsed): a missing or other chunks manifest
    is refused here (the chunk texts could not be checked), and so are embeddings rebuilt
    after the index (ids would point at chunks that may no longer exist). A ROOT shipped
    without embeddings/ opens; reading a vector from it then says why not."""
    pruned = manifest.lineage is not None
    fix = fix_for("chunks/manifest.json", root_url, pruned)
    if not fs.exists(root.chunk_manifest):
        raise IndexReadError(
            f"{root.chunk_manifest} is missing, so the chunk texts cannot be checked "
            f"against their sha256; {fix}"
        )
    if sha256_file(fs, root.chunk_manifest)[0] != manifest.chunk_manifest_sha256:
        raise IndexReadError(
            f"{root.chunk_manifest} is not the chunks manifest the index was built from "
            f"(its sha256 differs: altered, or the chunks were rebuilt); {fix}, then "
            f"`tda embed` and `tda index build` again with --overwrite"
        )
    chunks, _ = read_manifest(
        fs, root.chunk_manifest, Manifest.from_json, "tda chunk", IndexReadError
    )
    listed_chunks = ListedFiles(
        fs, root, root_url, root.chunk_manifest, chunks.stored_files(), pruned=pruned
    )
    if not fs.exists(root.embed_manifest):
        why = (
            f"{root.embed_manifest} is missing, so the stored vectors cannot be read or "
            f"checked; {fix_for('embeddings/manifest.json', root_url, pruned)}"
        )
        return listed_chunks, ListedFiles(fs, root, root_url, root.embed_manifest, None, why)
    if sha256_file(fs, root.embed_manifest)[0] != manifest.embed_manifest_sha256:
        raise IndexReadError(
            f"the index in {root_url} was built from other embeddings than {root.embeddings_dir} "
            f"now holds ({root.embed_manifest} differs from the one it records: re-embedded "
            f"after the index, or altered); rebuild it with `tda index build {root_url} "
            f"--overwrite`, or restore the manifest from a backup"
        )
    embed, _ = read_manifest(
        fs, root.embed_manifest, EmbedManifest.from_json, "tda embed", IndexReadError
    )
    listed_embed = ListedFiles(
        fs, root, root_url, root.embed_manifest, embed.stored_files(), pruned=pruned
    )
    return listed_chunks, listed_embed


def _set_nprobe(index, nprobe: int) -> None:
    import faiss

    with contextlib.suppress(RuntimeError):  # not an IVF index: nothing to probe
        faiss.extract_index_ivf(index).nprobe = nprobe


def _search_params(index, nprobe: int):
    """Per-call FAISS search parameters for ``index``: ``nprobe`` for an IVF index (None for
    one with nothing to probe, e.g. flat)."""
    import faiss

    try:
        faiss.extract_index_ivf(index)
    except RuntimeError:
        return None
    return faiss.SearchParametersIVF(nprobe=int(nprobe))


def _checked_file(fs, root, entry, verify: bool, cache_dir: str | None, root_url: str) -> str:
    """A local path of the index file ``entry`` (relative to ROOT/index), refused with one
    line when missing or of another size than the manifest's, or (``verify``) another
    sha256; remote files are copied into the cache (and checked) once."""
    remote = f"{root.index_dir}/{entry.path}"
    if not fs.exists(remote):
        raise IndexReadError(f"{remote} is missing; the index is incomplete (tda index verify)")
    if fs.size(remote) != entry.size:
        raise IndexReadError(
            f"{remote} is {fs.size(remote)} bytes, the manifest says {entry.size}; "
            f"refusing a file that does not match (tda index verify)"
        )
    if not is_local(fs):
        return _cached(fs, remote, entry, cache_dir)  # checked when copied into the cache
    if verify and local_sha256(remote) != entry.sha256:
        raise IndexReadError(
            f"{remote} does not match its sha256 in the manifest (corrupt); "
            f"refusing to search it (tda index verify {root_url})"
        )
    return remote


def _read_shard(path: str, shard, root, nprobe: int):
    """A shard file, memory-mapped, checked against its vector count."""
    import faiss

    remote = f"{root.index_dir}/{shard.path}"
    try:
        index = faiss.read_index(path, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError as exc:
        raise IndexReadError(f"{remote} cannot be read as a FAISS index ({exc})") from None
    if index.ntotal != shard.vectors:
        raise IndexReadError(
            f"{remote} holds {index.ntotal} vectors, the manifest says {shard.vectors}"
        )
    _set_nprobe(index, nprobe)
    return index


def _cached(fs, remote: str, entry, cache_dir: str | None) -> str:
    """A local copy of a remote index file, named by its sha256 (fetched once)."""
    cache = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "tda", "index")
    os.makedirs(cache, exist_ok=True)
    path = os.path.join(cache, f"{entry.sha256}.faiss")
    if not os.path.exists(path):
        tmp = f"{path}.tmp-{os.getpid()}"
        fs.get(remote, tmp)
        if local_sha256(tmp) != entry.sha256:
            os.remove(tmp)
            raise IndexReadError(f"{remote} does not match its sha256 in the manifest (corrupt)")
        os.replace(tmp, path)
    return path


def read_index_manifest(root_url: str) -> IndexManifest:
    """ROOT -> its index manifest (one-line error when there is none)."""
    fs, root = build_root(root_url)
    return _read_manifest(fs, root)[0]


# --------------------------------------------------------------------------------------
# The merged on-disk variant

MERGED_DIR = "merged"


def _open_merged(root_url: str, manifest_id: str, verify: bool):
    """The merged variant as one index, after checking it belongs to this manifest."""
    import faiss

    fs, root = build_root(root_url)
    folder = f"{root.index_dir}/{MERGED_DIR}"
    path = f"{folder}/manifest.json"
    if not is_local(fs) or not os.path.exists(path):
        raise IndexReadError(f"{folder} has no merged index: run `tda index merge {root_url}`")
    with open(path) as f:
        text = f.read()
    try:
        record = MergedIndexManifest.from_json(text)
    except ManifestError as exc:
        raise IndexReadError(f"{path}: {exc}") from None
    if record.parent_manifest_id != manifest_id:
        raise IndexReadError(f"{folder} was merged from another build of this index; merge again")
    for entry in record.files:
        file = f"{folder}/{entry.path}"
        if not os.path.exists(file) or os.path.getsize(file) != entry.size:
            raise IndexReadError(f"{file} is missing or has the wrong size; merge again")
        if verify and local_sha256(file) != entry.sha256:
            raise IndexReadError(f"{file} does not match its sha256 (corrupt); merge again")
    flags = faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY
    if len(record.files) == 1:  # flat: no ivfdata, memory-map the codes
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY
    return faiss.read_index(f"{folder}/merged.faiss", flags)
