"""The builtin model: concept taggers, training (loss falls, the known head beats chance on
held-out text), deterministic safetensors saving, fingerprint checks; the Steerling
loader's refusals."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tda.attribution.encoders import EncoderError, load_encoder
from tda.attribution.encoders.builtin.concepts import (
    FINAL,
    PENDING,
    ConceptSetError,
    load_concept_set,
    positives,
)
from tda.attribution.encoders.builtin.train import auroc, train_builtin
from tda.schemas import ConfigError, TrainConfig
from tests.helpers import TINY_TRAIN


def test_default_concept_set():
    cs = load_concept_set()
    assert 40 <= len(cs) <= 64
    assert {"violence", "toxicity"} <= cs.harmful
    assert len(set(cs.names)) == len(cs.names)


def test_concept_spans_and_token_labels():
    cs = load_concept_set()
    text = "The White Whale! Ahab raised his harpoon.\nraise ValueError('bad')"
    spans = dict(zip(cs.names, cs.spans(text), strict=True))
    assert (4, 15) in spans["whaling"] or (10, 15) in spans["whaling"]
    assert any(text[s:e] == "harpoon" for s, e in spans["weapons"])
    assert any("ValueError" in text[s:e] for s, e in spans["python_errors"])
    assert not spans["python_errors"] or all(
        "raised" not in text[s:e] for s, e in spans["python_errors"]
    )
    # tokens: one per character run of 3; labels mark tokens overlapping a match
    starts = np.arange(0, len(text), 3)
    labels = cs.label_tokens(text, starts)
    c = cs.names.index("weapons")
    h = text.index("harpoon")
    marked = {int(i) for i in np.nonzero(labels[:, c])[0]}
    assert marked == set(range(h // 3, (h + 7 - 1) // 3 + 1))
    # the token holding the match's last character is FINAL, the earlier ones PENDING
    last = (h + 7 - 1) // 3
    assert labels[last, c] == FINAL
    assert set(labels[sorted(marked - {last}), c]) == {PENDING}
    y, counts = positives(labels, causal=True)
    assert set(np.nonzero(y[:, c])[0]) == {last}
    assert not counts[sorted(marked - {last}), c].any() and counts[last, c]
    y, counts = positives(labels, causal=False)
    assert set(np.nonzero(y[:, c])[0]) == marked and counts.all()


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("concepts: [{name: a, terms: [x]}, {name: a, terms: [y]}]", "appears twice"),
        ("concepts: [{name: Bad Name, terms: [x]}]", "lowercase"),
        ("concepts: [{name: a}]", "no terms or patterns"),
        ("concepts: [{name: a, patterns: ['(unclosed']}]", "bad regex"),
        ("concepts: [{name: a, patterns: ['x*']}]", "empty string"),
        ("concepts: []", "empty"),
        ("version: 2\nconcepts: [{name: a, terms: [x]}]", "version"),
        ("concepts: {a: 1", "not valid YAML"),
    ],
)
def test_bad_concept_sets_are_refused(tmp_path, yaml_text, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConceptSetError, match=message):
        load_concept_set(str(path))


def test_auroc_reference():
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert auroc(np.array([1.0, 1.0]), np.array([0, 1])) == 0.5
    assert auroc(np.array([0.2, 0.3]), np.array([1, 1])) is None


def test_model_directory_and_fingerprint(builtin_dir):
    d = Path(builtin_dir)
    assert {p.name for p in d.iterdir()} >= {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "concepts.yaml",
        "training.json",
    }
    encoder = load_encoder(builtin_dir, device="cpu")
    weights = (d / "model.safetensors").read_bytes()
    assert encoder.info.fingerprint == "sha256:" + hashlib.sha256(weights).hexdigest()
    assert encoder.info.name == "builtin" and encoder.info.n_known == len(encoder.concept_names)
    assert {"violence", "toxicity"} <= encoder.harmful_concepts
    # safetensors: a JSON header then raw tensors; no pickle opcodes anywhere
    header_len = int.from_bytes(weights[:8], "little")
    assert json.loads(weights[8 : 8 + header_len])["__metadata__"]["kind"] == "tda.builtin"


def _token_effect(model_dir: str):
    """A model directory -> (its ConceptLM, the largest change of its known-concept logits
    when h stays fixed and only the input token embeddings the head sees change)."""
    model = load_encoder(model_dir, device="cpu").model
    ids = torch.randint(
        0, model.cfg.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0)
    )
    with torch.inference_mode():
        x0 = model.tok_emb(ids)
        h = model.hidden(None, x0)
        effect = (model.heads(h, x0)[0] - model.heads(h, x0.flip(1))[0]).abs().max()
    return model, float(effect)


def test_known_hidden_adds_an_mlp_over_the_token_embedding(builtin_dir, docs_jsonl, tmp_path):
    """`tda model train --known-hidden N` gives the known-concept head an MLP over [h, input
    token embedding] (a linear head on h alone capped the demo's held-out AUROC near 0.85),
    recorded in config.json and training.json and loaded back; the default (0) keeps the
    linear head on h, and a model saved before the option existed loads as one."""
    default, effect = _token_effect(builtin_dir)
    assert default.cfg.known_hidden == 0 and default.known_mlp is None and effect == 0.0

    out = tmp_path / "mlp"
    train_builtin(
        TrainConfig(inputs=(str(docs_jsonl),), out=str(out), steps=5, known_hidden=16, **TINY_TRAIN)
    )
    assert json.loads((out / "config.json").read_text())["model"]["known_hidden"] == 16
    assert json.loads((out / "training.json").read_text())["settings"]["known_hidden"] == 16
    model, effect = _token_effect(str(out))
    assert model.cfg.known_hidden == 16
    assert model.known_mlp[0].in_features == 2 * TINY_TRAIN["d_model"]
    assert model.known_mlp[0].out_features == 16
    assert effect > 0.0

    # config.json written without the field (the fingerprint covers the weights only)
    import shutil

    old = tmp_path / "old"
    shutil.copytree(builtin_dir, old)
    config = json.loads((old / "config.json").read_text())
    del config["model"]["known_hidden"]
    (old / "config.json").write_text(json.dumps(config))
    loaded = load_encoder(str(old), device="cpu").model
    assert loaded.cfg.known_hidden == 0 and loaded.known_mlp is None


def test_corrupt_weights_are_refused(builtin_dir, tmp_path):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(builtin_dir, copy)
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (copy / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(EncoderError, match="does not match the fingerprint"):
        load_encoder(f"builtin:{copy}")


def test_training_is_deterministic(docs_jsonl, tmp_path):
    fingerprints = [
        train_builtin(
            TrainConfig(
                inputs=(str(docs_jsonl),), out=str(tmp_path / f"m{i}"), steps=5, **TINY_TRAIN
            )
        ).fingerprint
        for i in range(2)
    ]
    assert fingerprints[0] == fingerprints[1]
    for name in ("model.safetensors", "config.json", "tokenizer.json", "training.json"):
        assert (tmp_path / "m0" / name).read_bytes() == (tmp_path / "m1" / name).read_bytes()


def test_training_with_a_given_tokenizer_keeps_its_token_ids(docs_jsonl, real_docs, tmp_path):
    """`tda model train --tokenizer MODEL`: a retraining on a pruned corpus keeps the
    original model's tokenizer (the same bytes, so the same ids for the same text), where
    a tokenizer learned on the pruned corpus would differ; on the original's own corpus it
    gives the original's weights bit for bit (the counterfactual's "nothing removed")."""
    from tests.helpers import write_jsonl

    def train(out, inputs, **kw):
        cfg = TrainConfig(inputs=(str(inputs),), out=str(tmp_path / out), steps=3, **TINY_TRAIN)
        return train_builtin(replace(cfg, **kw)).fingerprint

    original = train("original", docs_jsonl)
    pruned = write_jsonl(tmp_path / "pruned.jsonl", real_docs[: len(real_docs) // 3])
    train("relearned", pruned)
    train("kept", pruned, tokenizer=str(tmp_path / "original"))
    tokenizer = (tmp_path / "original" / "tokenizer.json").read_bytes()
    assert (tmp_path / "kept" / "tokenizer.json").read_bytes() == tokenizer
    assert (tmp_path / "relearned" / "tokenizer.json").read_bytes() != tokenizer
    settings = json.loads((tmp_path / "kept" / "training.json").read_text())["settings"]
    assert settings["tokenizer"] == str(tmp_path / "original")
    again = train("again", docs_jsonl, tokenizer=str(tmp_path / "original" / "tokenizer.json"))
    assert again == original
    with pytest.raises(ConfigError, match=r"tiktoken encoding, not a tokenizer\.json"):
        train("bad", docs_jsonl, tokenizer="tiktoken:cl100k_base")
    with pytest.raises(
        ConfigError, match=r"not found: .*none \(give a tokenizer\.json, a directory holding one\)$"
    ):
        train("bad", docs_jsonl, tokenizer=str(tmp_path / "none"))


@pytest.mark.slow
def test_training_learns_language_and_concepts(docs_jsonl, tmp_path):
    """Loss falls, and the known-concept head predicts the tagger labels on held-out text
    well above chance (AUROC 0.5)."""
    result = train_builtin(
        TrainConfig(
            inputs=(str(docs_jsonl),),
            out=str(tmp_path / "m"),
            steps=300,
            vocab_size=800,
            d_model=64,
            n_layers=2,
            max_seq=128,
            batch_size=16,
            holdout=0.1,
        )
    )
    report = result.report
    assert report["lm_loss_last"] < report["lm_loss_first"] - 1.0
    held = report["heldout"]
    assert held["tokens"] > 10_000 and held["concepts_scored"] >= 10
    assert held["concept_auroc_mean"] > 0.7, held["concept_auroc"]
    assert held["lm_loss"] < report["lm_loss_first"]


def test_train_config_validation(docs_jsonl):
    for bad in ({"steps": 0}, {"holdout": 0.7}, {"lr": 0}, {"max_seq": 4}, {"known_hidden": -1}):
        with pytest.raises(ConfigError):
            TrainConfig(inputs=(str(docs_jsonl),), out="x", **bad)
    with pytest.raises(ConfigError, match="divisible"):
        train_builtin(
            TrainConfig(inputs=(str(docs_jsonl),), out="x", d_model=30, n_heads=4, steps=1)
        )


def test_builtin_forward_refuses_windows_beyond_its_context(builtin_dir):
    encoder = load_encoder(builtin_dir, device="cpu")
    with pytest.raises(EncoderError, match="exceed"):
        encoder.forward(torch.zeros(1, encoder.info.max_window + 1, dtype=torch.long))


def test_steerling_8b_shape_is_refused_on_cpu(tmp_path):
    pytest.importorskip("steerling")
    config = {
        "interpretable": True,
        "n_layers": 32,
        "n_head": 32,
        "n_embd": 4096,
        "block_size": 4096,
        "vocab_size": 100281,
        "concept": {"n_concepts": 33732, "n_unknown_concepts": 101196},
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(EncoderError, match="needs a CUDA GPU"):
        load_encoder(f"steerling:{tmp_path}", device="cpu")


def test_steerling_without_concept_heads_is_refused(tmp_path):
    pytest.importorskip("steerling")
    (tmp_path / "config.json").write_text(json.dumps({"n_layers": 2, "n_embd": 64}))
    with pytest.raises(EncoderError, match="not an interpretable Steerling"):
        load_encoder(f"steerling:{tmp_path}", device="cpu")


def test_steerling_concepts_cover_its_features(steerling_dir):
    """known_features is exactly sum sigmoid(logit) x E over the reported concepts, so
    the reported top-k are all the concepts the features use (topk = topk_features)."""
    encoder = load_encoder(f"steerling:{steerling_dir}", device="cpu")
    ids = torch.randint(0, 500, (2, 100), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        acts = encoder.forward(ids)
        vectors = encoder.known_embeddings(acts.known_ids)
    assert acts.known_ids.shape[-1] == 32
    rebuilt = (acts.known_weights.unsqueeze(-1) * vectors).sum(-2)
    torch.testing.assert_close(rebuilt, acts.known_features, atol=1e-5, rtol=1e-4)
    assert encoder.info.block_align == 64 and not encoder.pad_safe


def _self_search_share(root: Path) -> tuple[float, int]:
    """Exact cosine search of every stored (float16) chunk vector against all others: the
    share whose nearest chunk is itself or a chunk with identical text."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tda.schemas import EmbedManifest, vectors_from_arrow

    manifest = EmbedManifest.from_json((root / "embeddings" / "manifest.json").read_text())
    table = pa.concat_tables(
        pq.read_table(root / "embeddings" / f"part-{f.file_index:06d}.parquet")
        for f in manifest.files
    )
    texts = pa.concat_tables(pq.read_table(p) for p in sorted((root / "chunks").glob("part-*")))
    text = dict(zip(texts["chunk_id"].to_pylist(), texts["text"].to_pylist(), strict=True))
    ids = table["chunk_id"].to_pylist()
    v = vectors_from_arrow(table["vector"], manifest.dim).astype(np.float32)
    first = np.argmax(v @ v.T, axis=1)  # ties: the lowest row, as a flat index breaks them
    ok = sum(first[i] == i or text[ids[first[i]]] == text[ids[i]] for i in range(len(ids)))
    return ok / len(ids), len(ids)


