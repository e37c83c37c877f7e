"""Settings validation, manifests, row schemas and human sizes."""

from __future__ import annotations

import dataclasses
import json

import pytest

from tda.attribution.io.sizes import format_size, parse_size
from tda.schemas import (
    CHUNK_SCHEMA,
    DEADLETTER_SCHEMA,
    DEFAULT_CODEC,
    Chunk,
    ChunkConfig,
    ChunkIdCodec,
    ChunkingPolicy,
    ConfigError,
    DeadLetter,
    DeadLetterReason,
    FileCounts,
    InputFile,
    Manifest,
    ManifestError,
    ReadOptions,
    TokenizerInfo,
    part_name,
)
from tda.schemas.manifest import MANIFEST_SCHEMA_VERSION

# ---------------------------------------------------------------------------------------
# ReadOptions


def test_read_options_defaults_are_valid():
    opts = ReadOptions()
    assert (opts.format, opts.text_field, opts.id_field, opts.text_unit) == (
        "auto",
        "text",
        "id",
        "file",
    )
    assert opts.max_doc_bytes == 16 * 1024 * 1024
    for fmt in ("auto", "jsonl", "parquet", "text"):
        assert ReadOptions(format=fmt).format == fmt
    assert ReadOptions(text_unit="line").text_unit == "line"
    assert ReadOptions(source="wiki").source == "wiki"
    assert ReadOptions(source_field="meta.src").source_field == "meta.src"
    assert ReadOptions(max_doc_bytes=1).max_doc_bytes == 1


def test_read_options_bad_format():
    with pytest.raises(ConfigError, match=r"--format must be one of auto, jsonl, parquet, text"):
        ReadOptions(format="xml")


def test_read_options_bad_text_unit():
    with pytest.raises(ConfigError, match=r"--text-unit must be one of file, line, got 'page'"):
        ReadOptions(text_unit="page")


def test_read_options_empty_text_field():
    with pytest.raises(ConfigError, match="--text-field must not be empty"):
        ReadOptions(text_field="")


def test_read_options_empty_id_field():
    with pytest.raises(ConfigError, match="--id-field must not be empty"):
        ReadOptions(id_field="")


def test_read_options_source_and_source_field_exclusive():
    with pytest.raises(ConfigError, match="give --source or --source-field, not both"):
        ReadOptions(source="wiki", source_field="src")


@pytest.mark.parametrize("blank", ["", "   ", "\t\n"])
def test_read_options_blank_source(blank):
    with pytest.raises(ConfigError, match="--source must not be empty"):
        ReadOptions(source=blank)


def test_read_options_empty_source_field():
    with pytest.raises(ConfigError, match="--source-field must not be empty"):
        ReadOptions(source_field="")


@pytest.mark.parametrize("bad", [0, -1])
def test_read_options_max_doc_bytes(bad):
    with pytest.raises(ConfigError, match=f"--max-doc-bytes must be positive, got {bad}"):
        ReadOptions(max_doc_bytes=bad)


def test_config_error_is_value_error():
    assert issubclass(ConfigError, ValueError)


# ---------------------------------------------------------------------------------------
# ChunkingPolicy


@pytest.mark.parametrize("bad", [0, -5])
def test_chunking_chunk_size_at_least_one(bad):
    with pytest.raises(ConfigError, match=f"--chunk-size must be at least 1, got {bad}"):
        ChunkingPolicy(chunk_size=bad)


@pytest.mark.parametrize("bad", [0, -1])
def test_chunking_stride_at_least_one(bad):
    with pytest.raises(ConfigError, match=r"--stride must be between 1 and --chunk-size \(64\)"):
        ChunkingPolicy(chunk_size=64, stride=bad)


def test_chunking_stride_not_above_chunk_size():
    with pytest.raises(ConfigError, match=r"--stride .* got 65; a larger stride would drop"):
        ChunkingPolicy(chunk_size=64, stride=65)


