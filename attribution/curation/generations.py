"""Generations of a build root: how ``tda add``, ``tda takedown`` and ``tda index
retrain`` change ROOT in place while every earlier generation stays intact and readable.

A generation is one set of the three stage manifests (chunks, embeddings, index); its id
is the sha256 of its ``index/manifest.json`` (the manifest id queries and reports
carry). A change writes the next generation in four steps:

1. :func:`snapshot`: copy the current generation's three manifests to
   ``ROOT/generations/<id>/`` (same relative paths), before anything else is written;
2. :func:`preserve`: before a file of the current generation is replaced in place (a
   chunks or embeddings part of an input file with a taken-down document, an index
   shard that is refilled, the whole index on retrain), copy it byte for byte to
   ``ROOT/generations/<id>/<its relative path>``. New files (parts of added input files,
   new shards) get new names, so nothing of the old generation is overwritten by them;
3. write the new parts, shards and manifests (the index manifest last: the commit point);
4. :func:`seal`: ``ROOT/generations/<id>/generation.json`` names the generation that
   superseded it, and ``ROOT/audit.jsonl`` gets the change's line (:func:`append_audit`).

A file of generation G is found (:func:`resolve`) in the first of
``generations/G/``, ``generations/<G's successor>/``, ... that holds a preserved copy,
else at its live path: a file replaced at the step from G_j to G_j+1 was preserved under
G_j, so every earlier generation that listed the same bytes finds them there.
:func:`check_generation` proves an old generation intact (every file it lists present,
its size and sha256), :func:`checkout_generation` copies it out as a standalone root any
reader opens. Every step is idempotent (a file is preserved once), so an interrupted
change is finished by running it again.
"""

from __future__ import annotations

import datetime as _dt
import getpass
import hashlib
import json

from tda import __version__
from tda.attribution.io.fs import atomic_open, atomic_write_text, build_root
from tda.attribution.io.generations import (
    GENERATIONS,
    MANIFESTS,
    Current,
    GenerationError,
    check_generation,
    current,
    generation_folder,
    generation_manifests,
    list_generations,
    listed_files,
    resolve,
)
from tda.schemas.layout import BuildRoot

__all__ = [
    "GENERATIONS",
    "MANIFESTS",
    "Current",
    "GenerationError",
    "append_audit",
    "check_generation",
    "checkout_generation",
    "current",
    "generation_manifests",
    "list_generations",
    "preserve",
    "resolve",
    "seal",
    "snapshot",
    "who",
    "write_manifest",
]


def _write_blocks(src, fs, dst: str) -> int:
    """Write the open file ``src`` to ``dst`` atomically, in 4 MiB blocks; -> bytes."""
    written = 0
    with atomic_open(fs, dst) as fout:
        for block in iter(lambda: src.read(1 << 22), b""):
            fout.write(block)
            written += len(block)
    return written


def _copy(fs, src: str, dst: str) -> int:
    """Copy ``src`` to ``dst`` atomically, in 4 MiB blocks; -> bytes written."""
    with fs.open(src, "rb") as fin:
        return _write_blocks(fin, fs, dst)


def snapshot(root: str, gen: Current) -> int:
    """Copy the live generation's three manifests to ``generations/<id>/`` (once); ->
    bytes written."""
    fs, broot = build_root(root)
    return sum(_preserve_one(fs, broot, gen.id, rel) for rel in MANIFESTS)


def preserve(root: str, gen_id: str, relatives) -> int:
    """Copy each live file (path relative to ROOT) of generation ``gen_id`` to
    ``generations/<gen_id>/`` before it is replaced in place; a file already preserved
    there (an interrupted change run again) is kept as it is. -> bytes written."""
    fs, broot = build_root(root)
    return sum(_preserve_one(fs, broot, gen_id, rel) for rel in relatives)


def _preserve_one(fs, broot: BuildRoot, gen_id: str, relative: str) -> int:
    target = f"{generation_folder(broot, gen_id)}/{relative}"
    if fs.exists(target):
        return 0
    return _copy(fs, f"{broot.root}/{relative}", target)


def write_manifest(root: str, relative: str, text: str) -> str:
    """Write a stage manifest of the new generation (atomically); -> its sha256."""
    fs, broot = build_root(root)
    atomic_write_text(fs, f"{broot.root}/{relative}", text)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def seal(root: str, parent: str, child: str, kind: str) -> None:
    """Record in ``generations/<parent>/generation.json`` that ``child`` superseded it."""
    fs, broot = build_root(root)
    record = {
        "id": parent,
        "superseded_by": child,
        "change": kind,
        "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    atomic_write_text(
        fs,
        f"{generation_folder(broot, parent)}/generation.json",
        json.dumps(record, indent=1, sort_keys=True) + "\n",
    )


def who(by: str | None) -> str:
    """Who made a change, for the audit log: ``--by``, else the login name."""
    if by and by.strip():
        return by.strip()
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (some containers)
        return "unknown"


def append_audit(root: str, entry: dict) -> dict:
    """Append ``entry`` (with the time and tda version added) to ``ROOT/audit.jsonl``
    (rewritten atomically: a reader never sees half a line); -> the entry written."""
    fs, broot = build_root(root)
    entry = {
        "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "tda_version": __version__,
        **entry,
    }
    path = f"{broot.root}/audit.jsonl"
    previous = b""
    if fs.exists(path):
        with fs.open(path, "rb") as f:
            previous = f.read()
    with atomic_open(fs, path) as f:
        f.write(previous + (json.dumps(entry, sort_keys=True) + "\n").encode("utf-8"))
    return entry


def checkout_generation(root: str, gen_id: str, out: str) -> str:
    """Copy generation ``gen_id`` of ROOT out as a standalone root at ``out`` (its files
    and manifests, byte for byte), which any reader opens; -> ``out``. Refuses a damaged
    generation and a non-empty ``out``."""
    from tda.attribution.io.parts import nonempty

    fs, _broot = build_root(root)
    ofs, oroot = build_root(out)
    if nonempty(ofs, oroot.root):
        raise GenerationError(f"{out} is not empty; give an empty folder to copy into")
    damaged = check_generation(root, gen_id)
    if damaged:
        raise GenerationError(
            f"generation {gen_id[:16]}... of {root} is damaged ({damaged[0][0]}: {damaged[0][1]})"
        )
    for relative in (*listed_files(generation_manifests(root, gen_id)), *MANIFESTS):
        with fs.open(resolve(root, gen_id, relative), "rb") as src:
            _write_blocks(src, ofs, f"{oroot.root}/{relative}")
    return out