def test_self_search_finds_each_chunk_with_a_briefly_trained_model(
    tmp_path, builtin_dir, real_docs
):
    """Issue 19: with a model trained 40 steps, pooled hidden states of different chunks
    coincided at float16 precision (another chunk came first at cosine 1.0000 for about
    half of them); centred and scaled by the model's statistics they stay apart."""
    from tda.schemas import EmbedConfig
    from tests.helpers import chunk_root, embed_root, write_jsonl

    corpus = write_jsonl(tmp_path / "corpus.jsonl", [(k, v[:4000]) for k, v in real_docs[:12]])
    root = tmp_path / "root"
    chunk_root(root, [corpus], builtin_dir)
    embed_root(EmbedConfig(root=str(root), model=builtin_dir))
    share, n = _self_search_share(root)
    assert n > 150
    assert share >= 0.99


def test_trained_model_records_its_calibration_labels_and_shares(builtin_dir):
    """tda model train stores what it measured on held-out text: per-concept calibration
    (used by scans), a label per unknown concept, the logit shares and pooling statistics."""
    encoder = load_encoder(f"builtin:{builtin_dir}", "cpu")
    training = json.loads((Path(builtin_dir) / "training.json").read_text())
    held = training["heldout"]
    share = held["logit_share"]
    assert share["known"] + share["unknown"] + share["residual"] == pytest.approx(1, abs=1e-3)
    assert share["chunks"] > 0 and "definition" in share
    assert set(held["targets"]) >= {"known_share >= 0.30", "residual_share <= 0.25"}
    assert len(encoder.unknown_labels) == encoder.info.n_unknown
    assert all(isinstance(x, str) and x for x in encoder.unknown_labels)
    assert encoder.concept_calibration  # concepts with held-out positives are calibrated
    for name, cal in encoder.concept_calibration.items():
        assert name in encoder.concept_names
        assert 0 <= cal.threshold <= 1 and cal.positives >= 1
    # pooling statistics were set (not the identity the model starts with)
    assert not torch.equal(encoder.model.pool_scale, torch.ones_like(encoder.model.pool_scale))


