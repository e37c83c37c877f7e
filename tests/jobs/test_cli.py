"""The tda command line: help and version, Beam option pass-through, one-line errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import click
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from tda import __version__
from tda.jobs.beam_args import beam_option_actions, split_beam_args
from tda.jobs.cli import main


def _commands(group: click.Group, prefix=()):
    for name, cmd in group.commands.items():
        yield (*prefix, name)
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*prefix, name))


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


@pytest.mark.parametrize("path", [(), *_commands(main)])
def test_every_command_has_help(path):
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: " in result.output


def test_only_working_commands_exist():
    assert sorted(_commands(main)) == [
        ("add",),
        ("attribute",),
        ("build",),
        ("check",),
        ("chunk",),
        ("embed",),
        ("eval",),
        ("index",),
        ("index", "build"),
        ("index", "info"),
        ("index", "merge"),
        ("index", "retrain"),
        ("index", "verify"),
        ("model",),
        ("model", "info"),
        ("model", "train"),
        ("prune",),
        ("prune", "apply"),
        ("prune", "list"),
        ("scan",),
        ("search",),
        ("serve",),
        ("takedown",),
        ("tokenizer",),
        ("tokenizer", "train"),
        ("verify",),
    ]


def test_split_beam_args_keeps_values_and_order():
    own = {"--out", "--tokenizer", "--format", "--resume", "--source"}
    args = [
        "data/",
        "--runner",
        "DirectRunner",
        "--out",
        "ROOT",
        "--direct_num_workers=2",
        "--save_main_session",
        "more/*.jsonl",
        "--direct_running_mode",
        "multi_processing",
        "--experiments",
        "use_runner_v2",
        "--resume",
    ]
    beam, rest = split_beam_args(args, own)
    assert beam == [
        "--runner",
        "DirectRunner",
        "--direct_num_workers=2",
        "--save_main_session",
        "--direct_running_mode",
        "multi_processing",
        "--experiments",
        "use_runner_v2",
    ]
    assert rest == ["data/", "--out", "ROOT", "more/*.jsonl", "--resume"]


def test_beam_knows_the_runner_options_we_document():
    actions = beam_option_actions()
    for option in (
        "--runner",
        "--project",
        "--region",
        "--temp_location",
        "--job_endpoint",
        "--direct_num_workers",
        "--direct_running_mode",
        "--setup_file",
        "--sdk_container_image",
        "--dataflow_service_options",
        "--flink_master",
        "--spark_master_url",
    ):
        assert actions[option] is True, option
    assert actions["--save_main_session"] is False


@pytest.mark.parametrize("path", [("chunk",), ("embed",), ("index", "build")])
def test_stage_command_options_do_not_shadow_beam(path):
    command = main.commands[path[0]]
    if len(path) > 1:
        command = command.commands[path[1]]
    ctx = click.Context(command)
    own = {opt for p in command.get_params(ctx) for opt in (*p.opts, *p.secondary_opts)}
    assert not own & set(beam_option_actions()), "a tda option hides a Beam option"


def test_chunk_cli_with_beam_options(mixed_corpus, tmp_path, tokenizer_dir):
    root = tmp_path / "root"
    args = [
        "chunk",
        str(mixed_corpus.root),
        "--out",
        str(root),
        "--tokenizer",
        tokenizer_dir,
        "--max-doc-bytes",
        f"{mixed_corpus.max_doc_bytes}",
        "--runner",
        "DirectRunner",
        "--direct_num_workers",
        "1",
        "--json",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["totals"]["records"] == mixed_corpus.n_records
    assert summary["counters"]["chunks_written"] == summary["totals"]["chunks"]

    # Human output: a table with the reconciliation line.
    result = CliRunner().invoke(
        main, [*args[:-1], "--overwrite", "--chunk-size", "32", "--no-text"]
    )
    assert result.exit_code == 0, result.output
    assert "records = documents + dead letters" in result.output and "ok" in result.output
    table = pq.read_table(root / "chunks" / "part-000000.parquet")
    assert max(table.column("n_tokens").to_pylist()) == 32
    assert table.column("text").null_count == table.num_rows


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["/definitely/not/here.jsonl"], "input not found: /definitely/not/here.jsonl"),
        (["{corpus}/*.nothing"], "no files match"),
        (["{corpus}", "--chunk-size", "0"], "--chunk-size must be in 1..1048576, got 0"),
        (["{corpus}", "--stride", "100"], "--stride must be between 1 and --chunk-size"),
        (["{corpus}", "--source", "a", "--source-field", "b"], "not both"),
        (["{corpus}", "--resume", "--overwrite"], "exclude each other"),
        (["{corpus}", "--max-doc-bytes", "lots"], "not a size"),
    ],
)
def test_chunk_errors_are_one_line(extra, message, mixed_corpus, tmp_path, tokenizer_dir):
    args = [a.format(corpus=mixed_corpus.root) for a in extra]
    result = CliRunner().invoke(
        main, ["chunk", *args, "--out", str(tmp_path / "r"), "--tokenizer", tokenizer_dir]
    )
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(error_lines) == 1
    assert not (tmp_path / "r" / "chunks" / "manifest.json").exists()


def test_bad_tokenizer_is_one_line(mixed_corpus, tmp_path):
    result = CliRunner().invoke(
        main,
        [
            "chunk",
            str(mixed_corpus.root),
            "--out",
            str(tmp_path / "r"),
            "--tokenizer",
            str(tmp_path / "nope"),
        ],
    )
    assert result.exit_code == 1 and "tokenizer not found" in result.output


def test_tokenizer_train_command(mixed_corpus, tmp_path):
    out = tmp_path / "tok"
    result = CliRunner().invoke(
        main,
        [
            "tokenizer",
            "train",
            str(mixed_corpus.root),
            "--out",
            str(out),
            "--vocab-size",
            "600",
            "--max-doc-bytes",
            "40000",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (out / "tokenizer.json").exists()
    assert "vocab 600" in result.output and "unusable records skipped" in result.output


def test_console_script_runs_as_a_module():
    out = subprocess.run(
        [sys.executable, "-m", "tda.jobs.cli", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert __version__ in out.stdout


def test_model_train_chunk_embed_end_to_end(docs_jsonl, tmp_path):
    """The issue's "done when": tda model train + tda chunk --tokenizer <model dir> +
    tda embed, from the command line."""
    model, root = tmp_path / "model", tmp_path / "root"
    result = CliRunner().invoke(
        main,
        ["model", "train", str(docs_jsonl), "--out", str(model), "--steps", "10",
         "--d-model", "32", "--layers", "1", "--heads", "2", "--vocab-size", "500",
         "--max-seq", "128"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "AUROC" in result.output
    result = CliRunner().invoke(
        main, ["chunk", str(docs_jsonl), "--out", str(root), "--tokenizer", str(model), "--json"]
    )
    assert result.exit_code == 0, result.output
    n_chunks = json.loads(result.output)["totals"]["chunks"]
    args = ["embed", str(root), "--model", f"builtin:{model}", "--batch-tokens", "4096"]
    result = CliRunner().invoke(
        main, [*args, "--pooling", "max:known", "--json", "--runner", "DirectRunner"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["totals"]["chunks"] == summary["counters"]["chunks_embedded"] == n_chunks
    assert summary["pooling"] == "max:known" and summary["encoder"] == "builtin"
    assert summary["context"] == {"window": 64, "context": 0}  # each chunk alone
    assert 0 <= summary["padding_share"] < 0.5
    # human output, rerun over the same root
    result = CliRunner().invoke(main, [*args, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert "chunks embedded" in result.output and "padding share" in result.output
    result = CliRunner().invoke(main, ["model", "info", str(model), "--json"])
    info = json.loads(result.output)
    assert info["name"] == "builtin" and "violence" in info["harmful"]


def _one_error_line(result, message: str) -> None:
    """``result`` (a CliRunner result) failed with ``message`` as its one ``Error`` line."""
    assert result.exit_code != 0
    assert message in result.output, result.output
    assert "Traceback" not in result.output
    assert len([ln for ln in result.output.splitlines() if ln.startswith("Error")]) == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--pooling", "median"], "--pooling must be one of"),
        (["--pooling", "mean:everything"], "pooling features must be one of"),
        # numeric ranges fail earlier, in click's parsing: tests/jobs/test_cli_arguments.py
    ],
)
def test_embed_option_errors_fire_while_parsing(extra, message, tmp_path):
    """Settings EmbedConfig refuses: the parsed options fail to become a config, and the
    command fails with that one line before it reads a root or loads a model."""
    from tda.jobs.cli.build import embed, embed_config
    from tda.schemas import ConfigError

    root = str(tmp_path / "no-root")
    ctx = embed.make_context("embed", [root, "--model", "no-model", *extra])
    kw = dict(ctx.params)
    args = [kw.pop(k) for k in ("root", "model", "resume", "overwrite")]
    kw.pop("as_json")
    with pytest.raises(ConfigError, match=re.escape(message)):
        embed_config(*args, kw)
    _one_error_line(
        CliRunner().invoke(main, ["embed", root, "--model", "no-model", *extra]), message
    )
    assert not (tmp_path / "no-root").exists()


@pytest.fixture(scope="module")
def embedded_root(tmp_path_factory, docs_jsonl, builtin_dir) -> Path:
    """A root chunked and embedded once with the builtin model; the refused embed runs
    below leave it as it was."""
    from tda.schemas import EmbedConfig
    from tests.helpers import chunk_root, embed_root

    root = tmp_path_factory.mktemp("embedded") / "root"
    chunk_root(root, [docs_jsonl], builtin_dir)
    embed_root(EmbedConfig(root=str(root), model=builtin_dir))
    return root


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "already holds an embed run"),
        (["--window", "100000", "--overwrite"], "exceeds the model's context limit"),
        (["--device", "cuda", "--overwrite"], "sees no CUDA GPU"),
    ],
)
def test_embed_errors_are_one_line(extra, message, embedded_root, builtin_dir):
    """Errors that need the root's chunks or the model: one line, the earlier run kept."""
    import torch

    if "cuda" in extra and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    manifest = (embedded_root / "embeddings" / "manifest.json").read_bytes()
    result = CliRunner().invoke(main, ["embed", str(embedded_root), "--model", builtin_dir, *extra])
    _one_error_line(result, message)
    assert (embedded_root / "embeddings" / "manifest.json").read_bytes() == manifest


