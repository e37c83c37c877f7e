"""Plain helpers shared by test modules (no fixtures: those live in ``conftest.py``).

Test modules import from here (``from tests.helpers import ...``), never from one another
or from ``conftest.py``: the repository root is on ``sys.path`` through ``pythonpath = .``
in setup.cfg, so ``tests`` is a namespace package under either import mode. tda modules
are imported inside the helpers that use them, so importing this module costs nothing and
a broken tda module fails only the tests that need it, not the collection of every test.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
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


def doc_topics() -> list[tuple[str, str]]:
    """(name, text) pairs of Python's own documentation topics, sorted by name (79 topics,
    ~0.5 MB, shipped with every CPython in ``pydoc_data.topics``, PSF licence)."""
    from pydoc_data.topics import topics

    return sorted(topics.items())


# --------------------------------------------------------------------------------------
# Corpus files: a folder mixing every input format with broken records.


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
    """Writes the mixed corpus under ``root`` from (id, text) pairs; one document larger
    than ``max_doc_bytes`` among them becomes the too-large record."""
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


def write_jsonl(path: Path, docs: list[tuple[str, str]]) -> Path:
    """(id, text) pairs as ``{"id", "text"}`` JSON lines at ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in docs))
    return path


# --------------------------------------------------------------------------------------
# Models: the settings of the tiny builtin model the fixtures train, and a tiny
# random-initialised Steerling built from the real `steerling` package.

TINY_TRAIN = dict(
    vocab_size=600, d_model=32, n_layers=2, n_heads=2, max_seq=256, n_unknown=64, batch_size=8
)


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


# --------------------------------------------------------------------------------------
# The planted harmful source of the scan and prune tests: stories dense in the default
# concept set's violence terms.

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
    """One story of 90-160 words, about 30 % of them from ``VIOLENT``, drawn from ``rng``."""
    words = []
    for _ in range(rng.randint(90, 160)):
        words.append(rng.choice(VIOLENT) if rng.random() < 0.3 else rng.choice(PLAIN))
    return " ".join(words).capitalize() + "."


# --------------------------------------------------------------------------------------
# Build roots without Beam: the chunk and embed stages called file by file, and a
# synthetic root (chunks + embeddings of given vectors) for the index stage.


def chunk_root(root, inputs, tokenizer: str, **policy) -> None:
    """Chunks the files ``inputs`` into the build root ``root`` (overwriting it) with the
    tokenizer directory ``tokenizer`` and ``ChunkingPolicy(**policy)``."""
    from tda.attribution.corpus.tokenizer import load_tokenizer
    from tda.attribution.stages.chunk import finish_chunk_run, plan_chunk_run, process_file
    from tda.schemas import ChunkConfig, ChunkingPolicy

    config = ChunkConfig(
        inputs=tuple(str(i) for i in inputs),
        out=str(root),
        tokenizer=tokenizer,
        chunking=ChunkingPolicy(**policy),
        overwrite=True,
    )
    plan = plan_chunk_run(config)
    tok = load_tokenizer(tokenizer)
    for f in plan.inputs:
        process_file(f, config, tok)
    finish_chunk_run(plan)


def embed_root(config, encoder=None):
    """Embeds the chunked root of ``config`` (an ``EmbedConfig``) with ``encoder`` (loaded
    on the CPU from ``config.model`` when None); returns the ``EmbedManifest`` written."""
    from tda.attribution.encoders import load_encoder
    from tda.attribution.stages.embed import finish_embed_run, plan_embed_run
    from tda.attribution.stages.embed import process_file as embed_file

    encoder = encoder or load_encoder(config.model, "cpu")
    plan = plan_embed_run(config, encoder)
    for f in plan.chunks.files:
        embed_file(f.file_index, plan, encoder)
    return finish_embed_run(plan)


def rerecord(root: Path, relative: str) -> None:
    """Record the current size and sha256 of ``ROOT/relative`` (a chunks or embeddings
    part) in its stage's manifest, as if the stage had written it so: for tests of what
    a reader does with a part whose checksum matches but whose content is wrong."""
    from dataclasses import replace

    from tda.schemas import EmbedManifest, Manifest
    from tda.schemas.manifest import StoredFile

    data = (root / relative).read_bytes()
    entry = StoredFile(relative, hashlib.sha256(data).hexdigest(), len(data))
    stage, parse = (
        ("embeddings", EmbedManifest.from_json)
        if relative.startswith("embeddings/")
        else ("chunks", Manifest.from_json)
    )
    path = root / stage / "manifest.json"
    manifest = parse(path.read_text())
    files = tuple(
        replace(f, parts=tuple(entry if p.path == relative else p for p in f.parts))
        for f in manifest.files
    )
    path.write_text(replace(manifest, files=files).to_json())