def test_chunking_step():
    assert ChunkingPolicy().chunk_size == 64
    assert ChunkingPolicy().step == 64
    assert ChunkingPolicy(chunk_size=10).step == 10
    assert ChunkingPolicy(chunk_size=10, stride=3).step == 3
    assert ChunkingPolicy(chunk_size=10, stride=10).step == 10
    assert ChunkingPolicy(chunk_size=1, stride=1).step == 1
    assert ChunkingPolicy().store_text is True


# ---------------------------------------------------------------------------------------
# ChunkConfig


def _config(**kwargs) -> ChunkConfig:
    base = {"inputs": ("data/*.jsonl",), "out": "/tmp/root", "tokenizer": "tiktoken:gpt2"}
    return ChunkConfig(**(base | kwargs))


def test_chunk_config_valid_and_settings():
    cfg = _config(
        read=ReadOptions(source="wiki"),
        chunking=ChunkingPolicy(chunk_size=32, stride=16, store_text=False),
        dataset_id=7,
        codec=ChunkIdCodec(4, 20, 39),
    )
    assert cfg.settings() == {
        "read": dataclasses.asdict(ReadOptions(source="wiki")),
        "chunking": {"chunk_size": 32, "stride": 16, "store_text": False},
        "dataset_id": 7,
        "id_codec": {"dataset_bits": 4, "file_bits": 20, "ordinal_bits": 39},
    }
    assert _config().codec == DEFAULT_CODEC
    assert _config(resume=True).resume
    assert _config(overwrite=True).overwrite


def test_chunk_config_needs_inputs():
    with pytest.raises(ConfigError, match="give at least one INPUT"):
        _config(inputs=())


def test_chunk_config_needs_out():
    with pytest.raises(ConfigError, match="--out ROOT is required"):
        _config(out="")


def test_chunk_config_needs_tokenizer():
    with pytest.raises(ConfigError, match="--tokenizer SPEC is required"):
        _config(tokenizer="")


@pytest.mark.parametrize("bad", [-1, 256, 10_000])
def test_chunk_config_dataset_id_range_default_codec(bad):
    with pytest.raises(ConfigError, match=rf"--dataset-id must be in 0\.\.255, got {bad}"):
        _config(dataset_id=bad)


def test_chunk_config_dataset_id_range_follows_codec():
    codec = ChunkIdCodec(2, 29, 32)
    assert _config(dataset_id=3, codec=codec).dataset_id == 3
    assert _config(dataset_id=255).dataset_id == 255
    with pytest.raises(ConfigError, match=r"--dataset-id must be in 0\.\.3, got 4"):
        _config(dataset_id=4, codec=codec)


def test_chunk_config_resume_and_overwrite_exclusive():
    with pytest.raises(ConfigError, match="--resume and --overwrite exclude each other"):
        _config(resume=True, overwrite=True)


# ---------------------------------------------------------------------------------------
# Manifest


def _manifest(deadletter_order: tuple[str, ...] = ("malformed_json", "too_large")) -> Manifest:
    counts = {"malformed_json": 2, "too_large": 1}
    return Manifest(
        tda_version="0.1.0",
        id_codec=ChunkIdCodec(6, 22, 35),
        dataset_id=5,
        tokenizer=TokenizerInfo(
            spec="gs://bucket/tok/tokenizer.json",
            kind="huggingface",
            name="tok",
            fingerprint="sha256:" + "ab" * 32,
            vocab_size=1000,
        ),
        read=ReadOptions(format="jsonl", source_field="meta.src", max_doc_bytes=4096),
        chunking=ChunkingPolicy(chunk_size=32, stride=8, store_text=False),
        inputs=(
            InputFile(index=0, url="gs://bucket/a.jsonl", format="jsonl", size_bytes=123),
            InputFile(index=1, url="gs://bucket/Zürich.jsonl", format="jsonl", size_bytes=0),
        ),
        files=(
            FileCounts(
                file_index=0,
                records=13,
                documents=10,
                chunks=40,
                tokens=1200,
                deadletters={k: counts[k] for k in deadletter_order},
            ),
            FileCounts(file_index=1, records=1, documents=0, deadletters={"empty_document": 1}),
        ),
    )


