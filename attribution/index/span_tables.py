"""Building the exact-span channel's files (one suffix table per index shard), and the
adapter to ``tokengrams`` that both building and searching use.

:func:`build_span_shard` writes a shard's ``{stem}.tokens`` / ``.table`` / ``.chunks.npy``
(the layout: :mod:`~tda.attribution.index.spans`) from :class:`Segment` runs of token
ids; :func:`tokengrams_module` loads the library without its package ``__init__``;
:func:`redirected` silences what the library prints on the process's own stdout/stderr.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from tda.attribution.io.parts import StageError

__all__ = [
    "TABLE_BYTES",
    "Segment",
    "SpanError",
    "build_span_shard",
    "check_vocab",
    "first_line",
    "library_failure",
    "redirected",
    "token_width",
    "tokengrams_module",
]

TABLE_BYTES = 8  # tokengrams writes one u64 suffix position per token
_COPY_BLOCK = 1 << 20  # tokens written per slice, so a huge segment is never copied whole


class SpanError(StageError):
    """A span file that is missing or malformed, or a span input that cannot be indexed
    (one line naming the fix)."""


# --------------------------------------------------------------------------------------
# tokengrams


_TOKENGRAMS: Any = None
_TOKENGRAMS_LOCK = threading.Lock()


def tokengrams_module() -> Any:
    """The tokengrams extension module (it holds ``MemmapIndex``), loaded once per process.

    Importing the ``tokengrams`` package runs its ``__init__``, which imports ``datasets``
    and ``transformers`` for a tokenization helper we never use: ~1.9 s on every worker
    and query server. The compiled module itself loads in ~3 ms, so it
    is loaded from its file without running the package ``__init__``, under its real name
    ``tokengrams.tokengrams`` and registered in ``sys.modules`` (a pyo3 module may be
    initialised only once per process: a later ``import tokengrams`` elsewhere reuses it).
    If that fails (another layout of the package), the ordinary import is the fallback."""
    global _TOKENGRAMS
    if _TOKENGRAMS is not None:
        return _TOKENGRAMS
    with _TOKENGRAMS_LOCK:
        if _TOKENGRAMS is None:
            _TOKENGRAMS = _loadtokengrams_module()
    return _TOKENGRAMS


def _loadtokengrams_module() -> Any:
    name = "tokengrams.tokengrams"
    loaded = sys.modules.get(name)
    if loaded is not None and hasattr(loaded, "MemmapIndex"):
        return loaded
    try:
        package = importlib.util.find_spec("tokengrams")
        locations = list(package.submodule_search_locations or []) if package else []
        files = sorted(
            f for d in locations for f in glob.glob(os.path.join(d, "tokengrams.cpython-*.so"))
        )
        spec = importlib.util.spec_from_file_location(name, files[0])
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        if not hasattr(module, "MemmapIndex"):  # fail here, not at the first build
            raise ImportError(f"{files[0]} has no MemmapIndex")
        sys.modules[name] = module
        return module
    except Exception:
        pass
    try:
        import tokengrams

        return tokengrams
    except ImportError as e:
        raise SpanError(
            f"the span channel needs the tokengrams package ({e}): pip install tokengrams"
        ) from None


def token_width(vocab_size: int) -> np.dtype:
    """The token dtype of a shard over ids in [0, vocab_size) plus the separator
    ``vocab_size``: tokengrams reads u16 when its ``vocab`` (ours + 1) is <= 2**16."""
    return np.dtype("<u2") if vocab_size + 1 <= 1 << 16 else np.dtype("<u4")


def check_vocab(vocab_size: int) -> int:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int | np.integer):
        raise SpanError(f"vocab_size must be an int, got {vocab_size!r}")
    vocab_size = int(vocab_size)
    if not 1 <= vocab_size <= (1 << 32) - 1:
        # the separator, vocab_size itself, must fit in u32
        raise SpanError(f"vocab_size {vocab_size} is outside [1, 2**32 - 1] (u32 token ids)")
    return vocab_size


# --------------------------------------------------------------------------------------
# Build


@dataclass(frozen=True)
class Segment:
    """A run of consecutive tokens of one document (a whole document, or a piece of one
    whose middle chunks were pruned): its token ids and the chunks it holds."""

    ids: np.ndarray  # (n,) int64 token ids, each in [0, vocab_size)
    chunk_ids: np.ndarray  # (m,) int64
    starts: np.ndarray  # (m,) int64 token offsets of each chunk within `ids`
    ends: np.ndarray  # (m,) int64 (chunks may overlap when stride < size; ascending starts)


def build_span_shard(
    segments: Iterable[Segment], vocab_size: int, directory: str, stem: str
) -> dict[str, str]:
    """Write one shard's span files into the local folder ``directory`` (created if
    missing) -> {"tokens": path, "table": path, "chunks": path}.

    ``segments``: consumed once, in order (their order fixes the bytes: the same segments
    give the same files). ``vocab_size``: token ids are in [0, vocab_size); the id
    ``vocab_size`` is the separator written after each segment. A shard with no segments
    holds one separator (tokengrams then answers every query with nothing) and no chunks.
    A segment with a token outside [0, vocab_size) or chunk offsets outside its ids is
    refused with :class:`SpanError`."""
    vocab_size = check_vocab(vocab_size)
    dtype = token_width(vocab_size)
    separator = np.array([vocab_size], dtype=dtype).tobytes()
    os.makedirs(directory, exist_ok=True)
    paths = {
        "tokens": os.path.join(directory, f"{stem}.tokens"),
        "table": os.path.join(directory, f"{stem}.table"),
        "chunks": os.path.join(directory, f"{stem}.chunks.npy"),
    }
    triples: list[np.ndarray] = []
    offset = 0
    with open(paths["tokens"], "wb") as out:
        for number, segment in enumerate(segments):
            ids, chunks = _checked_segment(segment, vocab_size, number)
            for lo in range(0, len(ids), _COPY_BLOCK):
                out.write(ids[lo : lo + _COPY_BLOCK].astype(dtype).tobytes())
            out.write(separator)
            chunks[1:] += offset
            triples.append(chunks)
            offset += len(ids) + 1
        if offset == 0:
            out.write(separator)
            offset = 1
    table = np.concatenate(triples, axis=1) if triples else np.zeros((3, 0), np.int64)
    # Sorted by position, so a match position finds its chunks by binary search; chunk id
    # last breaks ties, so the order (and the bytes) never depend on the input's order
    # beyond the token stream itself.
    table = np.ascontiguousarray(table[:, np.lexsort((table[0], table[2], table[1]))])
    np.save(paths["chunks"], table, allow_pickle=False)
    try:
        with redirected(1, None):
            tokengrams_module().MemmapIndex.build(
                paths["tokens"], paths["table"], vocab_size + 1, False
            )
    except BaseException as e:
        if not library_failure(e):
            raise
        raise SpanError(
            f"building the suffix table {paths['table']} failed: {first_line(e)}"
        ) from None
    return paths


@contextlib.contextmanager
def redirected(fd: int, target: int | None) -> Iterator[None]:
    """File descriptor ``fd`` sent to ``target`` (None: /dev/null) for the block. Why:
    tokengrams' build prints "Sorting indices..." to stdout with Rust's println!, whatever
    ``verbose`` says (it would corrupt a command's --json output), and a corrupt table
    makes its open panic with a message on stderr before the exception we turn into one
    line. Its calls hold the GIL, so no other Python thread writes meanwhile."""
    (sys.stdout if fd == 1 else sys.stderr).flush()
    saved = os.dup(fd)
    sink = os.open(os.devnull, os.O_WRONLY) if target is None else None
    try:
        os.dup2(target if sink is None else sink, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        if sink is not None:
            os.close(sink)


def _checked_segment(segment: Segment, vocab_size: int, number: int):
    """A segment's ids (n,) int64 and its chunks (3, m) int64 [id, start, end], checked."""
    ids = _int_array(segment.ids, f"segment {number}: ids")
    chunk_ids = _int_array(segment.chunk_ids, f"segment {number}: chunk_ids")
    starts = _int_array(segment.starts, f"segment {number}: starts")
    ends = _int_array(segment.ends, f"segment {number}: ends")
    if not len(chunk_ids) == len(starts) == len(ends):
        raise SpanError(
            f"segment {number}: {len(chunk_ids)} chunk ids, {len(starts)} starts and "
            f"{len(ends)} ends; they must be as many"
        )
    if len(ids) and (ids.min() < 0 or ids.max() >= vocab_size):
        bad = int(ids[(ids < 0) | (ids >= vocab_size)][0])
        raise SpanError(
            f"segment {number}: token id {bad} is outside [0, {vocab_size}); the span "
            f"channel's vocab_size must be the tokenizer's"
        )
    if len(starts):
        if starts.min() < 0 or ends.max() > len(ids) or np.any(ends < starts):
            raise SpanError(
                f"segment {number}: a chunk's [start, end) is not inside the segment's "
                f"{len(ids)} tokens"
            )
        if np.any(np.diff(starts) < 0):
            raise SpanError(f"segment {number}: chunk starts must be ascending")
    return ids, np.stack([chunk_ids, starts, ends]).astype(np.int64)


def _int_array(values, what: str) -> np.ndarray:
    array = np.asarray(values)
    if array.size == 0:
        return np.zeros(0, np.int64)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise SpanError(f"{what} must be a 1-D array of integers, got {array.dtype} {array.shape}")
    return array.astype(np.int64, copy=False)


def library_failure(error: BaseException) -> bool:
    """Whether ``error`` is tokengrams refusing a file: I/O errors come as RuntimeError or
    OSError, a failed check (an unsorted table) as a Rust panic, which pyo3 raises as
    ``pyo3_runtime.PanicException``, a BaseException (so ``except Exception`` misses it)."""
    return isinstance(error, RuntimeError | OSError) or type(error).__name__ == "PanicException"


def first_line(error: BaseException) -> str:
    # tokengrams' errors carry a Rust backtrace after the message
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
