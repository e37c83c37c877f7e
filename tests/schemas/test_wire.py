"""The JSON form of the contracts (schemas/wire.py): one generic to_dict writes every
manifest exactly as the hand-written ones did, a training hit stays one flat JSON object
while it contains its chunk record, and the merged-index manifest has a version."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field

import pytest

from tda.schemas import (
    DEFAULT_CODEC,
    ChunkingPolicy,
    ChunkRecord,
    ContextPolicy,
    EmbedCounts,
    EmbedManifest,
    EncoderInfo,
    FileCounts,
    IndexFile,
    IndexManifest,
    InputFile,
    Manifest,
    ManifestError,
    MergedIndexManifest,
    Pooling,
    ReadOptions,
    ShardInfo,
    SharedConcept,
    TokenizerInfo,
    TrainingHit,
)
from tda.schemas.manifest import sealed_json
from tda.schemas.wire import inline, omitted_if_none, record_dict, record_from_dict, written_as

TOKENIZER = TokenizerInfo("tok.json", "huggingface", "tok", "sha256:t", 1000)
ENCODER = EncoderInfo("builtin", "builtin:m", "sha256:e", "sha256:t", 64, 48, 512, 256, 1)
INPUTS = (InputFile(0, "gs://b/a.jsonl", "jsonl", 12), InputFile(1, "gs://b/Zürich.txt", "text", 0))


def _as_written(data: dict) -> str:
    """What the hand-written to_json wrote for the dict its to_dict built."""
    return sealed_json(data)  # canonical JSON plus its own sha256 (self_sha256)


def _total(m) -> dict:
    """A manifest's totals as written: file index null, no parts (a total lists no files)."""
    data = {**asdict(m.totals), "file_index": None}
    del data["parts"]
    return data


def _index_manifest(lineage=None) -> IndexManifest:
    return IndexManifest(
        tda_version="0.1.0", encoder=ENCODER, tokenizer=TOKENIZER,
        chunking=ChunkingPolicy(chunk_size=32, stride=16), context=ContextPolicy(256, 64),
        pooling=Pooling("max", "known"), id_codec=DEFAULT_CODEC, dataset_id=3,
        factory="IVF64,SQfp16", metric="ip", dim=64, nprobe=8, train_vectors=100,
        vectors=200, shards=(ShardInfo(0, "shards/shard-00000.faiss", 200, (0, 1)),),
        files=(IndexFile("shards/shard-00000.faiss", "ab" * 32, 1234),), inputs=INPUTS,
        chunk_manifest_sha256="cc", embed_manifest_sha256="ee", lineage=lineage,
    )  # fmt: skip


def test_chunk_manifest_dict_is_what_the_hand_written_one_was():
    counts = (FileCounts(0, 3, 2, 5, 50, {"too_large": 1}), FileCounts(1, 1, 1, 1, 4))
    m = Manifest("0.1.0", DEFAULT_CODEC, 2, TOKENIZER, ReadOptions(), ChunkingPolicy(), INPUTS,
                 counts)  # fmt: skip
    assert m.to_json() == _as_written({
        "kind": m.kind,
        "schema_version": m.schema_version,
        "tda_version": m.tda_version,
        "id_codec": m.id_codec.to_dict(),
        "dataset_id": m.dataset_id,
        "tokenizer": asdict(m.tokenizer),
        "read": asdict(m.read),
        "chunking": asdict(m.chunking),
        "inputs": [asdict(i) for i in m.inputs],
        "files": [asdict(f) for f in m.files],
        "totals": _total(m),
    })  # fmt: skip
    assert Manifest.from_json(m.to_json()).to_json() == m.to_json()


def test_embed_manifest_dict_is_what_the_hand_written_one_was():
    files = (EmbedCounts(0, 10, 600, 700, 50, 3, 1), EmbedCounts(1, 5, 300, 300, 0, 1, 1))
    m = EmbedManifest("0.1.0", ENCODER, Pooling("max", "known"), ContextPolicy(256, 64), 64, 4096,
                      "cc", files)  # fmt: skip
    assert m.to_json() == _as_written({
        "kind": m.kind,
        "schema_version": m.schema_version,
        "tda_version": m.tda_version,
        "encoder": asdict(m.encoder),
        "pooling": asdict(m.pooling),
        "pooling_name": "max:known",
        "context": asdict(m.context),
        "dim": m.dim,
        "batch_tokens": m.batch_tokens,
        "chunk_manifest_sha256": m.chunk_manifest_sha256,
        "files": [asdict(f) for f in m.files],
        "totals": _total(m),
    })  # fmt: skip


@pytest.mark.parametrize("lineage", [None, {"parent_manifest_id": "p", "removed": 3}])
def test_index_manifest_dict_is_what_the_hand_written_one_was(lineage):
    m = _index_manifest(lineage)
    expected = {
        "kind": m.kind, "schema_version": m.schema_version, "tda_version": m.tda_version,
        "encoder": asdict(m.encoder), "tokenizer": asdict(m.tokenizer),
        "chunking": asdict(m.chunking), "context": asdict(m.context),
        "pooling": asdict(m.pooling), "id_codec": m.id_codec.to_dict(),
        "dataset_id": m.dataset_id, "factory": m.factory, "metric": m.metric, "dim": m.dim,
        "nprobe": m.nprobe, "train_vectors": m.train_vectors, "vectors": m.vectors,
        "shards": [asdict(s) for s in m.shards], "files": [asdict(f) for f in m.files],
        "inputs": [asdict(i) for i in m.inputs],
        "chunk_manifest_sha256": m.chunk_manifest_sha256,
        "embed_manifest_sha256": m.embed_manifest_sha256,
        "channels": [],  # dense only (fusion is left out while None)
    }  # fmt: skip
    if lineage is not None:
        expected["lineage"] = lineage
    assert m.to_json() == _as_written(expected)
    assert IndexManifest.from_json(m.to_json()) == m


