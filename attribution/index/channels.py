"""The span and lexical channels of an index: built per shard beside its FAISS file, opened
together for search.

Build (:func:`build_shard_channels`, on the worker that fills the shard): the shard's
chunk rows are read back from ``ROOT/chunks`` (the same input files as its vectors);

* span: each document's chunks are joined back into runs of consecutive text
  (:func:`segments`), re-tokenized with the root's tokenizer (the chunk stage's own ids,
  checked by count) and written as one token stream with a suffix table
  (:mod:`~tda.attribution.index.spans`), so a verbatim span that crosses a chunk boundary
  is still one match, credited to both chunks;
* lexical: every chunk's words as BM25 term postings (:mod:`~tda.attribution.index.lexical`).

Files are written in a local scratch folder, then copied to ``ROOT/index/<channel>/``
atomically and hashed in the same pass; their sha256 and size go into the shard's
completion marker and from there into the manifest, so ``tda index verify`` and the
reader's checks cover them like the dense shards.

Open (:func:`open_channels`): every shard's files (size checked, sha256 with ``verify``;
remote ones copied into the local cache, keyed by sha256) as one
:class:`~.spans.SpanIndex` / :class:`~.lexical.LexicalIndex`.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from tda.attribution.corpus.tokenizer import TextTokenizer, load_tokenizer
from tda.attribution.io.fs import is_local, local_sha256, open_parquet, write_hashed
from tda.attribution.io.parts import StageError
from tda.schemas import IndexFile, IndexManifest, TokenizerInfo
from tda.schemas.layout import CHANNEL_DIRS

from .lexical import TERM_RULE, LexicalIndex, LexicalShard, build_lexical_shard
from .spans import Segment, SpanIndex, SpanShard, build_span_shard

__all__ = [
    "ChannelError",
    "OpenedChannels",
    "build_shard_channels",
    "channel_settings",
    "channel_tokenizer",
    "open_channels",
    "segments",
]

_COLUMNS = [
    "chunk_id", "record_index", "chunk_index", "token_start", "token_end", "char_start",
    "char_end", "text",
]  # fmt: skip
_COPY_BLOCK = 1 << 22
# BM25's term-frequency saturation and length normalisation (Lucene's and bm25s's defaults
# are 1.2 / 0.75; recorded in the manifest, read back by queries).
BM25_K1 = 1.2
BM25_B = 0.75


class ChannelError(StageError):
    """A channel that cannot be built or opened as asked (one line naming the fix)."""


@functools.lru_cache(maxsize=4)  # once per worker process, not once per shard
def channel_tokenizer(info: TokenizerInfo) -> TextTokenizer:
    """The root's tokenizer (as the chunks manifest names it), refused when the loaded one
    is not the one that cut the chunks: the span channel's ids must be the chunk stage's."""
    tokenizer = load_tokenizer(info.spec)
    if tokenizer.info.fingerprint != info.fingerprint:
        raise ChannelError(
            f"tokenizer {info.spec} is not the one the chunks were cut with "
            f"({tokenizer.info.fingerprint[:19]} vs {info.fingerprint[:19]}); the span "
            f"channel needs the chunk stage's token ids (or --channels dense,lexical)"
        )
    return tokenizer


def channel_settings(channel: str, tokenizer: TokenizerInfo) -> dict:
    """What the manifest records of how ``channel`` was built (queries read it back)."""
    if channel == "span":
        # ids at or above vocab_size never come from the tokenizer: the separator
        return {
            "vocab_size": tokenizer.vocab_size,
            "separator": tokenizer.vocab_size,
            "tokenizer": tokenizer.fingerprint,
        }
    return {"terms": TERM_RULE, "k1": BM25_K1, "b": BM25_B}


def _shard_rows(fs, root, files: Sequence[int]) -> Iterator[dict[str, np.ndarray | list]]:
    """The shard's chunk rows, one input file at a time, as columns."""
    for file_index in files:
        path = root.chunk_part(file_index)
        if not fs.exists(path):
            raise ChannelError(f"{path} is missing; the chunks of input file {file_index} are gone")
        with open_parquet(fs, path) as parquet:
            table = parquet.read(columns=_COLUMNS)
        if table.num_rows and table["text"].null_count:
            raise ChannelError(
                f"{path} has chunks without text (built with --no-store-text); the span and "
                f"lexical channels need it: pass --channels dense or rebuild the chunks"
            )
        columns: dict[str, np.ndarray | list] = {
            name: table[name].to_numpy() for name in _COLUMNS if name != "text"
        }
        columns["text"] = table["text"].to_pylist()
        yield columns