def test_manifest_json_round_trip():
    manifest = _manifest()
    text = manifest.to_json()
    back = Manifest.from_json(text)
    assert back == manifest
    assert isinstance(back.inputs, tuple) and isinstance(back.files, tuple)
    assert back.id_codec == ChunkIdCodec(6, 22, 35)
    assert back.to_json() == text


def test_manifest_json_content():
    data = json.loads(_manifest().to_json())
    assert data["kind"] == "tda.chunks"
    assert data["schema_version"] == MANIFEST_SCHEMA_VERSION == 2
    assert data["id_codec"] == {"dataset_bits": 6, "file_bits": 22, "ordinal_bits": 35}
    assert data["chunking"] == {"chunk_size": 32, "stride": 8, "store_text": False}
    assert data["totals"] == {
        "file_index": None,
        "records": 14,
        "documents": 10,
        "chunks": 40,
        "tokens": 1200,
        "deadletters": {"malformed_json": 2, "empty_document": 1, "too_large": 1},
    }
    assert data["inputs"][1]["url"] == "gs://bucket/Zürich.jsonl"


def test_manifest_json_deterministic():
    a = _manifest(("malformed_json", "too_large"))
    b = _manifest(("too_large", "malformed_json"))  # same counts, other insertion order
    assert a.to_json() == a.to_json()
    assert a.to_json() == b.to_json()
    text = a.to_json()
    assert text.endswith("}\n")
    assert "Zürich" in text  # not \u-escaped
    # Keys are sorted at every level.
    assert list(json.loads(text)) == sorted(json.loads(text))


def _manifest_dict() -> dict:
    return json.loads(_manifest().to_json())


@pytest.mark.parametrize("version", [0, 3, "1", None])
def test_manifest_refuses_other_schema_version(version):
    data = _manifest_dict()
    data["schema_version"] = version
    with pytest.raises(ManifestError, match=f"manifest schema version {version} is not supported"):
        Manifest.from_json(json.dumps(data))


def test_manifest_refuses_missing_schema_version():
    data = _manifest_dict()
    del data["schema_version"]
    with pytest.raises(ManifestError, match="schema version None"):
        Manifest.from_json(json.dumps(data))


@pytest.mark.parametrize("kind", ["tda.embeddings", "", None])
def test_manifest_refuses_other_kind(kind):
    data = _manifest_dict()
    data["kind"] = kind
    with pytest.raises(ManifestError, match="not a tda chunk manifest"):
        Manifest.from_json(json.dumps(data))
    del data["kind"]
    with pytest.raises(ManifestError, match="not a tda chunk manifest"):
        Manifest.from_json(json.dumps(data))


@pytest.mark.parametrize("text", ["", "{", "not json", '{"kind": "tda.chunks",}'])
def test_manifest_refuses_non_json(text):
    with pytest.raises(ManifestError, match="not valid JSON"):
        Manifest.from_json(text)


@pytest.mark.parametrize("text", ["[]", "42", '"tda.chunks"', "null"])
def test_manifest_refuses_non_object(text):
    with pytest.raises(ManifestError, match="must be a JSON object"):
        Manifest.from_json(text)


@pytest.mark.parametrize(
    "field",
    ["tda_version", "id_codec", "dataset_id", "tokenizer", "read", "chunking", "inputs", "files"],
)
def test_manifest_refuses_missing_top_level_field(field):
    data = _manifest_dict()
    del data[field]
    with pytest.raises(ManifestError, match="missing or has a malformed field"):
        Manifest.from_json(json.dumps(data))


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ("id_codec", "ordinal_bits"),
        ("tokenizer", "fingerprint"),
        ("files", "tokens"),
        ("files", "deadletters"),
        ("inputs", "url"),
    ],
)
def test_manifest_refuses_missing_nested_field(section, field):
    data = _manifest_dict()
    target = data[section][0] if isinstance(data[section], list) else data[section]
    del target[field]
    with pytest.raises(ManifestError, match="missing or has a malformed field"):
        Manifest.from_json(json.dumps(data))


