"""``tda verify ROOT``: check a whole build root against its manifests.

:func:`verify_root` (``tda verify``; ``tda serve``'s health check with ``hashes=False``)
walks the stages in order and returns every problem it finds, each naming one file and
the fix:

1. every manifest present and readable (its own ``self_sha256`` included): the chunks
   manifest, then the embeddings, index and merged-index manifests where those stages
   ran;
2. the chain: the sha256 of the chunks manifest recorded by the embeddings and index
   manifests, of the embeddings manifest recorded by the index, of the index manifest
   recorded by the merged variant;
3. every file each manifest lists: present, its size, its sha256 (chunks and dead-letter
   parts, embeddings parts and concept names, index shards, channel files, quantizer);
   each input file's parts are listed, each shard and channel file is;
4. files present that no manifest lists: warnings (names starting with ``_`` or ``.``,
   such as ``_run.json`` and ``_completions/``, and the root's ``audit.jsonl`` are the
   stages' own bookkeeping and are not reported; a ``_tmp-`` file is what a killed run
   left, and is);
5. the earlier generations kept under ``generations/`` by ``tda add`` / ``tda
   takedown`` / ``tda index retrain``: every file each one lists still present with its
   size and sha256 (found where :mod:`tda.attribution.curation.generations` resolves
   it); a damaged one is a warning (queries read only the live generation).

Errors mean the root cannot be trusted as it is; warnings do not stop a query.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from tda.attribution.io.fs import build_root, sha256_file
from tda.attribution.io.integrity import fix_for, known_damage, relative_to_root
from tda.attribution.io.parts import StageError
from tda.schemas import EmbedManifest, IndexManifest, Manifest, ManifestError
from tda.schemas.manifest import SEAL, MergedIndexManifest, StoredFile
from tda.schemas.wire import JsonRecord

__all__ = ["Problem", "RootCheck", "check_root", "verify_root"]

_MERGED = "index/merged/manifest.json"


@dataclass(frozen=True)
class Problem(JsonRecord):
    """One problem with one file of a root: ``path`` (in the root's file system),
    ``problem`` (what is wrong), ``fix`` (what to do), ``severity`` (``error``: the root
    cannot be trusted as it is; ``warning``: worth a look, queries are not affected)."""

    path: str
    problem: str
    fix: str
    severity: str = "error"

    @property
    def line(self) -> str:
        """The problem as one line: ``ERROR path: problem; fix``."""
        return f"{self.severity.upper()} {self.path}: {self.problem}; {self.fix}"


@dataclass(frozen=True)
class RootCheck(JsonRecord):
    """What :func:`check_root` found: the problems (errors first, then warnings, each in
    file order), the stages found, and the files and bytes checked."""

    root: str
    problems: tuple[Problem, ...]
    stages: tuple[str, ...]  # of "chunks", "embeddings", "index", "merged"
    files: int  # files compared with a manifest
    bytes: int  # their size
    hashed: bool  # whether sha256 was compared (else sizes only)
    JSON_DERIVED = ("ok", "errors", "warnings")

    @property
    def errors(self) -> int:
        return sum(p.severity == "error" for p in self.problems)

    @property
    def warnings(self) -> int:
        return sum(p.severity == "warning" for p in self.problems)

    @property
    def ok(self) -> bool:
        return self.errors == 0


@dataclass
class _Walk:
    """The state of one check: the root, what was listed, what was found wrong."""

    fs: object
    root: object  # BuildRoot
    url: str
    hashes: bool
    pruned: bool = False
    problems: list[Problem] = field(default_factory=list)
    listed: set[str] = field(default_factory=set)  # relative paths a manifest accounts for
    files: int = 0
    bytes: int = 0

    def path(self, relative: str) -> str:
        return f"{self.root.root}/{relative}"

    def error(self, relative: str, problem: str, fix: str | None = None) -> None:
        fix = fix or fix_for(relative, self.url, self.pruned)
        self.problems.append(Problem(self.path(relative), problem, fix))

    def warn(self, relative: str, problem: str, fix: str) -> None:
        self.problems.append(Problem(self.path(relative), problem, fix, "warning"))

    def manifest(self, relative: str, parse):
        """(parsed, sha256 of its bytes) of a manifest, or (None, None) with the problem
        recorded; an absent manifest is the caller's to judge (None, "")."""
        self.listed.add(relative)
        path = self.path(relative)
        if not self.fs.exists(path):
            stale = f"{path.rsplit('/', 1)[0]}/_stale.json"
            if self.fs.exists(stale):  # set aside by an --overwrite of an earlier stage
                with self.fs.open(stale, "rb") as f:
                    note = json.loads(f.read())
                self.error(relative, f"stale: {note['why']}", f"rebuild it: {note['rebuild']}")
                return None, None
            return None, ""
        with self.fs.open(path, "rb") as f:
            data = f.read()
        try:
            parsed = parse(data.decode("utf-8"))
        except UnicodeDecodeError:
            self.error(relative, "not valid UTF-8 (corrupt)")
            return None, None
        except ManifestError as exc:
            self.error(relative, f"cannot be read: {exc}")
            return None, None
        self.files += 1
        self.bytes += len(data)
        if SEAL not in data.decode("utf-8"):
            self.warn(
                relative,
                f"has no {SEAL} of its own (written by an older tda), so a change to it "
                f"cannot be detected",
                fix_for(relative, self.url, self.pruned),
            )
        return parsed, hashlib.sha256(data).hexdigest()

    def check(self, relative: str, entry: StoredFile) -> None:
        """One listed file: present, its size, its sha256 (with ``hashes``)."""
        self.listed.add(relative)
        path = self.path(relative)
        if not self.fs.exists(path):
            self.error(relative, f"missing (its manifest lists {entry.size} bytes)")
            return
        size = self.fs.size(path)
        self.files += 1
        self.bytes += size
        if size != entry.size:
            self.error(
                relative, f"{size} bytes, its manifest says {entry.size} (truncated or replaced)"
            )
        elif self.hashes and sha256_file(self.fs, path)[0] != entry.sha256:
            self.error(relative, "does not match its sha256 in the manifest (corrupt)")


def verify_root(root_url: str, hashes: bool = True) -> list[Problem]:
    """Every problem with the build root at ``root_url`` ([] = sound): see the module
    docstring. ``hashes=False`` compares sizes only (fast enough for a health check) and
    adds the files this process has already refused as damaged."""
    return list(check_root(root_url, hashes).problems)


def check_root(root_url: str, hashes: bool = True) -> RootCheck:
    """:func:`verify_root` with what was checked: a :class:`RootCheck`."""
    fs, root = build_root(root_url)
    walk = _Walk(fs, root, root_url, hashes)
    stages: list[str] = []
    if not fs.exists(root.root) or not fs.isdir(root.root):
        walk.problems.append(
            Problem(root.root, "no such folder", "give the ROOT that `tda build` wrote into")
        )
        return _result(walk, stages)
    index, index_sha = walk.manifest("index/manifest.json", IndexManifest.from_json)
    # written by `tda prune apply` (lineage without a kind): the fix names it
    walk.pruned = (
        index is not None
        and index.lineage is not None
        and (index.lineage.get("kind", "prune") == "prune")
    )
    chunks, chunk_sha = walk.manifest("chunks/manifest.json", Manifest.from_json)
    embed, embed_sha = walk.manifest("embeddings/manifest.json", EmbedManifest.from_json)
    present = {
        name: fs.exists(f"{root.root}/{name}")
        for name in ("chunks", "deadletter", "embeddings", "index")
    }
    if not any(present.values()):
        walk.problems.append(
            Problem(
                root.root,
                "holds no chunks, embeddings or index",
                "give the ROOT that `tda build` wrote into",
            )
        )
        return _result(walk, stages)
    _chunks(walk, chunks, chunk_sha, present, stages)
    _embeddings(walk, embed, embed_sha, present, stages)
    _index(walk, index, index_sha, present, stages)
    _chain(walk, chunk_sha, embed, embed_sha, index)
    _merged(walk, index_sha, stages)
    _generations(walk, root_url)
    if not hashes:
        for path, message in sorted(known_damage().items()):
            relative = relative_to_root(root, path)
            if relative != path and not any(p.path == path for p in walk.problems):
                fix = fix_for(relative, root_url, walk.pruned)
                walk.problems.append(Problem(path, f"refused by this process: {message}", fix))
    _unlisted(walk)
    return _result(walk, stages)


def _result(walk: _Walk, stages: list[str]) -> RootCheck:
    errors = [p for p in walk.problems if p.severity == "error"]
    warnings = [p for p in walk.problems if p.severity != "error"]
    ordered = sorted(errors, key=lambda p: p.path) + sorted(warnings, key=lambda p: p.path)
    return RootCheck(
        walk.root.root, tuple(ordered), tuple(stages), walk.files, walk.bytes, walk.hashes
    )


def _chunks(walk: _Walk, chunks, sha, present: dict, stages: list[str]) -> None:
    if chunks is None:
        if sha == "":  # absent: fine only where nothing was built at all
            walk.error(
                "chunks/manifest.json",
                "missing (written last: the chunk run did not finish, or it was deleted)",
            )
        return
    stages.append("chunks")
    for f in chunks.files:
        listed = {p.path for p in f.parts}
        wanted = [f"chunks/part-{f.file_index:06d}.parquet"]
        if f.deadlettered:
            wanted.append(f"deadletter/part-{f.file_index:06d}.parquet")
        for relative in wanted:
            if relative not in listed:
                walk.error(relative, "not listed in chunks/manifest.json with its sha256")
                walk.listed.add(relative)
        for part in f.parts:
            walk.check(part.path, part)


def _embeddings(walk: _Walk, embed, sha, present: dict, stages: list[str]) -> None:
    if embed is None:
        if sha == "" and present["embeddings"]:
            walk.error(
                "embeddings/manifest.json",
                "missing (written last: the embed run did not finish, or it was deleted)",
            )
        elif sha == "" and present["index"]:
            walk.warn(
                "embeddings",
                "absent: the index opens, but stored vectors and concepts cannot be read "
                "(tda attribute and search --chunk-id need them)",
                "ship the root with its embeddings/ folder",
            )
        return
    stages.append("embeddings")
    for f in embed.files:
        relative = f"embeddings/part-{f.file_index:06d}.parquet"
        if relative not in {p.path for p in f.parts}:
            walk.error(relative, "not listed in embeddings/manifest.json with its sha256")
            walk.listed.add(relative)
        for part in f.parts:
            walk.check(part.path, part)
    if embed.concepts is None:
        walk.error("embeddings/concepts.json", "not listed in embeddings/manifest.json")
        walk.listed.add("embeddings/concepts.json")
    else:
        walk.check(embed.concepts.path, embed.concepts)


def _index(walk: _Walk, index, sha, present: dict, stages: list[str]) -> None:
    if index is None:
        if sha == "" and present["index"]:
            walk.error(
                "index/manifest.json",
                "missing (written last: the index build did not finish, or it was deleted)",
            )
        return
    stages.append("index")
    entries = {f.path: f for f in index.files}
    needed = [s.path for s in index.shards]
    needed += [path for channel in index.channels for roles in channel.shards
               for path in roles.values()]  # fmt: skip
    for relative in needed:
        if relative not in entries:
            walk.error(f"index/{relative}", "not listed in index/manifest.json with its sha256")
            walk.listed.add(f"index/{relative}")
    for entry in index.files:
        walk.check(f"index/{entry.path}", entry)


def _chain(walk: _Walk, chunk_sha, embed, embed_sha, index) -> None:
    """Each manifest is the one the later stages recorded; a disagreement is reported
    on the earlier manifest when every later one agrees on it (it was changed after
    them), else on the later one that differs (it was built from another)."""
    if chunk_sha:
        records = {"embeddings/manifest.json": embed.chunk_manifest_sha256} if embed else {}
        if index is not None:
            records["index/manifest.json"] = index.chunk_manifest_sha256
        _compare(walk, "chunks/manifest.json", chunk_sha, records)
    if embed_sha and index is not None:
        _compare(
            walk, "embeddings/manifest.json", embed_sha,
            {"index/manifest.json": index.embed_manifest_sha256},
        )  # fmt: skip


def _compare(walk: _Walk, relative: str, actual: str, records: dict[str, str]) -> None:
    wrong = {later: sha for later, sha in records.items() if sha != actual}
    if not wrong:
        return
    if len(set(records.values())) == 1:
        names = " and ".join(sorted(records))
        walk.error(
            relative,
            f"its sha256 is not the one {names} recorded (changed after they were built)",
            f"restore it from a backup, or rebuild the stages after it "
            f"({_later_fix(relative, walk.url)})",
        )
        return
    for later in sorted(wrong):
        walk.error(later, f"was built from another {relative} than the root holds")


def _later_fix(relative: str, url: str) -> str:
    if relative.startswith("chunks/"):
        return f"tda embed {url} --model SPEC --overwrite, then tda index build {url} --overwrite"
    return f"tda index build {url} --overwrite"


def _merged(walk: _Walk, index_sha, stages: list[str]) -> None:
    if not walk.fs.exists(walk.path(_MERGED)):
        return
    merged, _ = walk.manifest(_MERGED, MergedIndexManifest.from_json)
    if merged is None:
        return
    stages.append("merged")
    if index_sha and merged.parent_manifest_id != index_sha:
        walk.error(_MERGED, "was merged from another build of the index")
    for entry in merged.files:
        walk.check(f"index/merged/{entry.path}", entry)


def _generations(walk: _Walk, root_url: str) -> None:
    """Each earlier generation intact (see the module docstring, step 5)."""
    if not walk.fs.exists(walk.path("generations")):
        return
    from tda.attribution.io.generations import check_generation, list_generations

    for record in list_generations(root_url):
        try:
            problems = check_generation(root_url, record["id"], walk.hashes)
        except (StageError, ManifestError) as exc:
            problems = [(walk.path(f"generations/{record['id']}"), str(exc))]
        for path, problem in problems:
            walk.problems.append(
                Problem(
                    path,
                    f"{problem} (generation {record['id'][:16]}..., kept for lineage)",
                    "restore it from a backup; the live generation is not affected",
                    "warning",
                )
            )


def _unlisted(walk: _Walk) -> None:
    """Warn of files no manifest accounts for (a ``_tmp-`` file: a killed run's)."""
    prefix = walk.root.root.rstrip("/") + "/"
    for path in sorted(walk.fs.find(walk.root.root)):
        relative = path[len(prefix) :] if path.startswith(prefix) else path
        parts = relative.split("/")
        if relative in walk.listed or relative == "audit.jsonl" or parts[0] == "generations":
            continue
        name = parts[-1]
        if name.startswith("_tmp-"):
            walk.warn(
                relative,
                "half-written by a run that was killed",
                "remove it, or finish that run with --resume",
            )
        elif not any(p.startswith(("_", ".")) for p in parts):
            walk.warn(
                relative,
                "not listed in any manifest (left by another run, or put here by hand)",
                "remove it if nothing needs it",
            )