def _hit() -> TrainingHit:
    chunk = ChunkRecord(7, "wiki", "doc-1", 3, 2, 10, 42, "some text", "gs://b/a.jsonl")
    return TrainingHit(rank=1, score=0.9, chunk=chunk,
                       shared_concepts=(SharedConcept(4, "sports", 0.5, 0.25),))  # fmt: skip


def test_training_hit_contains_its_chunk_record_and_writes_one_flat_object():
    hit = _hit()
    assert hit.doc_id == hit.chunk.doc_id == "doc-1" and hit.url == "gs://b/a.jsonl"
    assert hit.to_dict() == {
        "rank": 1, "score": 0.9, "chunk_id": 7, "source": "wiki", "doc_id": "doc-1",
        "record_index": 3, "chunk_index": 2, "char_start": 10, "char_end": 42,
        "text": "some text", "url": "gs://b/a.jsonl",
        "shared_concepts": [{"concept_id": 4, "name": "sports", "output_weight": 0.5,
                             "training_weight": 0.25}],
        "rerank_score": None, "channels": {}, "fused_score": None, "match": None,
    }  # fmt: skip
    assert json.loads(json.dumps(hit.to_dict())) == hit.to_dict()
    assert record_from_dict(TrainingHit, hit.to_dict()) == hit
    with pytest.raises(TypeError, match="no field 'extra'"):
        record_from_dict(TrainingHit, {**hit.to_dict(), "extra": 1})
    with pytest.raises(KeyError):
        record_from_dict(TrainingHit, {k: v for k, v in hit.to_dict().items() if k != "rank"})


@dataclass(frozen=True)
class _Inner:
    a: int
    b: str = "x"


@dataclass(frozen=True)
class _Outer:
    index: int = field(metadata=written_as(lambda i: None if i < 0 else i))
    inner: _Inner = field(default=_Inner(1), metadata=inline())
    note: str | None = field(default=None, metadata=omitted_if_none())
    items: tuple[_Inner, ...] = ()


def test_field_metadata_of_the_json_form():
    assert record_dict(_Outer(-1)) == {"index": None, "a": 1, "b": "x", "items": []}
    assert record_dict(_Outer(2, note="n", items=(_Inner(3, "y"),))) == {
        "index": 2, "a": 1, "b": "x", "note": "n", "items": [{"a": 3, "b": "y"}],
    }  # fmt: skip
    back = record_from_dict(_Outer, {"index": 2, "a": 5, "items": [{"a": 3}]})
    assert back == _Outer(2, _Inner(5), None, (_Inner(3),))


def test_merged_manifest_has_a_version_and_reads_the_unversioned_ones():
    record = MergedIndexManifest("ab" * 32, 8000, (IndexFile("merged.faiss", "cd" * 32, 99),))
    text = record.to_json()
    assert {k: v for k, v in json.loads(text).items() if k != "self_sha256"} == {
        "parent_manifest_id": "ab" * 32,
        "vectors": 8000,
        "files": [{"path": "merged.faiss", "sha256": "cd" * 32, "size": 99}],
        "schema_version": 1,
    }
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    assert MergedIndexManifest.from_json(text) == record
    # written before the version field: the same bytes without it
    old = json.loads(text)
    del old["schema_version"], old["self_sha256"]  # (nor its own sha256)
    assert MergedIndexManifest.from_json(json.dumps(old, indent=2, sort_keys=True)) == record
    with pytest.raises(ManifestError, match="schema version 2"):
        MergedIndexManifest.from_json(json.dumps({**old, "schema_version": 2}))
    with pytest.raises(ManifestError, match="malformed"):
        MergedIndexManifest.from_json(json.dumps({"vectors": 1, "files": []}))


def test_a_fused_hit_reads_back_with_its_channels_match_and_confidence():
    from tda.schemas import ChannelScore, Confidence, MatchSpan

    hit = dataclasses.replace(
        _hit(),
        channels={"span": ChannelScore(1, 40.5), "lexical": ChannelScore(2, 17.25)},
        fused_score=0.0325,
        match=MatchSpan(0, 12, 30, 42, 3, 40),
    )
    data = json.loads(json.dumps(hit.to_dict()))
    assert data["channels"] == {"span": {"rank": 1, "score": 40.5},
                                "lexical": {"rank": 2, "score": 17.25}}  # fmt: skip
    back = record_from_dict(TrainingHit, data)
    assert back == hit and isinstance(back.channels["span"], ChannelScore)
    assert isinstance(back.match, MatchSpan)
    conf = Confidence("verbatim", 0.625, "a 40-token exact span")
    assert record_from_dict(Confidence, json.loads(json.dumps(dataclasses.asdict(conf)))) == conf