def test_concept_phase_reads_the_concepts_better_and_keeps_the_lm(docs_jsonl, tmp_path):
    """The concept phase (--head-epochs) refits the concept heads on the frozen model: the
    same training with it has the same held-out LM loss (the trunk and the LM head are not
    touched) and a better held-out AUROC of the named concepts; the known concepts still
    carry a share of the logit, and the phase is recorded."""
    small = dict(inputs=(str(docs_jsonl),), steps=120, vocab_size=800, d_model=64, n_layers=2,
                 max_seq=128, batch_size=16, holdout=0.1, known_only=0.35, known_topk=16,
                 known_hidden=64)  # fmt: skip
    plain = train_builtin(TrainConfig(out=str(tmp_path / "a"), **small)).report
    phased = TrainConfig(out=str(tmp_path / "b"), head_epochs=10, head_batches=16,
                         vector_epochs=4, **small)  # fmt: skip
    refit = train_builtin(phased).report
    a, b = plain["heldout"], refit["heldout"]
    assert b["lm_loss"] == pytest.approx(a["lm_loss"], abs=1e-6)
    assert b["concept_auroc_mean"] > a["concept_auroc_mean"] + 0.03, (a, b)
    assert b["logit_share"]["known"] > 0.1
    phase = refit["concept_phase"]
    assert phase["tokens"] > 10_000 and phase["head_epochs"] == 10
    assert "concept_phase" not in plain
    # the trunk is the same model: the weights outside the concept heads are equal
    from safetensors.torch import load_file

    wa, wb = (load_file(str(tmp_path / d / "model.safetensors")) for d in "ab")
    heads = ("known_", "unknown_")
    assert all(torch.equal(wa[k], wb[k]) for k in wa if not k.startswith(heads))
    assert not torch.equal(wa["known_emb"], wb["known_emb"])


