"""The build root's layout: every stage writes into one ROOT (local path or fsspec URL).

::

    ROOT/chunks/part-000042.parquet        chunk rows of input file 42 (CHUNK_SCHEMA)
    ROOT/chunks/_completions/000042.json   file 42 is done: its FileCounts (commit marker)
    ROOT/chunks/_run.json                  settings + inputs of the run (resume checks these)
    ROOT/chunks/manifest.json              written last: the stage's Manifest
    ROOT/deadletter/part-000042.parquet    unusable records of file 42 (DEADLETTER_SCHEMA)

    ROOT/embeddings/part-000042.parquet    chunk vectors of input file 42 (embedding_schema)
    ROOT/embeddings/_completions/000042.json
    ROOT/embeddings/_run.json
    ROOT/embeddings/concepts.json          the encoder's known-concept names (and harmful ones)
    ROOT/embeddings/manifest.json          written last: the EmbedManifest

Names starting with ``_`` or ``.`` are bookkeeping; readers of the tables skip them.
    ROOT/index/trained.faiss               the trained, empty index every shard starts from
    ROOT/index/shards/shard-00003.faiss    shard 3: vectors of a group of input files, by id
    ROOT/index/spans/shard-00003.tokens    span channel: shard 3's token ids (+ .table, the
                                           suffix table; .chunks.npy, chunk token ranges)
    ROOT/index/lexical/shard-00003.*.npy   lexical channel: shard 3's BM25 term postings
    ROOT/index/concepts.json               names of the encoder's known concepts
    ROOT/index/_completions/00003.json     shard 3 is done: its count, size, sha256
    ROOT/index/_run.json
    ROOT/index/manifest.json               written last: the IndexManifest (commit point)
"""

from __future__ import annotations

from dataclasses import dataclass

from .records import part_name

__all__ = ["CHANNEL_DIRS", "BuildRoot"]

# Each retrieval channel's folder under ROOT/index.
CHANNEL_DIRS = {"span": "spans", "lexical": "lexical"}


@dataclass(frozen=True)
class BuildRoot:
    """Paths inside a build root. ``root`` is a path or URL without a trailing slash."""

    root: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", self.root.rstrip("/") or "/")

    def _join(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    @property
    def chunks_dir(self) -> str:
        return self._join("chunks")

    @property
    def deadletter_dir(self) -> str:
        return self._join("deadletter")

    @property
    def completions_dir(self) -> str:
        return self._join("chunks", "_completions")

    @property
    def chunk_run_record(self) -> str:
        return self._join("chunks", "_run.json")

    @property
    def chunk_manifest(self) -> str:
        return self._join("chunks", "manifest.json")

    def chunk_part(self, file_index: int) -> str:
        return self._join("chunks", part_name(file_index))

    def deadletter_part(self, file_index: int) -> str:
        return self._join("deadletter", part_name(file_index))

    def completion(self, file_index: int) -> str:
        return self._join("chunks", "_completions", f"{file_index:06d}.json")

    @property
    def embeddings_dir(self) -> str:
        return self._join("embeddings")

    @property
    def embed_completions_dir(self) -> str:
        return self._join("embeddings", "_completions")

    @property
    def embed_run_record(self) -> str:
        return self._join("embeddings", "_run.json")

    @property
    def embed_concepts(self) -> str:
        return self._join("embeddings", "concepts.json")

    @property
    def embed_manifest(self) -> str:
        return self._join("embeddings", "manifest.json")

    def embed_part(self, file_index: int) -> str:
        return self._join("embeddings", part_name(file_index))

    def embed_completion(self, file_index: int) -> str:
        return self._join("embeddings", "_completions", f"{file_index:06d}.json")

    @property
    def index_dir(self) -> str:
        return self._join("index")

    @property
    def index_manifest(self) -> str:
        return self._join("index", "manifest.json")

    @property
    def index_run_record(self) -> str:
        return self._join("index", "_run.json")

    @property
    def index_completions_dir(self) -> str:
        return self._join("index", "_completions")

    @property
    def index_trained(self) -> str:
        return self._join("index", "trained.faiss")

    @property
    def index_concepts(self) -> str:
        return self._join("index", "concepts.json")

    def index_shard(self, shard: int) -> str:
        return self._join("index", "shards", f"shard-{shard:05d}.faiss")

    def index_channel_file(self, channel: str, name: str) -> str:
        """A span or lexical channel's file ``name`` (its shard's stem + role suffix)."""
        return self._join("index", CHANNEL_DIRS[channel], name)

    def index_completion(self, shard: int) -> str:
        return self._join("index", "_completions", f"{shard:05d}.json")
