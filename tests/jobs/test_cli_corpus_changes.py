"""``tda add``, ``tda takedown`` and ``tda index retrain`` from the command line, end to
end on the real small corpus of ``tests/attribution/test_corpus_changes.py`` (its
``corpus`` fixture and ``build`` helper): what each prints, what it writes, and the one
line each bad input gets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from tda.attribution.curation.generations import list_generations
from tda.attribution.index.reader import IndexReader, IndexReadError
from tda.attribution.io.verify import verify_root
from tda.jobs.cli import main
from tests.attribution.test_corpus_changes import build, corpus, digests  # noqa: F401
from tests.jobs.test_cli_arguments import _one_line


def tda(*args) -> object:
    """``tda ARGS`` in-process; -> click's Result (exit code, stdout and stderr mixed)."""
    return CliRunner().invoke(main, [str(a) for a in args])


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_add_then_takedown_from_the_command_line(corpus, builtin_dir, steerling_dir, tmp_path):  # noqa: F811
    a, b, c = corpus / "a.jsonl", corpus / "b.jsonl", corpus / "c.jsonl"
    root = tmp_path / "root"
    build(root, [a, b], builtin_dir, "IDMap2,Flat", 2)
    first = IndexReader.open(str(root)).manifest_id

    result = tda("add", root, c, "--by", "data-team")
    assert result.exit_code == 0, result.output
    grown = IndexReader.open(str(root))
    assert f"manifest {first[:16]}... -> {grown.manifest_id[:16]}..." in result.output
    assert result.output.startswith("add: ") and "chunks_added" in result.output
    assert [f.url for f in grown.manifest.inputs] == [str(a), str(b), str(c)]
    (line,) = _records(root / "audit.jsonl")
    assert line["change"] == "add" and line["by"] == "data-team"
    assert line["parent_manifest_id"] == first == list_generations(str(root))[0]["id"]

    # refusals, each one line: a file already in ROOT, another tokenizer, a missing ROOT
    _one_line(tda("add", root, c), "Error: ", "already in", str(c))
    (tmp_path / "d.jsonl").write_text(a.read_text())
    _one_line(
        tda("add", root, tmp_path / "d.jsonl", "--tokenizer", _other_tokenizer(tmp_path)),
        "Error: ", "is not the one ROOT's chunks were cut with",
    )  # fmt: skip
    _one_line(
        tda("add", root, tmp_path / "d.jsonl", "--model", f"steerling:{steerling_dir}"),
        "Error: ", "is not the encoder ROOT was embedded with",
    )  # fmt: skip
    assert not (root / "_add").exists() or not list((root / "_add").glob("0*.json"))
    assert IndexReader.open(str(root)).manifest_id == grown.manifest_id  # nothing changed

    # takedown by --list (ids one per line, '#' comments), one id ROOT does not hold
    chunks = pq.read_table(root / "chunks/part-000001.parquet").to_pylist()
    doc, other = chunks[0]["doc_id"], chunks[-1]["doc_id"]
    assert doc != other
    gone = {r["chunk_id"] for r in chunks if r["doc_id"] == doc}
    (tmp_path / "ids.txt").write_text(f"# claim 12\n{doc}\nno-such-doc\n")
    result = tda("takedown", root, "--list", tmp_path / "ids.txt", "--reason", "claim 12",
                 "--by", "legal")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "takedown: " in result.output and "documents_removed 1" in result.output
    assert "not in the root (already removed?): no-such-doc" in result.output
    taken = IndexReader.open(str(root))
    for chunk_id in gone:
        with pytest.raises(IndexReadError):
            taken.lookup.get(chunk_id)
    entry = _records(root / "audit.jsonl")[-1]
    assert entry["by"] == "legal" and entry["documents"] == {"b": [doc]}
    assert entry["request"]["list"] == str(tmp_path / "ids.txt")

    # the same id again: nothing left to take down, one line; the root is unchanged
    before = digests(root)
    _one_line(tda("takedown", root, "--doc-id", doc, "--reason", "again"),
              "Error: ", "none of the document ids", doc)  # fmt: skip
    assert digests(root) == before
    _one_line(tda("takedown", root, "--doc-id", other, "--reason", " "), "--reason is required")
    _one_line(tda("takedown", root, "--doc-id", other, "--reason", "x", "--corpus", corpus),
              "--corpus needs --corpus-out")  # fmt: skip
    _one_line(tda("takedown", root, "--list", tmp_path / "none.txt", "--reason", "x"),
              "no such file")  # fmt: skip

    # --corpus / --corpus-out: the affected corpus file rewritten without the document
    out = tmp_path / "corpus-out"
    result = tda("takedown", root, "--doc-id", other, "--reason", "claim 13",
                 "--corpus", corpus, "--corpus-out", out, "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    entry = json.loads(result.output)
    assert entry["corpus_out"] == str(out) and entry["files"] == [str(b)]
    assert sorted(p.name for p in out.iterdir()) == ["b.jsonl"]
    kept = _records(out / "b.jsonl")
    assert kept == [r for r in _records(b) if r["id"] != other]
    assert len(kept) == len(_records(b)) - 1
    assert len(list_generations(str(root))) == 3  # add, takedown, takedown
    assert [p.line for p in verify_root(str(root))] == []

    # the taken-down documents' rows remain in generations/ only; deleting the folder
    # erases them and leaves a live root that verifies and searches
    def holders(ids: set[str]) -> set[str]:
        return {
            str(p.relative_to(root)).split("/")[0]
            for p in root.rglob("chunks/part-*.parquet")
            if ids & set(pq.read_table(p, columns=["doc_id"])["doc_id"].to_pylist())
        }

    assert holders({doc, other}) == {"generations"}
    shutil.rmtree(root / "generations")
    assert holders({doc, other}) == set() and list_generations(str(root)) == []
    result = tda("verify", root)
    assert result.exit_code == 0, result.output
    assert IndexReader.open(str(root)).manifest.vectors == entry["vectors"]


def _other_tokenizer(tmp_path: Path) -> str:
    """A byte-level BPE tokenizer trained on other text than the root's (vocab 300)."""
    from tda.attribution.corpus.tokenizer import train_bpe_tokenizer
    from tests.helpers import doc_topics

    out = tmp_path / "other-tokenizer"
    train_bpe_tokenizer(iter([t for _, t in doc_topics()[40:60]]), 300, str(out))
    return str(out)


def test_index_retrain_from_the_command_line(corpus, builtin_dir, tmp_path):  # noqa: F811
    root = tmp_path / "root"
    build(root, [corpus / "a.jsonl", corpus / "b.jsonl", corpus / "c.jsonl"], builtin_dir,
          "IVF4,Flat", 3, nprobe=1)  # fmt: skip
    parent = IndexReader.open(str(root))
    result = tda("index", "retrain", root, "--by", "ops", "--json")
    assert result.exit_code == 0, result.output
    entry = json.loads(result.output)
    child = IndexReader.open(str(root))
    assert entry["change"] == "retrain" and entry["by"] == "ops"
    assert entry["parent_manifest_id"] == parent.manifest_id
    assert entry["child_manifest_id"] == child.manifest_id != parent.manifest_id
    assert entry["vectors"] == parent.manifest.vectors == child.manifest.vectors
    assert child.manifest.lineage["kind"] == "retrain"
    # the pre-retrain index is kept as the parent generation
    assert [g["id"] for g in list_generations(str(root))] == [parent.manifest_id]
    assert _records(root / "audit.jsonl") == [entry]
    _one_line(tda("index", "retrain", tmp_path / "nowhere"), "Error: ", "nowhere")
