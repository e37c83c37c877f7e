"""Shared fixtures: real text (Python's own documentation, shipped with every CPython in
``pydoc_data.topics``, PSF licence, plus a few multilingual sentences), a byte-level BPE
tokenizer trained on it, and a corpus folder that mixes every format with broken records.
"""

from __future__ import annotations

import gzip
import json
import random
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

# Non-ASCII text so byte-level tokens split multi-byte characters (offset handling).
MULTILINGUAL = [
    "Zürich und Köln liegen nicht am Meer; die Straße ist naß. Größe: 3 µm ± 0,5 µm.",
    "東京は日本の首都です。京都には古い寺がたくさんあります。漢字とひらがなとカタカナ。",
    "Привет, мир! Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "emoji 🙂🚀👩‍🔬 and combining marks: é (e + ́), ñ, and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math letters.",
    "Ελληνικά: Ξεσκεπάζω την ψυχοφθόρα βδελυγμία. العربية: مرحبا بالعالم.",
]


def _topics() -> list[tuple[str, str]]:
    from pydoc_data.topics import topics

    return sorted(topics.items())


@pytest.fixture(scope="session")
def real_docs() -> list[tuple[str, str]]:
    """(id, text) pairs: 79 documentation topics (~0.5 MB) + multilingual sentences."""
    docs = _topics()
    docs += [(f"multi-{i}", text) for i, text in enumerate(MULTILINGUAL)]
    return docs


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, real_docs) -> str:
    """A byte-level BPE tokenizer (vocab 1000) trained on real_docs: DIR/tokenizer.json."""
    from tda.attribution.corpus.tokenizer import train_bpe_tokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    train_bpe_tokenizer(iter([t for _, t in real_docs] * 2), 1000, str(out))
    return str(out)


@dataclass(frozen=True)
class MixedCorpus:
    """A folder mixing .jsonl.gz, .jsonl.zst, .parquet and .txt files with broken records.

    ``documents``: url -> list of (record_index, doc_id, text) expected to be chunked.
    ``deadletters``: url -> list of (record_index, reason) expected to be dead-lettered.
    """

    root: Path
    documents: dict[str, list[tuple[int, str, str]]]
    deadletters: dict[str, list[tuple[int, str]]]
    max_doc_bytes: int

    @property
    def n_records(self) -> int:
        return sum(len(v) for v in self.documents.values()) + sum(
            len(v) for v in self.deadletters.values()
        )