@dataclass
class _Run:
    """Consecutive chunks of one document whose texts join without a gap."""

    text: list[str]
    chunk_ids: list[int]
    token_starts: list[int]
    token_ends: list[int]
    char_end: int
    chunk_texts: list[str] = field(default_factory=list)  # each chunk's own text


def _runs(rows: dict) -> Iterator[_Run]:
    """One file's chunk rows (ordinal order) -> runs of text: a document's chunks joined
    where each starts at or before the characters the run already covers (tiling or
    overlapping windows); a gap (chunks pruned from the middle) starts a new run."""
    run: _Run | None = None
    record = None
    for i in range(len(rows["chunk_id"])):
        rec, cs, ce = (
            int(rows["record_index"][i]),
            int(rows["char_start"][i]),
            int(rows["char_end"][i]),
        )
        text = rows["text"][i]
        same = run is not None and rec == record and cs <= run.char_end
        if not same:
            if run is not None:
                yield run
            run = _Run([text], [], [], [], ce)
            record = rec
        else:
            run.text.append(text[run.char_end - cs :])
            run.char_end = max(run.char_end, ce)
        run.chunk_texts.append(text)
        run.chunk_ids.append(int(rows["chunk_id"][i]))
        run.token_starts.append(int(rows["token_start"][i]))
        run.token_ends.append(int(rows["token_end"][i]))
    if run is not None:
        yield run


def segments(rows: dict, tokenizer: TextTokenizer, batch: int = 256) -> Iterator[Segment]:
    """One file's chunk rows -> span-channel segments (token ids + the chunks in them).

    A run re-tokenized as one text gives the chunk stage's ids when its token count is the
    chunk ranges' (the usual case: the same text, the same tokenizer); otherwise (text the
    tokenizer does not round-trip) each of its chunks becomes a segment of its own text,
    so ids and chunk boundaries still agree, at the cost of spans across those chunks."""
    runs = list(_runs(rows))
    for lo in range(0, len(runs), batch):
        part = runs[lo : lo + batch]
        encoded = tokenizer.encode_batch(["".join(r.text) for r in part])
        for run, enc in zip(part, encoded, strict=True):
            first = run.token_starts[0]
            starts = np.asarray(run.token_starts, dtype=np.int64) - first
            ends = np.asarray(run.token_ends, dtype=np.int64) - first
            if enc.n_tokens == int(ends.max()):
                yield Segment(enc.ids, np.asarray(run.chunk_ids, np.int64), starts, ends)
                continue
            for chunk_id, alone in zip(
                run.chunk_ids, tokenizer.encode_batch(run.chunk_texts), strict=True
            ):
                n = alone.n_tokens
                yield Segment(
                    alone.ids,
                    np.array([chunk_id], np.int64),
                    np.array([0], np.int64),
                    np.array([n], np.int64),
                )


def build_shard_channels(
    fs, root, shard: int, files: Sequence[int], channels: Sequence[str],
    tokenizer: TextTokenizer | None,
) -> tuple[dict[str, dict[str, str]], list[IndexFile], dict[str, int]]:  # fmt: skip
    """Build ``channels`` ("span", "lexical") of shard ``shard`` (chunks of input
    ``files``) -> (per channel, role -> path relative to ROOT/index; every file written
    with its sha256 and size; counts: ``span_tokens``, ``lexical_chunks``)."""
    stem = f"shard-{shard:05d}"
    written: dict[str, dict[str, str]] = {}
    entries: list[IndexFile] = []
    counts = {"span_tokens": 0, "lexical_chunks": 0}
    with tempfile.TemporaryDirectory(prefix="tda-channels-") as scratch:
        local: dict[str, dict[str, str]] = {}
        # one read of the shard's chunk parts feeds both channels: the span build streams
        # each file's segments while the lexical channel keeps its ids and texts
        ids: list[np.ndarray] = []
        texts: list[str] = []

        def read() -> Iterator[dict]:
            for rows in _shard_rows(fs, root, files):
                ids.append(np.asarray(rows["chunk_id"], dtype=np.int64))
                texts.extend(rows["text"])
                yield rows

        if "span" in channels:
            assert tokenizer is not None

            def counted() -> Iterator[Segment]:
                for rows in read():
                    for seg in segments(rows, tokenizer):
                        counts["span_tokens"] += len(seg.ids)
                        yield seg

            local["span"] = build_span_shard(counted(), tokenizer.info.vocab_size, scratch, stem)
        else:
            for _ in read():
                pass
        if "lexical" in channels:
            chunk_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
            counts["lexical_chunks"] = len(chunk_ids)
            local["lexical"] = build_lexical_shard(chunk_ids, texts, scratch, stem)
        for channel, roles in local.items():
            written[channel] = {}
            for role, path in sorted(roles.items()):
                name = os.path.basename(path)
                target = root.index_channel_file(channel, name)
                digest, size = write_hashed(fs, target, _copier(path))
                relative = f"{CHANNEL_DIRS[channel]}/{name}"
                written[channel][role] = relative
                entries.append(IndexFile(relative, digest, size))
    return written, entries, counts


