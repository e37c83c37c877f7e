"""``tda build``: the three stages in one call write the same files as the three stage
commands, resume after an interruption to the same files, and report progress."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tda.pipeline.build import BuildProgress, run_build
from tda.pipeline.chunk import run_chunk
from tda.pipeline.embed import run_embed
from tda.pipeline.index import run_index
from tda.schemas import ChunkConfig, ConfigError, EmbedConfig, IndexConfig
from tests.helpers import write_jsonl


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, real_docs) -> Path:
    """Two input files of real text (documentation topics)."""
    base = tmp_path_factory.mktemp("build-corpus")
    half = len(real_docs) // 2
    write_jsonl(base / "a.jsonl", real_docs[:half])
    write_jsonl(base / "b.jsonl", real_docs[half:])
    return base


def configs(corpus: Path, root: Path, model: str, **flags):
    return (
        ChunkConfig(inputs=(str(corpus),), out=str(root), tokenizer=model, **flags),
        EmbedConfig(root=str(root), model=model, batch_tokens=2048, **flags),
        IndexConfig(root=str(root), shards=2, **flags),
    )


def tree(root: Path) -> dict[str, bytes]:
    """Every file under root -> its bytes."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


class Recorder(BuildProgress):
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def start(self, stage, units, fs, markers) -> None:
        self.events.append(("start", stage, units, markers))

    def done(self, stage, result, seconds) -> None:
        self.events.append(("done", stage, result.manifest.__class__.__name__))


@pytest.fixture(scope="module")
def stage_root(tmp_path_factory, corpus, builtin_dir) -> Path:
    """The reference: chunk, embed and index build run one after another."""
    root = tmp_path_factory.mktemp("stages") / "root"
    chunk, embed, index = configs(corpus, root, builtin_dir)
    run_chunk(chunk)
    run_embed(embed)
    run_index(index)
    return root


def test_build_equals_the_three_stage_commands(tmp_path, corpus, builtin_dir, stage_root):
    root = tmp_path / "root"
    recorder = Recorder()
    result = run_build(*configs(corpus, root, builtin_dir), progress=recorder)
    files = tree(root)
    assert files.keys() == tree(stage_root).keys()
    assert "index/manifest.json" in files and "embeddings/manifest.json" in files
    assert files == tree(stage_root)
    assert result.index.manifest.vectors == result.chunk.manifest.totals.chunks > 0
    assert result.embed.counters["chunks_embedded"] == result.chunk.manifest.totals.chunks
    assert [e[:3] for e in recorder.events] == [
        ("start", "chunk", 2), ("done", "chunk", "Manifest"),
        ("start", "embed", 2), ("done", "embed", "EmbedManifest"),
        ("start", "index", 2), ("done", "index", "IndexManifest"),
    ]  # fmt: skip
    # progress is read from the stage's completion markers: they are where it looks
    for event in recorder.events:
        if event[0] == "start":
            assert len(list(Path(event[3]).glob("*.json"))) == event[2]


def test_resume_after_an_interrupted_build_gives_the_same_files(
    tmp_path, corpus, builtin_dir, stage_root
):
    root = tmp_path / "root"
    chunk, embed, _ = configs(corpus, root, builtin_dir)
    # interrupted in the embed stage: the chunk stage finished, one embed file finished
    run_chunk(chunk)
    run_embed(embed)
    (root / "embeddings" / "manifest.json").unlink()
    (root / "embeddings" / "_completions" / "000001.json").unlink()
    (root / "embeddings" / "part-000001.parquet").write_bytes(b"half a file")
    with pytest.raises(Exception, match="--resume"):
        run_build(*configs(corpus, root, builtin_dir))
    result = run_build(*configs(corpus, root, builtin_dir, resume=True))
    assert result.chunk.counters["files_skipped"] == 2
    assert result.embed.counters["files_skipped"] == 1
    assert tree(root) == tree(stage_root)
    # a finished build resumes to itself, skipping everything
    again = run_build(*configs(corpus, root, builtin_dir, resume=True))
    assert again.index.counters.get("shards_skipped") == 2
    assert tree(root) == tree(stage_root)


def test_overwrite_rebuilds_and_one_root_is_required(tmp_path, corpus, builtin_dir, stage_root):
    root = tmp_path / "root"
    shutil.copytree(stage_root, root)
    run_build(*configs(corpus, root, builtin_dir, overwrite=True))
    assert tree(root) == tree(stage_root)
    chunk, embed, _ = configs(corpus, root, builtin_dir)
    other = IndexConfig(root=str(tmp_path / "elsewhere"))
    with pytest.raises(ConfigError, match="one root"):
        run_build(chunk, embed, other)