def clustered(n: int, dim: int, seed: int = 0, centers: int = 200) -> np.ndarray:
    """Unit vectors around random centres: the shape real embeddings have."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, dim)).astype(np.float32)
    x = c[rng.integers(0, centers, n)] + 0.35 * rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float16).astype(np.float32)  # what the embeddings table stores


def synthetic_root(root: Path, vectors: np.ndarray, files: int) -> list[int]:
    """A build root with chunks + embeddings for ``vectors`` split over ``files`` input
    files (as if chunked and embedded); returns the chunk ids in order."""
    from tda.attribution.io.parts import parquet_write_options
    from tda.schemas import (
        CHUNK_SCHEMA,
        DEFAULT_CODEC,
        ChunkingPolicy,
        ContextPolicy,
        EmbedCounts,
        EmbedManifest,
        EncoderInfo,
        FileCounts,
        InputFile,
        Manifest,
        Pooling,
        ReadOptions,
        TokenizerInfo,
        embedding_schema,
        vectors_to_arrow,
    )
    from tda.schemas.manifest import StoredFile

    def stored(relative: str) -> StoredFile:
        data = (root / relative).read_bytes()
        return StoredFile(relative, hashlib.sha256(data).hexdigest(), len(data))

    n, dim = vectors.shape
    bounds = np.linspace(0, n, files + 1).astype(int)
    inputs, counts, ecounts, all_ids = [], [], [], []
    (root / "chunks").mkdir(parents=True)
    (root / "embeddings").mkdir()
    for f in range(files):
        lo, hi = int(bounds[f]), int(bounds[f + 1])
        ids = [DEFAULT_CODEC.encode(0, f, i) for i in range(hi - lo)]
        all_ids += ids
        rows = [
            dict(chunk_id=c, source=f"src{f % 3}", doc_id=f"doc{f}-{i // 10}", record_index=i // 10,
                 chunk_index=i % 10, token_start=0, token_end=1, char_start=0, char_end=5,
                 n_tokens=1, text=f"chunk {c}")
            for i, c in enumerate(ids)
        ]  # fmt: skip
        pq.write_table(
            pa.Table.from_pylist(rows, schema=CHUNK_SCHEMA),
            root / "chunks" / f"part-{f:06d}.parquet",
            row_group_size=8192,
        )
        emb = pa.Table.from_arrays(
            [
                pa.array(ids, pa.int64()),
                vectors_to_arrow(vectors[lo:hi]),
                pa.array([[0]] * (hi - lo), pa.list_(pa.uint16())),
                pa.array([[1.0]] * (hi - lo), pa.list_(pa.float16())),
            ],
            schema=embedding_schema(dim),
        )
        pq.write_table(  # as the embed stage writes them
            emb,
            root / "embeddings" / f"part-{f:06d}.parquet",
            row_group_size=8192,
            **parquet_write_options(emb.schema, ("vector",)),
        )
        inputs.append(InputFile(f, f"/corpus/f{f}.jsonl", "jsonl", 1))
        # every part listed with its sha256 and size, as the stages record them
        n_rows, chunk_part = hi - lo, stored(f"chunks/part-{f:06d}.parquet")
        counts.append(FileCounts(f, n_rows, n_rows, n_rows, n_rows, {}, parts=(chunk_part,)))
        embed_part = stored(f"embeddings/part-{f:06d}.parquet")
        ecounts.append(EmbedCounts(f, n_rows, n_rows, n_rows, 0, 1, 1, 0, parts=(embed_part,)))
    tok = TokenizerInfo("t", "huggingface", "t", "sha256:t", 10)
    chunks = Manifest(
        "0.1.0",
        DEFAULT_CODEC,
        0,
        tok,
        ReadOptions(),
        ChunkingPolicy(),
        tuple(inputs),
        tuple(counts),
    )
    (root / "chunks" / "manifest.json").write_text(chunks.to_json())
    chunk_sha = hashlib.sha256((root / "chunks" / "manifest.json").read_bytes()).hexdigest()
    (root / "embeddings" / "concepts.json").write_text('{"known": ["c0"], "harmful": []}')
    enc = EncoderInfo("builtin", "builtin:none", "sha256:e", "sha256:t", dim, 1, 1, 256, 1)
    embed = EmbedManifest(
        "0.1.0", enc, Pooling(), ContextPolicy(256, 64), dim, 1024, chunk_sha, tuple(ecounts),
        stored("embeddings/concepts.json"),
    )  # fmt: skip
    (root / "embeddings" / "manifest.json").write_text(embed.to_json())
    return all_ids


# Beam options for the DirectRunner with two worker processes (the tests that check a
# multi-process run writes what an in-process run writes).
MULTI_PROCESS = [
    "--runner=DirectRunner",
    "--direct_running_mode=multi_processing",
    "--direct_num_workers=2",
]
