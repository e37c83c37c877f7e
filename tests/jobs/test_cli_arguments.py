"""Bad arguments are one line, the same in the CLI and the API (issue 20).

Every numeric option is checked where click parses it, against the one table of limits
(schemas/config.py STAGE_RANGES, schemas/request.py REQUEST_RANGES); tda serve's request
body carries the same bounds. With --json an error is a JSON object on stdout. A resume
mismatch names each setting with both values; tda build refuses a bad model before its
first stage.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from tda.jobs.cli import main
from tda.jobs.cli.options import RangedFloat, RangedInt, _SizeType
from tda.schemas.config import MAX_NPROBE, STAGE_RANGES, ConfigError
from tda.schemas.report import CHECK_RANGES
from tda.schemas.request import REQUEST_RANGES, AttributionRequest


def _invoke(args: list[str]):
    return CliRunner().invoke(main, [str(a) for a in args])


def _one_line(result, *needles: str) -> str:
    """``result`` failed with exactly one line of output (no usage, no traceback) holding
    every one of ``needles``; returns that line."""
    assert result.exit_code != 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------------------------------
# The bad arguments the issue measured, each by name. Parsing fails before ROOT is read,
# so ROOT need not exist.


def test_search_nprobe_zero_is_one_line():
    result = _invoke(["search", "no-root", "--text", "hi", "--nprobe", "0"])
    _one_line(result, f"Error: --nprobe must be in 1..{MAX_NPROBE}, got 0")
    assert result.exit_code == 2


def test_search_nprobe_negative_is_one_line():
    _one_line(
        _invoke(["search", "no-root", "--text", "hi", "--nprobe", "-1"]),
        "--nprobe must be in 1..1048576, got -1",
    )


def test_attribute_temperature_nan_is_one_line():
    _one_line(
        _invoke(
            ["attribute", "no-root", "--prompt", "hi", "--generate", "4", "--temperature", "nan"]
        ),
        "--temperature must be a finite number in [0, 10], got 'nan'",
    )


def test_attribute_temperature_infinite_is_one_line():
    _one_line(
        _invoke(
            ["attribute", "no-root", "--prompt", "hi", "--generate", "4", "--temperature", "inf"]
        ),
        "--temperature must be a finite number in [0, 10]",
    )


def test_attribute_chunk_size_zero_is_refused_not_the_index_default():
    _one_line(
        _invoke(["attribute", "no-root", "--prompt", "hi", "--output", "x", "--chunk-size", "0"]),
        "--chunk-size must be in 1..4096, got 0",
    )


def test_chunk_stage_chunk_size_zero_is_one_line(tmp_path):
    _one_line(
        _invoke(
            ["chunk", tmp_path, "--out", tmp_path / "r", "--tokenizer", "t", "--chunk-size", "0"]
        ),
        "--chunk-size must be in 1..1048576, got 0",
    )
    assert not (tmp_path / "r").exists()


def test_attribute_generate_over_the_limit_is_one_line():
    _one_line(
        _invoke(["attribute", "no-root", "--prompt", "hi", "--generate", "300"]),
        "--generate must be in 1..256, got 300",
    )


def test_generate_beyond_the_model_context_is_refused_before_generating(builtin_dir):
    """The builtin test model's context is 256 tokens: 257 is refused before the model
    writes a token (its generator would fail this test if it ran)."""
    from tda.attribution.encoders import load_encoder
    from tda.attribution.sequence import generate_tokens

    encoder = load_encoder(builtin_dir, device="cpu")
    window = encoder.info.max_window

    def never(*args, **kwargs):
        raise AssertionError("generated before checking the context")

    encoder.generate = never
    with pytest.raises(ConfigError, match=f"--generate {window + 1} is more than the model's "
                       f"context of {window} tokens; ask for at most {window}"):  # fmt: skip
        generate_tokens(encoder, [1, 2, 3], window + 1)


def test_model_with_unknown_scheme_names_it():
    line = _one_line(
        _invoke(["model", "info", "foo:bar"]),
        "unknown model scheme 'foo'",
        "builtin:, steerling:",
    )
    assert "config.json" not in line


def test_build_with_unknown_model_scheme_names_it(tmp_path):
    _one_line(
        _invoke(["build", tmp_path, "--model", "foo:bar", "--out", tmp_path / "r"]),
        "unknown model scheme 'foo'",
    )
    assert not (tmp_path / "r").exists()


def test_search_k_over_the_api_cap_is_one_line():
    _one_line(
        _invoke(["search", "no-root", "--text", "hi", "-k", "100000"]),
        "-k must be in 1..100, got 100000",
    )


def test_not_a_number_names_the_option_and_range():
    _one_line(
        _invoke(["search", "no-root", "--text", "hi", "-k", "ten"]),
        "-k must be an integer in 1..100, got 'ten'",
    )


def test_usage_errors_are_one_line_too():
    _one_line(_invoke(["search", "no-root"]), "give exactly one of --text or --chunk-id")
    _one_line(_invoke(["attribute", "no-root"]), "Missing option '--prompt'")


# ---------------------------------------------------------------------------------------
# --json: errors are {"error", "kind"} on stdout, exit status non-zero.


def test_json_usage_error_is_json_on_stdout():
    result = _invoke(["search", "no-root", "--text", "hi", "--nprobe", "0", "--json"])
    assert result.exit_code == 2
    assert json.loads(result.stdout) == {
        "error": "--nprobe must be in 1..1048576, got 0",
        "kind": "UsageError",
    }
    assert result.stderr == ""


def test_json_user_error_is_json_with_its_kind(tmp_path):
    result = _invoke(["model", "info", "foo:bar", "--json"])
    assert result.exit_code == 1
    body = json.loads(result.stdout)
    assert body["kind"] == "EncoderError" and "unknown model scheme 'foo'" in body["error"]
    result = _invoke(["search", tmp_path, "--text", "hi", "--json"])  # not a root
    assert result.exit_code == 1
    body = json.loads(result.stdout)
    assert set(body) == {"error", "kind"} and body["kind"] == "IndexReadError"
    assert str(tmp_path) in body["error"]


def test_without_json_errors_go_to_stderr():
    result = _invoke(["search", "no-root", "--text", "hi", "-k", "0"])
    assert result.stdout == "" and result.stderr.startswith("Error: -k must be in 1..100")


# ---------------------------------------------------------------------------------------
# One table of limits: every numeric option has a range, and the CLI, tda serve's request
# body and the request itself agree on them.


def _commands(group: click.Group, prefix=()):
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*prefix, name))
        else:
            yield (*prefix, name), cmd


def _numeric_options():
    """(command path, option) for every option whose value is a number."""
    numeric = (click.types._NumberParamTypeBase, _SizeType)
    for path, cmd in _commands(main):
        for param in cmd.params:
            is_number = isinstance(param, click.Option) and isinstance(param.type, numeric)
            if is_number and not param.count:  # not -v / -vv
                yield path, param


def _option(path: tuple[str, ...], flag: str) -> click.Option:
    return next(p for q, p in _numeric_options() if q == path and flag in p.opts)


def test_every_numeric_option_has_a_range_from_the_table():
    options = list(_numeric_options())
    assert len(options) >= 45  # every stage, query, curation and model option
    for path, param in options:
        assert isinstance(param.type, RangedInt | RangedFloat | _SizeType), (path, param.opts)
        rng = param.type.range
        assert rng is not None, (path, param.opts)
        flag = max(param.opts, key=len)
        field = flag.lstrip("-").replace("-", "_")
        if path in (("attribute",), ("search",)) and field in REQUEST_RANGES:
            assert rng == REQUEST_RANGES[field], (path, flag)
        elif path == ("check",):  # tda check: the check's own table (schemas/report.py)
            assert rng == CHECK_RANGES[field], (path, flag)
        else:
            assert rng == STAGE_RANGES[flag], (path, flag)
        # the help states the range
        help_text = _invoke([*path, "--help"]).output
        assert rng.describe() in " ".join(help_text.split()), (path, flag)


@pytest.mark.parametrize("field", sorted(REQUEST_RANGES))
def test_cli_and_api_limits_agree(field):
    """For each request field: the attribute option's range, tda serve's request body
    (jobs/serve.py request_model) and REQUEST_RANGES have the same bounds, and both front
    ends accept the bounds and refuse one step beyond each."""
    from pydantic import ValidationError

    from tda.jobs.serve import request_model

    rng = REQUEST_RANGES[field]
    param = _option(("attribute",), "--" + field.replace("_", "-") if field != "k" else "-k")
    assert (param.type.min, param.type.max) == (rng.lo, rng.hi)
    schema = request_model().model_json_schema()["properties"][field]
    bounds = next((s for s in schema.get("anyOf", [schema]) if "maximum" in s), schema)
    assert (bounds["minimum"], bounds["maximum"]) == (rng.lo, rng.hi)

    body = request_model()
    base = {"prompt": "p", "generate": 1} if field == "generate" else {"prompt": "p", "output": "o"}
    ctx = click.Context(main.commands["attribute"])
    step = 1 if rng.kind is int else 0.5
    for value, ok in ((rng.lo - step, False), (rng.lo, True), (rng.hi, True),
                      (rng.hi + step, False)):  # fmt: skip
        try:
            param.type.convert(str(value), param, ctx)
            cli_ok = True
        except click.BadParameter as exc:
            cli_ok = False
            assert exc.format_message().startswith(f"{max(param.opts, key=len)} must be")
        try:
            body.model_validate({**base, field: value})
            api_ok = True
        except ValidationError:
            api_ok = False
        assert cli_ok is api_ok is ok, (field, value)
    # NaN and infinity: refused by both (JSON readers accept the literals NaN, Infinity)
    if rng.kind is float:
        for value in (math.nan, math.inf):
            with pytest.raises(click.BadParameter):
                param.type.convert(str(value), param, ctx)
            with pytest.raises(ValidationError):
                body.model_validate({**base, field: value})


@pytest.mark.parametrize("flag", ["-k", "--nprobe"])
def test_search_takes_the_same_limits_as_attribute(flag):
    assert _option(("search",), flag).type.range == _option(("attribute",), flag).type.range


def test_the_request_refuses_below_the_ranges_for_any_caller():
    """AttributionRequest (the library, not just the front ends) checks the lower bounds
    of the same table; chunk_size 0 keeps its library meaning (the index's)."""
    for field, rng in REQUEST_RANGES.items():
        if field == "chunk_size":
            continue
        base = {"generate": 1} if field in ("generate", "temperature", "seed") else {"output": "o"}
        below = rng.lo - (1 if rng.kind is int else 0.5)
        with pytest.raises(ConfigError, match=f"must be at least {rng.lo}|must be a finite"):
            AttributionRequest("p", **{**base, field: below})
    with pytest.raises(ConfigError, match="--temperature must be a finite number >= 0, got nan"):
        AttributionRequest("p", generate=2, temperature=math.nan)


# Every stage option's bounds, through the real command: one line naming option and range.
STAGE_CASES = [
    (["chunk", "c", "--out", "r", "--tokenizer", "t"], "--stride", "0"),
    (["chunk", "c", "--out", "r", "--tokenizer", "t"], "--dataset-id", "256"),
    (["chunk", "c", "--out", "r", "--tokenizer", "t"], "--max-doc-bytes", "2GiB"),
    (["embed", "r", "--model", "m"], "--window", "0"),
    (["embed", "r", "--model", "m"], "--context", "-1"),
    (["embed", "r", "--model", "m"], "--batch-tokens", "0"),
    (["embed", "r", "--model", "m"], "--top-k-concepts", "2000"),
    (["index", "build", "r"], "--shards", "0"),
    (["index", "build", "r"], "--shard-size", "0"),
    (["index", "build", "r"], "--memory-budget", "0"),
    (["index", "build", "r"], "--train-sample", "0"),
    (["index", "build", "r"], "--nprobe", "0"),
    (["index", "build", "r"], "--threads", "0"),
    (["model", "train", "c", "--out", "m"], "--steps", "0"),
    (["model", "train", "c", "--out", "m"], "--lr", "0"),
    (["model", "train", "c", "--out", "m"], "--lr", "nan"),
    (["model", "train", "c", "--out", "m"], "--holdout", "0.5"),
    (["model", "train", "c", "--out", "m"], "--max-seq", "4"),
    (["model", "train", "c", "--out", "m"], "--seed", "-1"),
    (["tokenizer", "train", "c", "--out", "t"], "--vocab-size", "100"),
    (["tokenizer", "train", "c", "--out", "t"], "--max-docs", "0"),
    (["scan", "r", "--out", "s", "--concept", "x"], "--min-weight", "1.5"),
    (["scan", "r", "--out", "s", "--like", "f"], "--top", "0"),
    (["scan", "r", "--out", "s", "--like", "f"], "--min-score", "nan"),
    (["prune", "list", "s", "--out", "p"], "--min-share", "-0.1"),
    (["serve", "r"], "--port", "70000"),
    (["serve", "r"], "--max-request-bytes", "512"),
    (["search", "r"], "--chunk-id", "-5"),
]


@pytest.mark.parametrize(("command", "flag", "value"), STAGE_CASES)
def test_stage_option_out_of_range_is_one_line(command, flag, value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written anywhere
    rng = STAGE_RANGES[flag]
    _one_line(_invoke([*command, flag, value]), f"Error: {flag} must be ", rng.describe())
    assert list(tmp_path.iterdir()) == []


def test_settings_check_the_same_upper_bounds_as_the_cli():
    """The stage settings refuse what the CLI refuses (library callers included)."""
    from tda.schemas import ChunkingPolicy, EmbedConfig, IndexConfig, ReadOptions

    with pytest.raises(ConfigError, match=r"--nprobe must be in 1\.\.1048576, got 1048577"):
        IndexConfig(root="r", nprobe=MAX_NPROBE + 1)
    with pytest.raises(ConfigError, match=r"--chunk-size must be in 1\.\.1048576"):
        ChunkingPolicy(chunk_size=2**20 + 1)
    with pytest.raises(ConfigError, match=r"--max-doc-bytes must be in 1\.\.1073741824"):
        ReadOptions(max_doc_bytes=2**31)
    with pytest.raises(ConfigError, match=r"--batch-tokens must be in 1\.\.16777216"):
        EmbedConfig(root="r", model="m", batch_tokens=2**25)


# ---------------------------------------------------------------------------------------
# --resume names each differing setting; tda build checks its model first.


def test_resume_mismatch_names_each_setting_with_both_values():
    from tda.attribution.io.parts import StageError, check_resumable

    old = {"settings": {"chunking": {"chunk_size": 64, "stride": None}, "dataset_id": 0},
           "inputs": [{"url": "a.jsonl", "size_bytes": 10}], "tda_version": "1"}  # fmt: skip
    new = {"settings": {"chunking": {"chunk_size": 128, "stride": None}, "dataset_id": 0},
           "inputs": [{"url": "a.jsonl", "size_bytes": 12}], "tda_version": "1"}  # fmt: skip
    with pytest.raises(StageError) as info:
        check_resumable(new, old, "ROOT/chunks", StageError)
    message = str(info.value)
    assert "\n" not in message
    assert (
        "these differ: inputs[0].size_bytes: 10 (in the existing run) vs 12 (now); "
        "settings.chunking.chunk_size: 64 (in the existing run) vs 128 (now) "
        "(use --overwrite to start over)"
    ) in message
    # keys on one side only, lists of another length, long values cut
    with pytest.raises(StageError) as info:
        check_resumable({"a": [1, 2, 3], "b": "x" * 500}, {"a": [1], "c": None}, "W", StageError)
    message = str(info.value)
    assert "a: 1 items (in the existing run) vs 3 items (now)" in message
    assert "c: null (in the existing run) vs (absent) (now)" in message
    assert 'b: (absent) (in the existing run) vs "xxx' in message and "..." in message
    assert len(message) < 500
    check_resumable(old, json.loads(json.dumps(old)), "W", StageError)  # equal: no error


def test_resume_with_another_chunk_size_names_it(tmp_path, docs_jsonl, tokenizer_dir):
    from tests.helpers import chunk_root

    root = tmp_path / "root"
    chunk_root(root, [docs_jsonl], tokenizer_dir)
    manifest = (root / "chunks" / "manifest.json").read_bytes()
    result = _invoke(["chunk", docs_jsonl, "--out", root, "--tokenizer", tokenizer_dir,
                      "--resume", "--chunk-size", "32"])  # fmt: skip
    _one_line(
        result,
        "settings.chunking.chunk_size: 64 (in the existing run) vs 32 (now)",
        "use --overwrite",
    )
    assert "dataset_id" not in result.output  # only what differs
    assert (root / "chunks" / "manifest.json").read_bytes() == manifest


@pytest.fixture
def tampered_model(tmp_path, builtin_dir) -> Path:
    """A copy of the builtin test model with one byte of its weights flipped."""
    model = tmp_path / "model"
    shutil.copytree(builtin_dir, model)
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF  # a weight, not the header: only the fingerprint can tell
    weights.write_bytes(bytes(data))
    return model


def test_build_with_a_tampered_model_refuses_before_chunking(tmp_path, docs_jsonl, tampered_model):
    root = tmp_path / "root"
    result = _invoke(["build", docs_jsonl, "--model", tampered_model, "--out", root])
    _one_line(result, "model.safetensors does not match the fingerprint in config.json")
    assert not (root / "chunks").exists()


def test_build_with_another_tokenizer_refuses_before_chunking(
    tmp_path, docs_jsonl, builtin_dir, tokenizer_dir
):
    root = tmp_path / "root"
    result = _invoke(["build", docs_jsonl, "--model", builtin_dir, "--tokenizer", tokenizer_dir,
                      "--out", root])  # fmt: skip
    _one_line(result, f"--tokenizer {tokenizer_dir}", "is not the model's tokenizer")
    assert not (root / "chunks").exists()


def test_docs_list_every_limit_as_the_commands_have_them():
    from tda.jobs.cli.options import limits_table

    table = limits_table(main)
    assert len(table.splitlines()) == 2 + len(list(_numeric_options()))
    docs = Path(__file__).resolve().parents[2] / "docs" / "limits.md"
    assert table in docs.read_text(), "regenerate docs/limits.md (command inside it)"


def test_model_train_takes_a_tokenizer_or_a_vocabulary_size_not_both(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["model", "train", "c", "--out", "m", "--tokenizer", "t", "--vocab-size", "600"]
    _one_line(_invoke(args), "give --vocab-size or --tokenizer, not both")
    assert list(tmp_path.iterdir()) == []