def test_auroc_on_causal_labels_leaves_out_a_match_s_earlier_tokens():
    """A head that fires where a match ends (what a causal model can know) scores 1.0
    against causal labels, and is marked down against overlap labels for the match's
    earlier tokens, which it could not have seen coming; the positives counted differ."""
    from tda.attribution.encoders.builtin.train import _aurocs

    rng = np.random.default_rng(0)
    n = 400
    labels = np.zeros((n, 1), dtype=np.float32)
    starts = rng.choice(np.arange(0, n - 4, 4), size=60, replace=False)
    for s in starts:  # 3-token matches: two pending tokens, then the final one
        labels[s : s + 2, 0] = PENDING
        labels[s + 2, 0] = FINAL
    scores = np.where(labels == FINAL, 0.9, 0.1) + rng.random((n, 1)) * 0.01
    causal = _aurocs(scores, labels, ["c"], causal=True)
    overlap = _aurocs(scores, labels, ["c"], causal=False)
    assert causal["concept_auroc"]["c"] == 1.0 and causal["concept_positives"]["c"] == 60
    assert overlap["concept_positives"]["c"] == 180
    assert overlap["concept_auroc"]["c"] < 0.75
    assert causal["auroc_min"] == 1.0 and overlap["auroc_below_0.9"] == {"c": overlap["auroc_min"]}


