"""The tda command line: help and version, Beam option pass-through, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

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
    assert sorted(_commands(main)) == [("chunk",), ("tokenizer",), ("tokenizer", "train")]


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


def test_chunk_command_options_do_not_shadow_beam():
    from tda.jobs.cli import chunk

    ctx = click.Context(chunk)
    own = {opt for p in chunk.get_params(ctx) for opt in (*p.opts, *p.secondary_opts)}
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
        (["{corpus}", "--chunk-size", "0"], "--chunk-size must be at least 1"),
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
