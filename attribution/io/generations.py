"""Reading the generations of a build root (written by ``tda add``, ``tda takedown`` and
``tda index retrain``; :mod:`tda.attribution.curation.generations` writes them): which
generation is live, where an earlier generation's files are now, and whether they are
intact.

A generation is one set of the three stage manifests; its id is the sha256 of its
``index/manifest.json``. A superseded generation keeps its manifests, and the files a
later change replaced in place, under ``ROOT/generations/<id>/`` (same relative paths),
with ``generation.json`` naming the generation that superseded it. A file of generation
G is found (:func:`resolve`) in the first of ``generations/G/``,
``generations/<G's successor>/``, ... that holds a copy, else at its live path: a file
replaced at the step from G_j to G_j+1 was preserved under G_j, so every earlier
generation that listed the same bytes finds them there.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from tda.attribution.io.fs import build_root, read_json
from tda.attribution.io.parts import StageError, read_manifest
from tda.schemas import EmbedManifest, IndexManifest, Manifest
from tda.schemas.layout import BuildRoot

__all__ = [
    "GENERATIONS",
    "MANIFESTS",
    "Current",
    "GenerationError",
    "check_generation",
    "current",
    "generation_folder",
    "generation_manifests",
    "list_generations",
    "listed_files",
    "resolve",
]

GENERATIONS = "generations"  # ROOT/generations/<manifest id>/
# the stage manifests of a generation, relative to ROOT, in the order they are written
MANIFESTS = ("chunks/manifest.json", "embeddings/manifest.json", "index/manifest.json")


class GenerationError(StageError):
    """A root whose generations cannot be read or changed as asked (one line)."""


@dataclass(frozen=True)
class Current:
    """The live generation of a root: its three manifests and their sha256 (the index
    manifest's is the generation id)."""

    chunks: Manifest
    embed: EmbedManifest
    index: IndexManifest
    chunk_sha: str
    embed_sha: str
    id: str


def current(root: str, error: type[StageError] = GenerationError) -> Current:
    """ROOT's live generation; one line naming the missing stage when it is not built."""
    fs, broot = build_root(root)
    chunks, chunk_sha = read_manifest(
        fs, broot.chunk_manifest, Manifest.from_json, "tda chunk", error
    )
    embed, embed_sha = read_manifest(
        fs, broot.embed_manifest, EmbedManifest.from_json, "tda embed", error
    )
    index, index_sha = read_manifest(
        fs, broot.index_manifest, IndexManifest.from_json, "tda index build", error
    )
    if embed.chunk_manifest_sha256 != chunk_sha or index.embed_manifest_sha256 != embed_sha:
        # a change that stopped between its manifests: the live index manifest is still
        # the parent's, whose snapshot holds the parent's other manifests
        folder = generation_folder(broot, index_sha)
        if all(fs.exists(f"{folder}/{rel}") for rel in MANIFESTS):
            (chunks, chunk_sha), (embed, embed_sha) = (
                read_manifest(fs, f"{folder}/{MANIFESTS[0]}", Manifest.from_json, "", error),
                read_manifest(fs, f"{folder}/{MANIFESTS[1]}", EmbedManifest.from_json, "", error),
            )
            return Current(chunks, embed, index, chunk_sha, embed_sha, index_sha)
        raise error(
            f"{root}: its manifests are not one generation (a change was interrupted or a "
            f"stage rebuilt); run the interrupted command again, or `tda verify {root}`"
        )
    return Current(chunks, embed, index, chunk_sha, embed_sha, index_sha)


def generation_folder(broot: BuildRoot, gen_id: str) -> str:
    return f"{broot.root}/{GENERATIONS}/{gen_id}"


def list_generations(root: str) -> list[dict]:
    """The superseded generations kept under ``ROOT/generations/``, oldest first: each
    its ``generation.json`` (id, superseded_by, change, time); a folder whose change was
    interrupted has only ``id``."""
    fs, broot = build_root(root)
    folder = f"{broot.root}/{GENERATIONS}"
    if not fs.exists(folder):
        return []
    records = []
    for path in sorted(fs.ls(folder, detail=False)):
        gen_id = path.rstrip("/").rsplit("/", 1)[-1]
        record_path = f"{folder}/{gen_id}/generation.json"
        records.append(read_json(fs, record_path) if fs.exists(record_path) else {"id": gen_id})
    by_id = {r["id"]: r for r in records}
    # chain order: the one no other generation names as its successor comes first
    successors = {r.get("superseded_by") for r in records}
    heads = [r for r in records if r["id"] not in successors]
    ordered, seen = [], set()
    for head in heads:
        r = head
        while r is not None and r["id"] not in seen:
            ordered.append(r)
            seen.add(r["id"])
            r = by_id.get(r.get("superseded_by"))
    return ordered


def resolve(root: str, gen_id: str, relative: str) -> str:
    """Where generation ``gen_id``'s file ``relative`` is now: its preserved copy under
    the first of ``generations/<gen_id>/``, ``generations/<successor>/``, ... that holds
    one, else its live path."""
    fs, broot = build_root(root)
    seen: set[str] = set()
    gid: str | None = gen_id
    while gid and gid not in seen:
        seen.add(gid)
        folder = generation_folder(broot, gid)
        if fs.exists(f"{folder}/{relative}"):
            return f"{folder}/{relative}"
        record = f"{folder}/generation.json"
        gid = read_json(fs, record).get("superseded_by") if fs.exists(record) else None
    return f"{broot.root}/{relative}"


def generation_manifests(root: str, gen_id: str) -> tuple[Manifest, EmbedManifest, IndexManifest]:
    """Generation ``gen_id``'s three manifests (the live ones when it is the current
    generation); one line when ROOT has no such generation."""
    fs, broot = build_root(root)
    live = broot.index_manifest
    if fs.exists(live):
        with fs.open(live, "rb") as f:
            if hashlib.sha256(f.read()).hexdigest() == gen_id:
                cur = current(root)
                return cur.chunks, cur.embed, cur.index
    folder = generation_folder(broot, gen_id)
    if not fs.exists(f"{folder}/index/manifest.json"):
        raise GenerationError(
            f"{root} has no generation {gen_id[:16]}...; `tda verify {root}` lists them"
        )
    parsed = []
    for rel, parse in zip(
        MANIFESTS, (Manifest.from_json, EmbedManifest.from_json, IndexManifest.from_json),
        strict=True,
    ):  # fmt: skip
        with fs.open(f"{folder}/{rel}", "rb") as f:
            parsed.append(parse(f.read().decode("utf-8")))
    return tuple(parsed)  # type: ignore[return-value]


def listed_files(gen: tuple[Manifest, EmbedManifest, IndexManifest]) -> dict[str, tuple[str, int]]:
    """Every file a generation lists, relative to ROOT -> (sha256, size)."""
    chunks, embed, index = gen
    out = {p.path: (p.sha256, p.size) for f in chunks.files for p in f.parts}
    out.update({p.path: (p.sha256, p.size) for f in embed.files for p in f.parts})
    if embed.concepts is not None:
        out[embed.concepts.path] = (embed.concepts.sha256, embed.concepts.size)
    out.update({f"index/{f.path}": (f.sha256, f.size) for f in index.files})
    return out


def check_generation(root: str, gen_id: str, hashes: bool = True) -> list[tuple[str, str]]:
    """Every problem with generation ``gen_id``'s files, as (path, problem) ([] = intact):
    missing, another size, another sha256 (``hashes``)."""
    from tda.attribution.io.fs import sha256_file

    fs, _ = build_root(root)
    problems = []
    for relative, (sha, size) in sorted(listed_files(generation_manifests(root, gen_id)).items()):
        path = resolve(root, gen_id, relative)
        if not fs.exists(path):
            problems.append((path, "missing"))
        elif fs.size(path) != size:
            problems.append((path, f"{fs.size(path)} bytes, its manifest says {size}"))
        elif hashes and sha256_file(fs, path)[0] != sha:
            problems.append((path, "does not match its sha256 (changed after it was written)"))
    return problems