def test_manifest_refuses_unknown_nested_field():
    data = _manifest_dict()
    data["tokenizer"]["colour"] = "blue"
    with pytest.raises(ManifestError, match="missing or has a malformed field"):
        Manifest.from_json(json.dumps(data))


def test_manifest_totals_property():
    manifest = _manifest()
    assert manifest.totals == FileCounts.total(manifest.files)
    assert manifest.totals.records == 14


# ---------------------------------------------------------------------------------------
# FileCounts


def test_file_counts_total():
    a = FileCounts(3, records=5, documents=3, chunks=7, tokens=100, deadletters={"no_tokens": 2})
    b = FileCounts(
        8,
        records=4,
        documents=1,
        chunks=2,
        tokens=11,
        deadletters={"too_large": 1, "no_tokens": 1, "malformed_json": 1},
    )
    total = FileCounts.total([a, b])
    assert total == FileCounts(
        file_index=-1,
        records=9,
        documents=4,
        chunks=9,
        tokens=111,
        deadletters={"malformed_json": 1, "too_large": 1, "no_tokens": 3},
    )
    # Reasons come out in DeadLetterReason order, whatever order the inputs had.
    order = [r.value for r in DeadLetterReason]
    assert list(total.deadletters) == sorted(total.deadletters, key=order.index)
    assert FileCounts.total((a, b)) == total
    assert FileCounts.total([]) == FileCounts(file_index=-1)


def test_file_counts_reconciles():
    assert FileCounts(0, records=5, documents=3, deadletters={"no_tokens": 2}).reconciles()
    assert FileCounts(0).reconciles()
    assert not FileCounts(0, records=5, documents=3, deadletters={"no_tokens": 1}).reconciles()
    assert not FileCounts(0, records=5, documents=6).reconciles()
    counts = FileCounts(0, records=6, documents=1, deadletters={"a": 2, "b": 3})
    assert counts.deadlettered == 5
    assert counts.reconciles()


def test_file_counts_dict_round_trip():
    counts = FileCounts(4, records=3, documents=2, chunks=9, tokens=50, deadletters={"x": 1})
    assert FileCounts.from_dict(counts.to_dict()) == counts
    assert counts.to_dict()["deadletters"] == {"x": 1}


# ---------------------------------------------------------------------------------------
# Row schemas


def test_chunk_schema_matches_dataclass():
    assert [f.name for f in dataclasses.fields(Chunk)] == CHUNK_SCHEMA.names
    assert CHUNK_SCHEMA.names == [
        "chunk_id",
        "source",
        "doc_id",
        "record_index",
        "chunk_index",
        "token_start",
        "token_end",
        "char_start",
        "char_end",
        "n_tokens",
        "text",
    ]
    assert [f.name for f in CHUNK_SCHEMA if f.nullable] == ["text"]
    assert str(CHUNK_SCHEMA.field("chunk_id").type) == "int64"
    assert CHUNK_SCHEMA.metadata[b"tda.table"] == b"chunks"


def test_deadletter_schema_matches_dataclass():
    assert [f.name for f in dataclasses.fields(DeadLetter)] == DEADLETTER_SCHEMA.names
    assert DEADLETTER_SCHEMA.names == [
        "file_index",
        "url",
        "record_index",
        "reason",
        "detail",
        "raw",
        "raw_bytes",
    ]
    assert not any(f.nullable for f in DEADLETTER_SCHEMA)
    letter = DeadLetter(2, "a.jsonl", 7, DeadLetterReason.NO_TOKENS, "d", "raw", 3)
    row = letter.to_row()
    assert list(row) == DEADLETTER_SCHEMA.names
    assert row["reason"] == "no_tokens" and type(row["reason"]) is str


@pytest.mark.parametrize(
    ("index", "suffix", "expected"),
    [
        (0, ".parquet", "part-000000.parquet"),
        (42, ".parquet", "part-000042.parquet"),
        (999_999, ".parquet", "part-999999.parquet"),
        (1_234_567, ".parquet", "part-1234567.parquet"),
        (7, ".json", "part-000007.json"),
        (7, "", "part-000007"),
    ],
)
def test_part_name(index, suffix, expected):
    assert part_name(index, suffix) == expected