def _copier(path: str):
    def produce(write) -> None:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(_COPY_BLOCK), b""):
                write(block)

    return produce


@dataclass(frozen=True)
class OpenedChannels:
    """An index's span and lexical channels, opened (None: the index has not that one)."""

    span: SpanIndex | None
    lexical: LexicalIndex | None

    @property
    def names(self) -> tuple[str, ...]:
        found = (("span", self.span), ("lexical", self.lexical))
        return ("dense", *(name for name, channel in found if channel is not None))


def open_channels(
    fs, root, manifest: IndexManifest, verify: bool, cache_dir: str | None = None
) -> OpenedChannels:
    """Every channel of ``manifest``, its files checked (size always; sha256 with
    ``verify``, or when a remote file is copied into the cache) and memory-mapped."""
    entries = {f.path: f for f in manifest.files}
    opened: dict[str, object] = {}
    for channel in manifest.channels:
        shards = []
        for roles in channel.shards:
            paths = {
                role: _local_file(fs, root, entries, relative, verify, cache_dir)
                for role, relative in roles.items()
            }
            if channel.name == "span":
                vocab = int(channel.settings["vocab_size"])
                shards.append(
                    SpanShard.open(paths["tokens"], paths["table"], paths["chunks"], vocab)
                )
            elif channel.name == "lexical":
                shards.append(LexicalShard.open(paths))
            else:
                raise ChannelError(
                    f"the index has a channel {channel.name!r} this tda does not know; "
                    f"upgrade tda or rebuild the index"
                )
        if channel.name == "span":
            opened["span"] = SpanIndex(shards)
        else:
            opened["lexical"] = LexicalIndex(shards, **_bm25(channel.settings))
    return OpenedChannels(opened.get("span"), opened.get("lexical"))  # type: ignore[arg-type]


def _bm25(settings: dict) -> dict[str, float]:
    return {k: float(settings[k]) for k in ("k1", "b") if k in settings}


def _local_file(fs, root, entries, relative: str, verify: bool, cache_dir: str | None) -> str:
    """A channel file as a local path, checked against its manifest entry."""
    entry = entries.get(relative)
    remote = f"{root.index_dir}/{relative}"
    if entry is None:
        raise ChannelError(f"{remote} is not listed in the index manifest's files")
    if not fs.exists(remote):
        raise ChannelError(f"{remote} is missing; the index is incomplete (tda index verify)")
    if fs.size(remote) != entry.size:
        raise ChannelError(
            f"{remote} is {fs.size(remote)} bytes, the manifest says {entry.size}; refusing "
            f"a channel file that does not match (tda index verify)"
        )
    if is_local(fs):
        if verify and local_sha256(remote) != entry.sha256:
            raise ChannelError(
                f"{remote} does not match its sha256 in the manifest (corrupt); refusing to "
                f"search it (tda index verify)"
            )
        return remote
    cache = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "tda", "index")
    os.makedirs(cache, exist_ok=True)
    # the suffix keeps the role's extension (np.load wants .npy)
    path = os.path.join(cache, f"{entry.sha256}-{os.path.basename(relative)}")
    if not os.path.exists(path):
        tmp = f"{path}.tmp-{os.getpid()}"
        with fs.open(remote, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, _COPY_BLOCK)
        if local_sha256(tmp) != entry.sha256:
            os.remove(tmp)
            raise ChannelError(f"{remote} does not match its sha256 in the manifest (corrupt)")
        os.replace(tmp, path)
    return path
