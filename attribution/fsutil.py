"""Small fsspec helpers: atomic writes (temp file + rename) and JSON files."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

__all__ = [
    "AtomicFile",
    "atomic_open",
    "atomic_write_text",
    "filesystem",
    "is_local",
    "open_parquet",
    "read_json",
    "sha256_file",
]


def filesystem(url: str):
    """URL or path -> (fsspec filesystem, path inside it; local paths made absolute)."""
    import fsspec

    return fsspec.core.url_to_fs(url)


class AtomicFile:
    """A file written all-or-nothing: bytes go to a ``_tmp-`` sibling, renamed on commit.

    Readers never see a partial file (on local disks the rename is atomic; on object
    stores the completion marker written after it is the commit point). ``abort`` removes
    the temp file.
    """

    def __init__(self, fs, path: str) -> None:
        parent, _, name = path.rpartition("/")
        fs.makedirs(parent, exist_ok=True)
        self.fs, self.path = fs, path
        self.tmp = f"{parent}/_tmp-{name}-{uuid.uuid4().hex}"
        self.file = fs.open(self.tmp, "wb")

    def commit(self) -> None:
        self.file.close()
        self.fs.mv(self.tmp, self.path)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.file.close()
        with contextlib.suppress(Exception):
            self.fs.rm(self.tmp)


@contextlib.contextmanager
def atomic_open(fs, path: str) -> Iterator[Any]:
    """``with atomic_open(fs, path) as f: f.write(...)``; nothing appears if the block raises."""
    target = AtomicFile(fs, path)
    try:
        yield target.file
    except BaseException:
        target.abort()
        raise
    target.commit()


def atomic_write_text(fs, path: str, text: str) -> None:
    with atomic_open(fs, path) as f:
        f.write(text.encode("utf-8"))


def read_json(fs, path: str) -> Any:
    with fs.open(path, "rb") as f:
        return json.loads(f.read())


def is_local(fs) -> bool:
    """True for the local filesystem (paths usable by os and native libraries)."""
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


def open_parquet(fs, path: str):
    """A ``pyarrow.parquet.ParquetFile`` for ``path`` in ``fs``: memory-mapped when local
    (3-4x faster than reading through a Python file object), else an fsspec handle."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if is_local(fs):
        return pq.ParquetFile(pa.memory_map(path))
    return pq.ParquetFile(fs.open(path, "rb"))


def sha256_file(fs, path: str) -> tuple[str, int]:
    """(hex sha256, size in bytes) of a file, read in 4 MiB blocks."""
    import hashlib

    digest = hashlib.sha256()
    size = 0
    with fs.open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size