@pytest.mark.parametrize("causal", [True, False])
def test_causal_labels_leave_a_match_s_earlier_tokens_out_of_the_concept_loss(causal):
    """With --causal-labels the concept loss has no gradient at a match's PENDING tokens
    (a causal model cannot know there that the match completes) and still learns from its
    FINAL token and from untagged tokens; with overlap labels every token counts."""
    from tda.attribution.encoders.builtin.model import BuiltinConfig, ConceptLM
    from tda.attribution.encoders.builtin.train import _losses

    torch.manual_seed(0)
    model = ConceptLM(BuiltinConfig(vocab_size=50, n_known=3, d_model=16, n_layers=1,
                                    n_heads=2, max_seq=16, n_unknown=8))  # fmt: skip
    ids = torch.randint(0, 50, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.bool)
    labels = torch.zeros(2, 12, 3)
    labels[0, 3:5, 1] = PENDING
    labels[0, 5, 1] = FINAL
    cfg = TrainConfig(inputs=("x",), out="unused", causal_labels=causal)
    _, _, concept, known_logits, _ = _losses(model, ids, labels, mask, cfg)
    (grad,) = torch.autograd.grad(concept, known_logits)
    pending = grad[0, 3:5, 1]
    assert (pending == 0).all() if causal else (pending != 0).all()
    assert grad[0, 5, 1] != 0 and grad[1, 3, 1] != 0 and grad[0, 3, 0] != 0