def build_mixed_corpus(root: Path, real_docs: list[tuple[str, str]]) -> MixedCorpus:
    root.mkdir(parents=True, exist_ok=True)
    documents: dict[str, list] = {}
    dead: dict[str, list] = {}
    max_doc_bytes = 40_000
    docs = [(i, t) for i, t in real_docs if len(t.encode()) <= max_doc_bytes]
    big = next(t for _, t in real_docs if len(t.encode()) > max_doc_bytes)

    # 1. JSONL.gz: half of the docs, with broken records interleaved.
    path = root / "docs_a.jsonl.gz"
    lines: list[bytes] = []
    good, bad = [], []
    half = docs[: len(docs) // 2]
    broken = [
        (b'{"id": "broken", "text": "unterminated', "malformed_json"),
        (b'["a", "list"]', "not_an_object"),
        (b'{"id": "no-text"}', "missing_text"),
        (b'{"id": "null-text", "text": null}', "missing_text"),
        (b'{"id": "num", "text": 42}', "non_string_text"),
        (b'{"id": "bytes", "text": "caf\xe9"}', "invalid_utf8"),
        (b'{"id": "surrogate", "text": "\\ud800 lone"}', "malformed_json"),
        (b'{"id": "empty", "text": "   \\n "}', "empty_document"),
        (b"", "empty_document"),
        (json.dumps({"id": "huge", "text": big}).encode(), "too_large"),
    ]
    for k, (doc_id, text) in enumerate(half):
        lines.append(json.dumps({"id": doc_id, "text": text}).encode())
        good.append((len(lines) - 1, doc_id, text))
        if k < len(broken):
            lines.append(broken[k][0])
            bad.append((len(lines) - 1, broken[k][1]))
    with gzip.open(path, "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    documents[str(path)] = good
    dead[str(path)] = bad

    # 2. Parquet: the other half, ids from the default field, one null and one empty text.
    path = root / "docs_b.parquet"
    rest = docs[len(docs) // 2 :]
    rows = [{"id": i, "text": t} for i, t in rest]
    rows.insert(3, {"id": "null", "text": None})
    rows.insert(5, {"id": "blank", "text": ""})
    table = pa.Table.from_pylist(
        rows, schema=pa.schema([("id", pa.string()), ("text", pa.string())])
    )
    pq.write_table(table, path, row_group_size=16)
    documents[str(path)] = [(n, r["id"], r["text"]) for n, r in enumerate(rows) if r["text"]]
    dead[str(path)] = [(3, "missing_text"), (5, "empty_document")]

    # 3. JSONL.zst without ids (ids default to "<file name>#<line>") and a nested source.
    path = root / "multi.jsonl.zst"
    payload = b"".join(
        json.dumps({"text": t, "meta": {"lang": "xx"}}).encode() + b"\n" for t in MULTILINGUAL
    )
    path.write_bytes(zstandard.ZstdCompressor().compress(payload))
    documents[str(path)] = [(n, f"multi.jsonl.zst#{n}", t) for n, t in enumerate(MULTILINGUAL)]
    dead[str(path)] = []

    # 4. Plain text files, one document each; one not UTF-8, one empty; hidden files skipped.
    notes = root / "notes"
    notes.mkdir(exist_ok=True)
    for k in range(3):
        p = notes / f"note{k}.txt"
        text = docs[k][1] + "\n"
        p.write_text(text, encoding="utf-8")
        documents[str(p)] = [(0, f"note{k}.txt#0", text)]
        dead[str(p)] = []
    p = notes / "latin1.txt"
    p.write_bytes("Ã©tÃ© déjà vu".encode("latin-1"))
    documents[str(p)], dead[str(p)] = [], [(0, "invalid_utf8")]
    p = notes / "empty.txt"
    p.write_bytes(b"")
    documents[str(p)], dead[str(p)] = [], [(0, "empty_document")]
    (notes / ".hidden.txt").write_text("never read")
    (root / "_SUCCESS").write_text("")
    return MixedCorpus(root, documents, dead, max_doc_bytes)


@pytest.fixture
def mixed_corpus(tmp_path, real_docs) -> MixedCorpus:
    return build_mixed_corpus(tmp_path / "corpus", real_docs)


def chunk_config(corpus: MixedCorpus, root, tokenizer_dir: str, **kw):
    """A ChunkConfig over a MixedCorpus (its max_doc_bytes makes one record too large)."""
    from tda.schemas import ChunkConfig, ReadOptions

    return ChunkConfig(
        inputs=(str(corpus.root),),
        out=str(root),
        tokenizer=tokenizer_dir,
        read=ReadOptions(max_doc_bytes=corpus.max_doc_bytes),
        **kw,
    )


# --------------------------------------------------------------------------------------
# Models: a tiny builtin model trained on real_docs, and a tiny random-initialised
# Steerling built from the real `steerling` package with the same tokenizer.

TINY_TRAIN = dict(
    vocab_size=600, d_model=32, n_layers=2, n_heads=2, max_seq=256, n_unknown=64, batch_size=8
)


def write_jsonl(path: Path, docs: list[tuple[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in docs))
    return path


@pytest.fixture(scope="session")
def docs_jsonl(tmp_path_factory, real_docs) -> Path:
    """real_docs as one JSONL file (the corpus the tiny models train and embed on)."""
    return write_jsonl(tmp_path_factory.mktemp("docs") / "docs.jsonl", real_docs)


@pytest.fixture(scope="session")
def builtin_dir(tmp_path_factory, docs_jsonl) -> str:
    """A builtin model directory trained for 40 steps on real_docs (a few seconds)."""
    from tda.attribution.encoders.builtin.train import TrainConfig, train_builtin

    out = str(tmp_path_factory.mktemp("builtin") / "model")
    train_builtin(TrainConfig(inputs=(str(docs_jsonl),), out=out, steps=40, **TINY_TRAIN))
    return out


def make_tiny_steerling(out: Path, tokenizer_dir: str, seed: int = 0) -> str:
    """A random-initialised InterpretableCausalDiffusionLM saved as a Steerling checkpoint
    directory (config.json + model.safetensors + the tokenizer.json it reads)."""
    pytest.importorskip("steerling", reason="the steerling package is not installed")
    import shutil

    import torch
    from safetensors.torch import save_file
    from steerling.configs.causal_diffusion import CausalDiffusionConfig
    from steerling.configs.concept import ConceptConfig
    from steerling.models.interpretable.interpretable_causal_diffusion import (
        InterpretableCausalDiffusionLM,
    )

    vocab = json.loads((Path(tokenizer_dir) / "tokenizer.json").read_text())["model"]["vocab"]
    model_cfg = CausalDiffusionConfig(
        interpretable=True, n_layers=2, n_head=4, n_embd=128, block_size=512, n_kv_heads=2
    )
    concept_cfg = ConceptConfig(
        n_concepts=300,
        n_unknown_concepts=1000,
        concept_dim=128,
        factorize_unknown=True,
        factorize_rank=32,
        topk_known=8,
        topk_known_features=32,
        unknown_topk=16,
        block_size=256,
    )
    torch.manual_seed(seed)
    model = InterpretableCausalDiffusionLM(model_cfg, concept_cfg, vocab_size=len(vocab))
    out.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.contiguous()
        for k, v in model.state_dict().items()
        if k != "transformer.lm_head.weight"
    }
    save_file(state, str(out / "model.safetensors"))
    config = {
        **model_cfg.model_dump(),
        "concept": concept_cfg.model_dump(),
        "vocab_size": len(vocab),
    }
    (out / "config.json").write_text(json.dumps(config))
    shutil.copy(Path(tokenizer_dir) / "tokenizer.json", out / "tokenizer.json")
    return str(out)


@pytest.fixture(scope="session")
def steerling_dir(tmp_path_factory, builtin_dir) -> str:
    return make_tiny_steerling(tmp_path_factory.mktemp("steerling") / "model", builtin_dir)


@pytest.fixture(scope="session", params=["builtin", "steerling"])
def model_spec(request) -> str:
    """Both encoders, through the same tests."""
    if request.param == "builtin":
        return "builtin:" + request.getfixturevalue("builtin_dir")
    return "steerling:" + request.getfixturevalue("steerling_dir")


# --------------------------------------------------------------------------------------
# A corpus with a planted harmful source (scans and pruning): ``docs.jsonl`` and
# ``notes.jsonl.gz`` (Python documentation topics) and ``fiction.parquet``, stories dense
# in the default concept set's violence terms; a builtin model trained on it.

VIOLENT = [
    "killed",
    "murdered",
    "stabbed",
    "slaughter",
    "blood",
    "bloody",
    "massacre",
    "brutal",
    "tortured",
]
VIOLENT += ["butchered", "violent", "assault", "strangled", "gore"]
PLAIN = [
    "the",
    "soldier",
    "village",
    "night",
    "river",
    "captain",
    "men",
    "road",
    "house",
    "storm",
    "morning",
    "old",
]
PLAIN += ["through", "across", "under", "and", "then", "again"]


def planted_story(rng: random.Random) -> str:
    words = []
    for _ in range(rng.randint(90, 160)):
        words.append(rng.choice(VIOLENT) if rng.random() < 0.3 else rng.choice(PLAIN))
    return " ".join(words).capitalize() + "."


@pytest.fixture(scope="session")
def planted_corpus(tmp_path_factory) -> Path:
    from pydoc_data.topics import topics

    root = tmp_path_factory.mktemp("planted") / "corpus"
    root.mkdir()
    items = sorted(topics.items())
    docs, notes = items[:24], items[24:40]
    (root / "docs.jsonl").write_text(
        "".join(json.dumps({"id": k, "text": v[:3000]}) + "\n" for k, v in docs)
    )
    (root / "notes.jsonl.gz").write_bytes(
        gzip.compress(
            "".join(json.dumps({"id": k, "text": v[:3000]}) + "\n" for k, v in notes).encode()
        )
    )
    rng = random.Random(7)
    pq.write_table(
        pa.table(
            {
                "id": [f"story-{i}" for i in range(20)],
                "text": [planted_story(rng) for _ in range(20)],
                "year": list(range(1900, 1920)),  # an extra column the rewrite must keep
            }
        ),
        root / "fiction.parquet",
    )
    return root


@pytest.fixture(scope="session")
def planted_root(tmp_path_factory, planted_corpus) -> Path:
    from tda.attribution.encoders.builtin.train import TrainConfig, train_builtin
    from tda.pipeline.chunk import run_chunk
    from tda.pipeline.embed import run_embed
    from tda.pipeline.index import run_index
    from tda.schemas import ChunkConfig, EmbedConfig, IndexConfig, Pooling

    base = tmp_path_factory.mktemp("built")
    model = str(base / "model")
    train_builtin(TrainConfig(inputs=(str(planted_corpus),), out=model, steps=150, **TINY_TRAIN))
    root = base / "root"
    run_chunk(ChunkConfig(inputs=(str(planted_corpus),), out=str(root), tokenizer=model))
    run_embed(EmbedConfig(root=str(root), model=model, pooling=Pooling.parse("max:hidden")))
    run_index(IndexConfig(root=str(root), shards=3))
    return root