def test_part_name_default_suffix_and_sort_order():
    assert part_name(3) == "part-000003.parquet"
    names = [part_name(i) for i in (10, 2, 100, 1)]
    assert sorted(names) == [part_name(i) for i in (1, 2, 10, 100)]


# ---------------------------------------------------------------------------------------
# Human sizes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512", 512),
        ("0", 0),
        ("16MiB", 16 * 1024**2),
        ("16mib", 16 * 1024**2),
        ("4GB", 4_000_000_000),
        ("4gb", 4_000_000_000),
        ("4g", 4_000_000_000),
        ("64KiB", 65536),
        (" 64 KiB ", 65536),
        ("1_000_000", 1_000_000),
        ("10k", 10_000),
        ("3kb", 3000),
        ("2m", 2_000_000),
        ("1TB", 10**12),
        ("2TiB", 2 * 1024**4),
        ("1GiB", 1024**3),
        ("100b", 100),
        ("100B", 100),
        ("1.5KiB", 1536),
        ("1.5k", 1500),
        ("0.5MiB", 512 * 1024),
        (4096, 4096),
        (0, 0),
    ],
)
def test_parse_size_good(text, expected):
    assert parse_size(text) == expected
    assert type(parse_size(text)) is int


@pytest.mark.parametrize(
    "text", ["", "abc", "MiB", "5 furlongs", "-5", "1.2.3", "1e6", "12 MiB extra", "0x10", "KiB4"]
)
def test_parse_size_bad(text):
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


def test_parse_size_negative_int():
    with pytest.raises(ValueError, match="must not be negative"):
        parse_size(-1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2.01KB", 2010), ("8.03KB", 8030), ("9007199254740993", 9007199254740993)],
)
def test_parse_size_exact_decimal(text, expected):
    # An exact decimal number of bytes must not be truncated by float rounding.
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, "0 B"),
        (1, "1 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (12345678, "11.8 MiB"),
        (16 * 1024**2, "16.0 MiB"),
        (3 * 1024**3, "3.0 GiB"),
        (5 * 1024**4, "5.0 TiB"),
        (1024**5, "1024.0 TiB"),
        (-2048, "-2.0 KiB"),
    ],
)
def test_format_size(n, expected):
    assert format_size(n) == expected


# --------------------------------------------------------------------------------------
# Embed stage contracts


def test_pooling_names_and_validation():
    from tda.schemas import Pooling

    assert Pooling().name == "mean:hidden"  # the best pooling in docs/quality.md
    assert Pooling.parse("mean") == Pooling() and Pooling.parse("max").name == "max:hidden"
    assert Pooling.parse("mean:concepts").features == "concepts"
    assert Pooling.parse("max:hidden").name == "max:hidden"
    assert Pooling.parse("weights").name == "weights"
    for bad, message in [
        ({"method": "median"}, "--pooling must be one of"),
        ({"features": "logits"}, "pooling features"),
        ({"concept_reducer": "sum"}, "--concept-pooling"),
        ({"top_k": 0}, "--top-k-concepts"),
    ]:
        with pytest.raises(ConfigError, match=message):
            Pooling(**bad)


def test_embed_config_validation():
    from tda.schemas import EmbedConfig

    for bad, message in [
        ({"root": ""}, "ROOT"),
        ({"model": ""}, "--model"),
        ({"window": 0}, "--window"),
        ({"context": -1}, "--context"),
        ({"batch_tokens": 0}, "--batch-tokens"),
        ({"device": "tpu"}, "--device"),
        ({"resume": True, "overwrite": True}, "exclude"),
    ]:
        with pytest.raises(ConfigError, match=message):
            EmbedConfig(**{"root": "r", "model": "m", **bad})


