"""End-to-end checksums: every file of a real small root (chunks and dead-letter parts,
every manifest, embeddings parts and concept names, index shards, quantizer, every span
and lexical channel file, the merged variant) is listed with its sha256; `verify_root`
reports one flipped bit or a truncation in any of them; the readers refuse a damaged
part with one line naming it; `tda search --chunk-id` prints that line, no traceback.

The root is built once per module (two input files, one with a broken record, so a
dead-letter part exists; two shards with both channels; merged); each test works on its
own copy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from tda.attribution.index.reader import IndexReader, IndexReadError, PartRows
from tda.attribution.io.integrity import CorruptFileError
from tda.attribution.io.verify import check_root, verify_root
from tda.jobs.cli import main
from tda.schemas.errors import UserError
from tests.helpers import chunk_root, embed_root, write_jsonl

# One file of each kind, by its path in the root (the channel files are matched by
# suffix: build_shard_channels names them shard-NNNNN.<role>).
KINDS = {
    "chunk part": "chunks/part-000000.parquet",
    "dead-letter part": "deadletter/part-000001.parquet",
    "chunks manifest": "chunks/manifest.json",
    "embeddings part": "embeddings/part-000000.parquet",
    "embeddings concepts": "embeddings/concepts.json",
    "embeddings manifest": "embeddings/manifest.json",
    "index shard": "index/shards/shard-00000.faiss",
    "quantizer": "index/trained.faiss",
    "index concepts": "index/concepts.json",
    "index manifest": "index/manifest.json",
    "span tokens": "index/spans/shard-00000.tokens",
    "span table": "index/spans/shard-00000.table",
    "span chunks": "index/spans/shard-00000.chunks.npy",
    "lexical postings": "index/lexical/shard-00000.*.npy",
    "merged index": "index/merged/merged.faiss",
    "merged manifest": "index/merged/manifest.json",
}


@pytest.fixture(scope="module")
def built(tmp_path_factory, builtin_dir, real_docs) -> Path:
    """A finished root over two small JSONL files (the second with one malformed line)."""
    from tda.attribution.index.merge import merge_index
    from tda.attribution.stages.index import fill_shards, finish_index_run, plan_index_run
    from tda.schemas import EmbedConfig, IndexConfig

    base = tmp_path_factory.mktemp("verify")
    docs = [(k, v[:1200]) for k, v in real_docs[:6]]
    first = write_jsonl(base / "corpus" / "a.jsonl", docs[:3])
    second = base / "corpus" / "b.jsonl"
    write_jsonl(second, docs[3:])
    with second.open("a") as f:
        f.write("{not json\n")  # a dead letter: deadletter/part-000001.parquet
    root = base / "root"
    chunk_root(root, [first, second], builtin_dir)
    embed_root(EmbedConfig(root=str(root), model=builtin_dir))
    plan = plan_index_run(IndexConfig(root=str(root), shards=2))
    list(fill_shards(plan, range(len(plan.shards)), 1))
    finish_index_run(plan)
    merge_index(str(root))
    return root


@pytest.fixture
def root(built, tmp_path) -> Path:
    """A copy of the built root this test may damage."""
    copy = tmp_path / "root"
    shutil.copytree(built, copy)
    return copy


def _file(root: Path, kind: str) -> Path:
    found = sorted(root.glob(KINDS[kind]))
    assert found, f"the root has no {kind} ({KINDS[kind]})"
    return found[0]


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _errors(root: Path) -> dict[str, str]:
    return {p.path: p.line for p in verify_root(str(root)) if p.severity == "error"}


def _chunk_id(root: Path, file_index: int = 0) -> int:
    return pq.read_table(root / "chunks" / f"part-{file_index:06d}.parquet")["chunk_id"][0].as_py()


def test_a_fresh_root_verifies_clean_and_lists_every_file(root):
    check = check_root(str(root))
    assert check.problems == ()
    assert check.stages == ("chunks", "embeddings", "index", "merged")
    data_files = [
        p for p in root.rglob("*")
        if p.is_file() and not any(part.startswith("_") for part in p.relative_to(root).parts)
    ]  # fmt: skip
    # every file but the bookkeeping is compared with a manifest (manifests included)
    assert check.files == len(data_files) >= len(KINDS)
    chunks = json.loads((root / "chunks" / "manifest.json").read_text())
    parts = [p["path"] for f in chunks["files"] for p in f["parts"]]
    assert parts == [
        "chunks/part-000000.parquet",
        "chunks/part-000001.parquet",
        "deadletter/part-000001.parquet",
    ]
    assert "parts" not in chunks["totals"]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_flipped_bit_is_reported(root, kind):
    path = _file(root, kind)
    _flip(path)
    errors = _errors(root)
    assert str(path) in errors, errors
    assert "\n" not in errors[str(path)]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_truncated_file_is_reported(root, kind):
    path = _file(root, kind)
    _truncate(path)
    errors = _errors(root)
    assert str(path) in errors, errors


def test_a_flipped_bit_in_any_file_of_the_root_is_reported(root):
    """Beyond one file per kind: every file of the root, each damaged and restored."""
    files = [
        p for p in sorted(root.rglob("*"))
        if p.is_file() and not any(part.startswith("_") for part in p.relative_to(root).parts)
    ]  # fmt: skip
    assert len(files) > len(KINDS)
    for path in files:
        original = path.read_bytes()
        _flip(path)
        assert str(path) in _errors(root), path
        path.write_bytes(original)
    assert _errors(root) == {}


def test_a_deleted_manifest_is_reported_and_refused(root):
    (root / "chunks" / "manifest.json").unlink()
    errors = _errors(root)
    assert "missing" in errors[str(root / "chunks" / "manifest.json")]
    with pytest.raises(IndexReadError, match=r"chunks/manifest.json is missing") as exc:
        IndexReader.open(str(root))
    assert "\n" not in str(exc.value)


def test_a_file_no_manifest_lists_is_a_warning(root):
    (root / "embeddings" / "part-000009.parquet").write_bytes(b"stray")
    (root / "index" / "shards" / "_tmp-shard-00001.faiss-0").write_bytes(b"half")
    check = check_root(str(root))
    assert check.ok and check.errors == 0
    assert [(p.severity, Path(p.path).name) for p in check.problems] == [
        ("warning", "part-000009.parquet"),
        ("warning", "_tmp-shard-00001.faiss-0"),
    ]


def test_the_chain_names_the_manifest_changed_after_the_later_stages(root):
    """A chunks manifest rewritten (validly sealed) after embed and index: reported on
    the chunks manifest, since both later manifests agree on the one they were built
    from; the reader refuses the root."""
    from dataclasses import replace

    from tda.schemas import Manifest

    path = root / "chunks" / "manifest.json"
    manifest = Manifest.from_json(path.read_text())
    path.write_text(replace(manifest, tda_version="9.9.9").to_json())
    errors = _errors(root)
    assert list(errors) == [str(path)]
    assert (
        "not the one embeddings/manifest.json and index/manifest.json recorded" in errors[str(path)]
    )
    with pytest.raises(IndexReadError, match="not the chunks manifest the index was built"):
        IndexReader.open(str(root))


# ---- readers ---------------------------------------------------------------------------


@pytest.mark.parametrize("damage", [_flip, _truncate], ids=["flip", "truncate"])
def test_the_chunk_lookup_refuses_a_damaged_chunk_part(root, damage):
    chunk_id = _chunk_id(root)
    part = root / "chunks" / "part-000000.parquet"
    damage(part)
    reader = IndexReader.open(str(root))
    with pytest.raises(CorruptFileError) as exc:
        reader.lookup.get(chunk_id)
    message = str(exc.value)
    assert message.startswith(f"{part} ") and "\n" not in message
    assert "tda chunk" in message  # the fix


@pytest.mark.parametrize("damage", [_flip, _truncate], ids=["flip", "truncate"])
def test_the_vector_lookup_refuses_a_damaged_embeddings_part(root, damage):
    chunk_id = _chunk_id(root)
    part = root / "embeddings" / "part-000000.parquet"
    damage(part)
    reader = IndexReader.open(str(root))
    with pytest.raises(CorruptFileError, match=f"^{part} ") as exc:
        reader.vector(chunk_id)
    assert "tda embed" in str(exc.value)


@pytest.mark.parametrize(
    "kind",
    ["chunks manifest", "embeddings manifest", "index manifest", "index shard",
     "span table", "lexical postings"],
)  # fmt: skip
@pytest.mark.parametrize("damage", [_flip, _truncate], ids=["flip", "truncate"])
def test_opening_the_index_refuses_a_damaged_file(root, kind, damage):
    path = _file(root, kind)
    damage(path)
    with pytest.raises(UserError) as exc:
        IndexReader.open(str(root))
    message = str(exc.value)
    assert str(path) in message and "\n" not in message


def test_the_merged_variant_refuses_a_damaged_file(root):
    _flip(_file(root, "merged index"))
    with pytest.raises(IndexReadError, match=r"merged\.faiss does not match its sha256"):
        IndexReader.open(str(root), merged=True)


def test_a_part_altered_after_it_was_checked_is_hashed_again(root):
    """The sha256 check is cached per file version: a part changed after a first good
    read is refused by the next reader of this process."""
    chunk_id = _chunk_id(root)
    assert IndexReader.open(str(root)).lookup.get(chunk_id).chunk_id == chunk_id
    _flip(root / "chunks" / "part-000000.parquet")
    with pytest.raises(CorruptFileError, match="does not match its sha256"):
        IndexReader.open(str(root)).lookup.get(chunk_id)


def test_a_part_pyarrow_cannot_read_is_one_line(root):
    """Without a manifest entry to compare with (a caller that does not check), what
    pyarrow raises on a damaged part still becomes one line naming it."""
    part = root / "chunks" / "part-000000.parquet"
    _truncate(part)
    rows = PartRows(fsspec.filesystem("file"), lambda i: str(part))
    with pytest.raises(CorruptFileError, match=f"^{part} cannot be read as Parquet") as exc:
        rows.find(0, 0, _chunk_id(root, 1))
    assert "\n" not in str(exc.value)


def test_a_damaged_chunk_part_is_not_embedded(root, builtin_dir):
    """The embed stage checks a chunks part before it reads it."""
    from tda.attribution.encoders import load_encoder
    from tda.attribution.stages.embed import plan_embed_run, process_file
    from tda.schemas import EmbedConfig

    _flip(root / "chunks" / "part-000001.parquet")
    config = EmbedConfig(root=str(root), model=builtin_dir, overwrite=True)
    encoder = load_encoder(builtin_dir, "cpu")
    plan = plan_embed_run(config, encoder)
    with pytest.raises(CorruptFileError, match=r"part-000001\.parquet does not match its sha256"):
        process_file(1, plan, encoder)


def test_prune_refuses_a_damaged_root(root, tmp_path):
    """A damaged part would be copied into the pruned root under a fresh sha256."""
    from tda.attribution.curation.prune import PruneError, plan_prune

    _flip(root / "deadletter" / "part-000001.parquet")
    with pytest.raises(PruneError, match=r"fails verification .*deadletter/part-000001"):
        plan_prune(str(root), "unused.parquet", [], str(tmp_path / "c"), str(tmp_path / "n"), "r")


# ---- the command line ------------------------------------------------------------------


@pytest.mark.parametrize("damage", [_flip, _truncate], ids=["flip", "truncate"])
def test_search_by_chunk_id_prints_one_line_for_a_damaged_chunk_part(root, damage):
    chunk_id = _chunk_id(root, 1)
    part = root / "chunks" / "part-000001.parquet"
    damage(part)
    result = CliRunner().invoke(main, ["search", str(root), "--chunk-id", str(chunk_id)])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {part} "), result.output


def test_tda_verify_exit_status_lines_and_json(root):
    ok = CliRunner().invoke(main, ["verify", str(root)])
    assert ok.exit_code == 0, ok.output
    assert ok.output.startswith(f"ok: {check_root(str(root)).files} files (")
    assert "(chunks, embeddings, index, merged)" in ok.output
    shard = _file(root, "index shard")
    _truncate(shard)
    (root / "deadletter" / "part-000001.parquet").unlink()
    bad = CliRunner().invoke(main, ["verify", str(root)])
    assert bad.exit_code == 1
    lines = bad.output.strip().splitlines()
    assert lines[0].startswith(f"ERROR {root}/deadletter/part-000001.parquet: missing")
    assert lines[1].startswith(f"ERROR {shard}: ") and "tda index build" in lines[1]
    assert lines[-1].startswith(f"FAILED: 2 problem(s) in {root}")
    data = json.loads(CliRunner().invoke(main, ["verify", str(root), "--json"]).output)
    assert (data["ok"], data["errors"]) == (False, 2)
    assert [p["path"] for p in data["problems"]] == [
        f"{root}/deadletter/part-000001.parquet",
        str(shard),
    ]
    sizes = CliRunner().invoke(main, ["verify", str(root), "--sizes-only", "--json"])
    assert json.loads(sizes.output)["hashed"] is False and sizes.exit_code == 1


def test_a_pruned_root_lists_its_new_files_and_verifies_clean(built, tmp_path):
    """``tda prune apply`` rewrites parts: NEW_ROOT's manifests list the new parts' sha256
    (and the copied dead letters'), so the pruned root verifies and reads."""
    from tda.attribution.curation.prune import (
        finish_prune,
        plan_prune,
        prune_file,
    )

    chunk = pq.read_table(built / "chunks" / "part-000000.parquet").to_pylist()[0]
    prune_list = tmp_path / "list.csv"
    prune_list.write_text(
        "level,source,file_index,record_index,doc_id,chunk_id,char_start,char_end,score,"
        f"share,reason\nchunk,{chunk['source']},0,{chunk['record_index']},{chunk['doc_id']},"
        f"{chunk['chunk_id']},{chunk['char_start']},{chunk['char_end']},,,test\n"
    )
    new = tmp_path / "new"
    plan = plan_prune(str(built), str(prune_list), [str(built.parent / "corpus")],
                      str(tmp_path / "pruned"), str(new), "test")  # fmt: skip
    results = [prune_file(plan, f) for f in plan.files]
    finish_prune(plan, results)
    assert verify_root(str(new)) == []
    before = (built / "chunks" / "part-000000.parquet").read_bytes()
    assert (new / "chunks" / "part-000000.parquet").read_bytes() != before
    reader = IndexReader.open(str(new))
    kept = pq.read_table(new / "chunks" / "part-000000.parquet")["chunk_id"][0].as_py()
    assert kept != chunk["chunk_id"] and reader.lookup.get(kept).chunk_id == kept
    _flip(new / "chunks" / "part-000000.parquet")
    with pytest.raises(CorruptFileError, match="tda prune apply"):
        IndexReader.open(str(new)).lookup.get(kept)
