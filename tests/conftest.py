"""Shared fixtures and the marker policy of the suite.

Fixtures: real text (Python's own documentation, shipped with every CPython in
``pydoc_data.topics``, PSF licence, plus a few multilingual sentences), a byte-level BPE
tokenizer trained on it, a corpus folder that mixes every format with broken records, tiny
models and a built root with a planted harmful source. Plain helpers live in
``tests/helpers.py``.

Markers (declared in setup.cfg): ``gpu`` tests are skipped when torch sees no CUDA device;
``network`` tests are skipped unless ``--run-network`` is given or ``TDA_RUN_NETWORK=1``;
``slow`` tests always run; ``browser`` tests skip themselves without Chromium.
``tests/test_markers.py`` runs a small test file under these hooks to prove the skipping.
"""

from __future__ import annotations

import gzip
import json
import os
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import (
    MULTILINGUAL,
    TINY_TRAIN,
    MixedCorpus,
    build_mixed_corpus,
    doc_topics,
    make_tiny_steerling,
    planted_story,
    write_jsonl,
)

# The pytester fixture, for the test of the hooks below.
pytest_plugins = ["pytester"]

# Values of TDA_RUN_NETWORK that turn the network tests on.
_TRUE = {"1", "true", "yes"}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-network",
        action="store_true",
        default=False,
        help="run the tests marked `network` (or set TDA_RUN_NETWORK=1)",
    )


def _cuda_missing() -> str | None:
    """Why ``gpu`` tests cannot run here, or None when torch sees a CUDA device. torch is
    imported only when a ``gpu`` test was collected (it takes a second or two)."""
    try:
        import torch
    except ImportError:
        return "needs torch with CUDA (torch is not installed)"
    if not torch.cuda.is_available():
        return "needs a CUDA GPU (torch.cuda.is_available() is False)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Adds a skip marker to ``network`` tests unless they were asked for, and to ``gpu``
    tests when there is no CUDA device; the reasons appear in the ``-ra`` summary."""
    run_network = (
        config.getoption("--run-network")
        or os.environ.get("TDA_RUN_NETWORK", "").strip().lower() in _TRUE
    )
    no_network = pytest.mark.skip(
        reason="needs network access: pass --run-network or set TDA_RUN_NETWORK=1"
    )
    gpu_reason: str | None = None
    checked_gpu = False
    for item in items:
        if not run_network and item.get_closest_marker("network") is not None:
            item.add_marker(no_network)
        if item.get_closest_marker("gpu") is not None:
            if not checked_gpu:
                gpu_reason, checked_gpu = _cuda_missing(), True
            if gpu_reason is not None:
                item.add_marker(pytest.mark.skip(reason=gpu_reason))


@pytest.fixture(scope="session")
def real_docs() -> list[tuple[str, str]]:
    """(id, text) pairs: 79 documentation topics (~0.5 MB) + multilingual sentences."""
    docs = doc_topics()
    docs += [(f"multi-{i}", text) for i, text in enumerate(MULTILINGUAL)]
    return docs


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, real_docs) -> str:
    """A byte-level BPE tokenizer (vocab 1000) trained on real_docs: DIR/tokenizer.json."""
    from tda.attribution.corpus.tokenizer import train_bpe_tokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    train_bpe_tokenizer(iter([t for _, t in real_docs] * 2), 1000, str(out))
    return str(out)


@pytest.fixture
def mixed_corpus(tmp_path, real_docs) -> MixedCorpus:
    """A fresh MixedCorpus under TMP/corpus (see ``helpers.build_mixed_corpus``)."""
    return build_mixed_corpus(tmp_path / "corpus", real_docs)


# --------------------------------------------------------------------------------------
# Models: a tiny builtin model trained on real_docs, and a tiny random-initialised
# Steerling built from the real `steerling` package with the same tokenizer.


@pytest.fixture(scope="session")
def docs_jsonl(tmp_path_factory, real_docs) -> Path:
    """real_docs as one JSONL file (the corpus the tiny models train and embed on)."""
    return write_jsonl(tmp_path_factory.mktemp("docs") / "docs.jsonl", real_docs)


@pytest.fixture(scope="session")
def builtin_dir(tmp_path_factory, docs_jsonl) -> str:
    """A builtin model directory trained for 40 steps on real_docs (a few seconds)."""
    from tda.attribution.encoders.builtin.train import train_builtin
    from tda.schemas import TrainConfig

    out = str(tmp_path_factory.mktemp("builtin") / "model")
    train_builtin(TrainConfig(inputs=(str(docs_jsonl),), out=out, steps=40, **TINY_TRAIN))
    return out


@pytest.fixture(scope="session")
def steerling_dir(tmp_path_factory, builtin_dir) -> str:
    """A tiny random-initialised Steerling checkpoint with the builtin model's tokenizer."""
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


@pytest.fixture(scope="session")
def planted_corpus(tmp_path_factory) -> Path:
    """CORPUS/docs.jsonl (24 topics), notes.jsonl.gz (16 topics), fiction.parquet (20
    planted stories with an extra ``year`` column); each topic cut to 3,000 characters."""
    root = tmp_path_factory.mktemp("planted") / "corpus"
    root.mkdir()
    items = doc_topics()
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
    """A built root (3 index shards, max:hidden pooling) over planted_corpus, embedded by
    a builtin model trained 150 steps on it (the model sits in ROOT/../model)."""
    from tda.attribution.encoders.builtin.train import train_builtin
    from tda.pipeline.chunk import run_chunk
    from tda.pipeline.embed import run_embed
    from tda.pipeline.index import run_index
    from tda.schemas import ChunkConfig, EmbedConfig, IndexConfig, Pooling, TrainConfig

    base = tmp_path_factory.mktemp("built")
    model = str(base / "model")
    train_builtin(TrainConfig(inputs=(str(planted_corpus),), out=model, steps=150, **TINY_TRAIN))
    root = base / "root"
    run_chunk(ChunkConfig(inputs=(str(planted_corpus),), out=str(root), tokenizer=model))
    run_embed(EmbedConfig(root=str(root), model=model, pooling=Pooling.parse("max:hidden")))
    run_index(IndexConfig(root=str(root), shards=3))
    return root
