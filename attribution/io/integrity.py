"""Checking a build root's files against their manifests before they are read.

Every file a stage writes is listed in its manifest with its size and sha256
(:class:`~tda.schemas.manifest.StoredFile`, hashed while it was written). Readers call
:func:`check_file` before they open one: the size is compared on every open (one stat),
the sha256 once per process and file version (a file's path, size and mtime: a file
replaced or altered in place is hashed again), so a flipped bit or a truncated part is
refused with one line naming the file and the fix instead of being read into a wrong
answer. :func:`parquet_errors` turns what pyarrow raises on a damaged Parquet file that
slipped past these checks (no manifest entry to compare with) into the same one line.

Files found damaged are remembered for the process (:func:`known_damage`), so a health
check can report them without hashing the root again.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from tda.attribution.io.fs import sha256_file
from tda.attribution.io.parts import StageError
from tda.schemas.layout import BuildRoot
from tda.schemas.manifest import StoredFile

__all__ = [
    "CorruptFileError",
    "ListedFiles",
    "check_file",
    "fix_for",
    "guarded",
    "known_damage",
    "parquet_errors",
    "relative_to_root",
    "stored_file",
]


class CorruptFileError(StageError):
    """A file of a build root that is missing, truncated or altered: it does not match
    its manifest (one line naming the file and the fix). ``tda serve`` should answer it
    with a 5xx: the root is damaged, the request was fine."""


# (path, sha256, size, mtime) of files whose sha256 this process checked and found right
_verified: set[tuple[str, str, int, str]] = set()
# path -> the one line it was refused with (until it is found right again)
_damaged: dict[str, str] = {}
_lock = threading.Lock()


def relative_to_root(root: BuildRoot, path: str) -> str:
    """A path inside the root -> relative to it (``chunks/part-000042.parquet``)."""
    prefix = root.root.rstrip("/") + "/"
    return path[len(prefix) :] if path.startswith(prefix) else path


def stored_file(root: BuildRoot, path: str, written: tuple[str, int]) -> StoredFile:
    """A file a stage just wrote (``written``: hex sha256, size) as its manifest lists it."""
    return StoredFile(relative_to_root(root, path), written[0], written[1])


def fix_for(relative: str, root_url: str, pruned: bool = False) -> str:
    """How to repair a damaged file of a root, by the stage that wrote it (``relative``:
    its path inside the root). ``pruned``: the root was written by ``tda prune apply``,
    which is what rebuilds it."""
    top = relative.split("/", 1)[0]
    if pruned and top in ("chunks", "deadletter", "embeddings", "index"):
        if relative.startswith("index/merged/"):
            return f"merge again: tda index merge {root_url}"
        return "restore it from a backup, or write this root again with `tda prune apply`"
    if top in ("chunks", "deadletter"):
        return (
            f"restore it from a backup, or rebuild the chunks: tda chunk INPUT... --out "
            f"{root_url} --tokenizer SPEC --overwrite (then tda verify {root_url})"
        )
    if top == "embeddings":
        return (
            f"restore it from a backup, or re-embed: tda embed {root_url} --model SPEC "
            f"--overwrite, then tda index build {root_url} --overwrite"
        )
    if relative.startswith("index/merged/"):
        return f"merge again: tda index merge {root_url}"
    if top == "index":
        return (
            f"restore it from a backup, or rebuild the index: tda index build {root_url} "
            f"--overwrite"
        )
    return "restore it from a backup"


def _version(fs, path: str, size: int) -> str:
    """What changes when a file is rewritten: its modification time (as fsspec reports
    it; object stores give their own stamp)."""
    info = fs.info(path)
    for key in ("mtime", "LastModified", "updated", "last_modified", "created"):
        if info.get(key) is not None:
            return str(info[key])
    return str(size)


def check_file(fs, path: str, entry: StoredFile | None, listed_in: str, fix: str) -> None:
    """Refuse ``path`` unless it matches ``entry`` (its manifest's record; None: the
    manifest ``listed_in`` does not list it): present, the recorded size (checked on
    every call), the recorded sha256 (hashed once per process and file version).

    Raises :class:`CorruptFileError`, one line: the file, what is wrong, ``fix``."""
    if entry is None:
        _refuse(path, f"{path} is not listed in {listed_in}, so it cannot be checked; {fix}")
    try:
        size = fs.size(path)
    except FileNotFoundError:
        size = None
    if size is None:
        _refuse(path, f"{path} is missing ({listed_in} lists it); {fix}")
    if size != entry.size:
        _refuse(
            path,
            f"{path} is {size} bytes, {listed_in} says {entry.size} (truncated or replaced); "
            f"refusing to read it; {fix}",
        )
    key = (path, entry.sha256, size, _version(fs, path, size))
    if key in _verified:
        return
    digest, _ = sha256_file(fs, path)
    if digest != entry.sha256:
        _refuse(
            path,
            f"{path} does not match its sha256 in {listed_in} (corrupt); refusing to read "
            f"it; {fix}",
        )
    with _lock:
        _verified.add(key)
        _damaged.pop(path, None)


def _refuse(path: str, message: str):
    with _lock:
        _damaged[path] = message
    raise CorruptFileError(message)


def known_damage() -> dict[str, str]:
    """Files this process refused (path -> the line it was refused with), for a health
    check that should not hash a whole root per request."""
    with _lock:
        return dict(_damaged)


@contextlib.contextmanager
def parquet_errors(path: str, fix: str) -> Iterator[None]:
    """Inside the block, what pyarrow (or the file system) raises while reading the
    Parquet file ``path`` becomes a :class:`CorruptFileError` naming it: a damaged file
    is a problem of the root, never a traceback."""
    import pyarrow as pa

    try:
        yield
    except (pa.ArrowException, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        _refuse(path, f"{path} cannot be read as Parquet ({reason[:200]}); {fix}")


def guarded(items: Iterable, path: str, fix: str) -> Iterator:
    """``items`` (read from the Parquet file ``path``), with :func:`parquet_errors`
    around each step of the reading only: what the caller does with an item is not
    mistaken for damage to ``path``."""
    it = iter(items)
    while True:
        with parquet_errors(path, fix):
            try:
                item = next(it)
            except StopIteration:
                return
        yield item


@dataclass(frozen=True)
class ListedFiles:
    """The files one manifest lists, for a reader that checks each before it opens it.

    ``entries``: path relative to the build root -> its record; None when the manifest
    itself is missing or unreadable, and then every :meth:`check` raises ``why``.
    ``listed_in``: the manifest's path (named in messages); ``pruned``: the root was
    written by ``tda prune apply`` (which is then the fix)."""

    fs: object
    root: BuildRoot
    root_url: str
    listed_in: str
    entries: dict[str, StoredFile] | None
    why: str = ""
    pruned: bool = False

    def check(self, path: str) -> str:
        """Refuse ``path`` unless it matches its record (:func:`check_file`); -> the fix
        to name if reading it fails all the same."""
        fix = fix_for(relative_to_root(self.root, path), self.root_url, self.pruned)
        if self.entries is None:
            _refuse(path, self.why)
        check_file(
            self.fs, path, self.entries.get(relative_to_root(self.root, path)), self.listed_in, fix
        )
        return fix