def test_embed_without_chunks_and_bad_model_are_one_line(tmp_path, builtin_dir):
    result = CliRunner().invoke(main, ["embed", str(tmp_path), "--model", builtin_dir])
    assert result.exit_code == 1 and "run `tda chunk`" in result.output
    result = CliRunner().invoke(main, ["model", "info", str(tmp_path / "none")])
    assert result.exit_code == 1 and "no config.json" in result.output


def test_index_build_search_verify_on_real_text(tmp_path, docs_jsonl, builtin_dir):
    """The issue's "done when": after chunk + embed + index build, --chunk-id N returns
    chunk N (or an identical-text twin) first, verify passes; one flipped byte makes
    verify fail and search refuse."""
    from tda.schemas import EmbedConfig, Pooling
    from tests.helpers import chunk_root, embed_root

    root = tmp_path / "root"
    chunk_root(root, [docs_jsonl], builtin_dir)
    # max:hidden: the 40-step test model's mean-pooled concept vectors are nearly collinear
    # (mean cosine 0.99999), so chunks are not told apart; the index is what is under test.
    embed_root(EmbedConfig(root=str(root), model=builtin_dir, pooling=Pooling.parse("max:hidden")))
    result = CliRunner().invoke(main, ["index", "build", str(root), "--shards", "1", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    chunks = pq.read_table(root / "chunks" / "part-000000.parquet").to_pylist()
    assert summary["vectors"] == len(chunks) and summary["factory"] == "IDMap2,Flat"
    texts = {c["chunk_id"]: c["text"] for c in chunks}
    for row in chunks[:: max(1, len(chunks) // 12)]:
        result = CliRunner().invoke(
            main, ["search", str(root), "--chunk-id", str(row["chunk_id"]), "-k", "3", "--json"]
        )
        assert result.exit_code == 0, result.output
        top = json.loads(result.output)["hits"][0]
        assert top["chunk_id"] == row["chunk_id"] or texts[top["chunk_id"]] == row["text"]
        assert top["score"] == pytest.approx(1.0, abs=2e-3)
    result = CliRunner().invoke(
        main, ["search", str(root), "--text", "the for statement and loops"]
    )
    assert result.exit_code == 0 and "score" in result.output
    result = CliRunner().invoke(main, ["index", "info", str(root)])
    assert result.exit_code == 0 and "IDMap2,Flat" in result.output
    result = CliRunner().invoke(main, ["index", "verify", str(root)])
    assert result.exit_code == 0 and "ok" in result.output
    result = CliRunner().invoke(main, ["index", "merge", str(root)])
    assert result.exit_code == 0 and "merged" in result.output, result.output
    args = ["search", str(root), "--chunk-id", str(chunks[5]["chunk_id"]), "--json"]
    merged = CliRunner().invoke(main, [*args, "--merged"])
    assert (
        json.loads(merged.output)["hits"]
        == json.loads(CliRunner().invoke(main, args).output)["hits"]
    )
    shard = root / "index" / "shards" / "shard-00000.faiss"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    result = CliRunner().invoke(main, ["index", "verify", str(root)])
    assert result.exit_code == 1 and "FAIL shards/shard-00000.faiss" in result.output
    result = CliRunner().invoke(
        main, ["search", str(root), "--chunk-id", str(chunks[0]["chunk_id"])]
    )
    assert result.exit_code == 1 and "does not match its sha256" in result.output
    result = CliRunner().invoke(main, ["search", str(root)])
    assert result.exit_code == 2 and "exactly one of --text or --chunk-id" in result.output


def test_attribute_cli_json_and_terminal(tmp_path, docs_jsonl, builtin_dir):
    """The issue's "done when": on an index built from real text, --json gives per output
    chunk training chunks with provenance and text, concepts with contributions, prompt
    scores and sources; without --json the same renders as tables."""
    from tda.pipeline.index import run_index
    from tda.schemas import EmbedConfig, IndexConfig, Pooling
    from tests.helpers import chunk_root, embed_root

    root = tmp_path / "root"
    chunk_root(root, [docs_jsonl], builtin_dir)
    embed_root(EmbedConfig(root=str(root), model=builtin_dir, pooling=Pooling.parse("max:hidden")))
    run_index(IndexConfig(root=str(root)))
    args = ["attribute", str(root), "--prompt", "The for statement", "-k", "4"]
    result = CliRunner().invoke(
        main, [*args, "--output", " iterates over the items of a sequence.", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["kind"] == "tda.attribution" and report["chunks"]
    chunk = report["chunks"][0]
    hit = chunk["hits"][0]
    assert {"score", "chunk_id", "source", "doc_id", "char_start", "char_end", "text"} <= set(hit)
    assert chunk["concepts"] and "contribution" in chunk["concepts"][0]
    assert chunk["prompt_tokens"] and abs(sum(chunk["sources"].values()) - 1) < 1e-5
    result = CliRunner().invoke(main, [*args, "--generate", "12", "--input-attribution", "ig",
                                       "--ig-steps", "8"])  # fmt: skip
    assert result.exit_code == 0, result.output
    for text in ("training chunks", "concepts", "prompt tokens", "sources", "chunk 0"):
        assert text in result.output
    bad = CliRunner().invoke(main, [*args])
    assert bad.exit_code != 0 and "exactly one of --output or --generate" in bad.output
    bad = CliRunner().invoke(main, [*args, "--output", "x", "--model", str(tmp_path / "none")])
    assert bad.exit_code == 1 and "Traceback" not in bad.output


def test_scan_prune_list_apply_cli(planted_root, planted_corpus, tmp_path):
    """The issue's "done when": from "this concept is harmful" to a pruned corpus, a
    pruned index and an audit record with the commands, the damage per source shown."""
    scan_dir = tmp_path / "scan"
    result = CliRunner().invoke(
        main, ["scan", str(planted_root), "--concept", "violence", "--out", str(scan_dir)]
    )
    assert result.exit_code == 0, result.output
    assert "fiction" in result.output and "share" in result.output
    assert (scan_dir / "prevalence.png").exists()
    listed = tmp_path / "prune.parquet"
    result = CliRunner().invoke(
        main, ["prune", "list", str(scan_dir), "--level", "document", "--min-share", "0.3",
               "--out", str(listed), "--csv"],
    )  # fmt: skip
    assert result.exit_code == 0 and "document entries" in result.output, result.output
    result = CliRunner().invoke(
        main, ["prune", "apply", str(planted_root), "--list", str(listed),
               "--corpus", str(planted_corpus), "--corpus-out", str(tmp_path / "pruned"),
               "--out", str(tmp_path / "new"), "--reason", "violent fiction"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "fiction:" in result.output and "audit.jsonl" in result.output
    result = CliRunner().invoke(main, ["index", "verify", str(tmp_path / "new")])
    assert result.exit_code == 0, result.output
    bad = CliRunner().invoke(
        main, ["scan", str(planted_root), "--concept", "nope", "--out", str(scan_dir)]
    )
    assert bad.exit_code == 1 and "not a known concept" in bad.output
    assert "Traceback" not in bad.output


def test_build_cli_with_a_runner_config(docs_jsonl, builtin_dir, tmp_path):
    """tda build = the three stages; --config takes a YAML of Beam options, and its errors
    (like every other user error) are one line."""
    root = tmp_path / "root"
    config = tmp_path / "direct.yaml"
    config.write_text("beam_options:\n  runner: DirectRunner\n  direct_num_workers: 1\n")
    args = ["build", str(docs_jsonl), "--model", builtin_dir, "--out", str(root)]
    result = CliRunner().invoke(
        main, [*args, "--shards", "2", "--batch-tokens", "2048", "--config", str(config), "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    chunks = summary["chunk"]["chunks"]
    assert chunks > 0 and summary["embed"]["chunks"] == summary["index"]["vectors"] == chunks
    # one input file, one embeddings part: at most one shard (shards never split a part)
    assert summary["index"]["shards"] == 1 and set(summary["seconds"]) == {
        "chunk",
        "embed",
        "index",
    }
    assert CliRunner().invoke(main, ["index", "verify", str(root)]).exit_code == 0
    # a second build refuses to mix runs; --resume replays it from its markers
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "pass --resume" in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = CliRunner().invoke(
        main, [*args, "--resume", "--shards", "2", "--batch-tokens", "2048"]
    )
    assert result.exit_code == 0, result.output
    assert "tda build" in result.output and "vectors in 1 shard (" in result.output


def test_build_errors_before_any_work_are_one_line(docs_jsonl, builtin_dir, tmp_path):
    """A bad --config or a model without a tokenizer fails before any stage runs (no root
    is built): one line, exit status 1."""
    root = tmp_path / "root"
    args = ["build", str(docs_jsonl), "--model", builtin_dir, "--out", str(root)]
    for bad, message in (
        (["--config", "nonesuch"], "not a bundled config"),
        (["--config", "dataflow", "--overwrite"], "needs $TDA_GCP_PROJECT"),
        (["--model", str(tmp_path), "--overwrite"], "no tokenizer.json"),
    ):
        result = CliRunner().invoke(main, [*args, *bad], env={"TDA_GCP_PROJECT": None})
        assert result.exit_code == 1 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
    assert not root.exists()


# --------------------------------------------------------------------------------------
# One UserError base, mapped to one line in one place (TdaGroup.invoke)


def test_every_user_facing_error_is_a_user_error():
    from tda.attribution.corpus.readers import InputError
    from tda.attribution.corpus.tokenizer import TokenizerError
    from tda.attribution.curation.prune import PruneError
    from tda.attribution.curation.scan import ScanError
    from tda.attribution.encoders import EncoderError
    from tda.attribution.encoders.builtin.concepts import ConceptSetError
    from tda.attribution.index.build import IndexRunError
    from tda.attribution.index.reader import IndexReadError
    from tda.attribution.io.parts import StageError
    from tda.attribution.stages.chunk import ChunkRunError
    from tda.attribution.stages.embed import EmbedRunError
    from tda.schemas import ChunkIdOverflowError, ConfigError, ManifestError, ReportError
    from tda.schemas.errors import UserError

    for error in (
        ConfigError, ManifestError, ChunkIdOverflowError, ReportError, StageError,
        ChunkRunError, EmbedRunError, IndexRunError, IndexReadError, ScanError, PruneError,
        EncoderError, TokenizerError, InputError, ConceptSetError,
    ):  # fmt: skip
        assert issubclass(error, UserError), error
        assert issubclass(error, ValueError), error  # `except ValueError` still catches it


def _raiser(error: Exception):
    def fail(*args, **kwargs):
        raise error

    return fail


# (command line, where the command calls out): a top-level command, a grouped one, and a
# raise from inside a reporter, after the work is done.
_CALLS = [
    (["model", "info", "SPEC"], "tda.attribution.encoders.load_encoder"),
    (["index", "info", "ROOT"], "tda.attribution.index.reader.read_index_manifest"),
    (["index", "verify", "ROOT"], "tda.attribution.index.reader.verify_index"),
    (["prune", "list", "SCAN", "--out", "x.parquet"], "tda.jobs.render.report_prune_list"),
]


@pytest.mark.parametrize(("argv", "target"), _CALLS)
def test_a_user_error_anywhere_in_a_command_is_one_line_exit_1(argv, target, monkeypatch):
    from tda.schemas.errors import UserError

    class Planted(UserError):
        pass

    if target.startswith("tda.jobs.render"):
        monkeypatch.setattr("tda.attribution.curation.prune.make_prune_list", lambda *a: None)
    monkeypatch.setattr(target, _raiser(Planted("planted: fix the thing")))
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 1
    assert result.output == "Error: planted: fix the thing\n"
    assert isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("error", [RuntimeError("a bug"), ValueError("not a UserError")])
def test_a_non_user_error_is_not_swallowed(error, monkeypatch):
    """Anything that is not a UserError (a plain ValueError included) is a bug: it keeps
    its type and traceback instead of becoming a one-line message."""
    monkeypatch.setattr("tda.attribution.index.reader.read_index_manifest", _raiser(error))
    result = CliRunner().invoke(main, ["index", "info", "ROOT"])
    assert result.exit_code == 1
    assert result.exception is error
    assert "Error:" not in result.output
    from tda.jobs.cli import run

    with pytest.raises(type(error), match=str(error)):
        run(["index", "info", "ROOT"])


def test_user_error_goes_to_stderr_as_one_line(tmp_path):
    """The real entry point: the message on stderr, nothing on stdout, exit status 1; and
    the same through run(), the entry point for tests."""
    from tda.jobs.cli import run

    out = subprocess.run(
        [sys.executable, "-m", "tda.jobs.cli", "index", "info", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr == (
        f"Error: {tmp_path}/index/manifest.json not found: run `tda index build` into this "
        "root first (or let it finish: the manifest is written last)\n"
    )
    assert run(["index", "info", str(tmp_path)]) == 1