def test_embed_manifest_round_trip_and_refusals():
    from tda.schemas import ContextPolicy, EmbedCounts, EmbedManifest, EncoderInfo, Pooling

    manifest = EmbedManifest(
        tda_version="0.1.0",
        encoder=EncoderInfo("builtin", "builtin:m", "sha256:aa", "sha256:bb", 64, 48, 512, 256, 1),
        pooling=Pooling("max", "known"),
        context=ContextPolicy(window=256, context=64),
        dim=64,
        batch_tokens=4096,
        chunk_manifest_sha256="cc",
        files=(EmbedCounts(0, 10, 600, 700, 50, 3, 1), EmbedCounts(1, 5, 300, 300, 0, 1, 1)),
    )
    text = manifest.to_json()
    assert EmbedManifest.from_json(text) == manifest
    data = json.loads(text)
    assert data["totals"] == {
        "file_index": None, "chunks": 15, "tokens": 900, "window_tokens": 1000,
        "padded_tokens": 50, "windows": 4, "batches": 2, "zero_vectors": 0,
    }  # fmt: skip
    assert manifest.totals.padding_share == pytest.approx(50 / 1050)
    with pytest.raises(ManifestError, match=r"not a tda\.embeddings manifest"):
        EmbedManifest.from_json(json.dumps({**data, "kind": "tda.chunks"}))
    with pytest.raises(ManifestError, match="schema version 9"):
        EmbedManifest.from_json(json.dumps({**data, "schema_version": 9}))
    del data["encoder"]
    with pytest.raises(ManifestError, match="malformed"):
        EmbedManifest.from_json(json.dumps(data))


def test_index_config_validation():
    import re

    from tda.schemas import IndexConfig

    assert IndexConfig(root="r").memory_budget == 4 * 1000**3
    for bad, message in [
        ({"root": ""}, "ROOT is required"),
        ({"threads": 0}, "--threads must be positive, got 0"),
        ({"shards": 2, "shard_size": 10}, "give --shards or --shard-size, not both"),
        ({"shards": 0}, "--shards must be positive, got 0"),
        ({"shard_size": 0}, "--shard-size must be positive, got 0"),
        ({"memory_budget": 0}, "--memory-budget must be positive, got 0"),
        ({"train_sample": 0}, "--train-sample must be positive, got 0"),
        ({"nprobe": 0}, "--nprobe must be positive, got 0"),
        ({"metric": "cosine"}, "--metric must be one of ip, l2, got 'cosine'"),
        ({"factory": " "}, "--factory must not be empty"),
        ({"resume": True, "overwrite": True}, "--resume and --overwrite exclude each other"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            IndexConfig(**{"root": "r", **bad})


def test_context_policy_validation():
    import re

    from tda.schemas import ContextPolicy

    assert ContextPolicy(window=128, context=64, align=64).context == 64
    for bad, message in [
        ({"align": 0}, "window alignment must be positive, got 0"),
        ({"window": 0}, "--window must be a positive multiple of 1, got 0"),
        ({"window": 100, "align": 64}, "--window must be a positive multiple of 64, got 100"),
        ({"context": -1}, "--context must be a multiple of 1 in 0..127, got -1"),
        ({"context": 128}, "--context must be a multiple of 1 in 0..127, got 128"),
        ({"context": 32, "align": 64}, "--context must be a multiple of 64 in 0..127, got 32"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            ContextPolicy(**{"window": 128, "context": 0, **bad})


def test_train_config_validation_messages():
    import re

    from tda.schemas import TrainConfig

    assert TrainConfig(inputs=("c.jsonl",), out="m").concepts == "default"
    for bad, message in [
        ({"inputs": ()}, "give at least one INPUT path, URL or glob"),
        ({"steps": 0}, "--steps and --batch-size must be positive"),
        ({"batch_size": 0}, "--steps and --batch-size must be positive"),
        ({"holdout": 0.5}, "--holdout must be in [0, 0.5), got 0.5"),
        ({"holdout": -0.1}, "--holdout must be in [0, 0.5), got -0.1"),
        ({"lr": 0.0}, "--lr must be positive, got 0.0"),
        ({"max_seq": 7}, "--max-seq must be at least 8, got 7"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            TrainConfig(**{"inputs": ("c.jsonl",), "out": "m", **bad})
