"""The check's validation against retraining reads ``make eval`` runs whose builtin models
are format 1 (before the pooling statistics): :func:`format_2` must give a copy this tda
loads, with the file's weights, computing the same next-token logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load, save

from tda.attribution.encoders import load_encoder
from tda.attribution.encoders.base import EncoderError
from tda.jobs.quality.check_validation import format_2


def _as_format_1(model: Path, out: Path) -> Path:
    """``model`` written as format 1 wrote it: no pooling statistics, format_version 1."""
    import hashlib

    out.mkdir()
    state = load((model / "model.safetensors").read_bytes())
    del state["pool_mean"], state["pool_scale"]
    weights = save(state)
    (out / "model.safetensors").write_bytes(weights)
    config = json.loads((model / "config.json").read_text())
    config.update(
        format_version=1, weights_fingerprint="sha256:" + hashlib.sha256(weights).hexdigest()
    )
    (out / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "concepts.yaml"):
        if (model / name).exists():
            (out / name).write_bytes((model / name).read_bytes())
    return out


def test_a_format_1_model_is_read_through_a_copy_with_the_same_logits(builtin_dir, tmp_path):
    old = _as_format_1(Path(builtin_dir), tmp_path / "old")
    with pytest.raises(EncoderError, match="format 1 is not 2"):
        load_encoder(str(old), "cpu")
    assert format_2(Path(builtin_dir), tmp_path / "scratch") == Path(builtin_dir)  # as it is
    copy = format_2(old, tmp_path / "scratch")
    assert copy != old and json.loads((old / "config.json").read_text())["format_version"] == 1
    converted, original = load_encoder(str(copy), "cpu"), load_encoder(builtin_dir, "cpu")
    assert torch.equal(converted.model.pool_mean, torch.zeros_like(original.model.pool_mean))
    ids = torch.as_tensor(converted.tokenizer.encode_batch(["The sea was calm."])[0].ids[None])
    with torch.no_grad():
        a = converted.forward(ids, with_logits=True).logits
        b = original.forward(ids, with_logits=True).logits
    assert torch.equal(a, b)


def test_the_validation_table_reports_the_yardstick_s_own_agreement():
    """The markdown gives each method's agreement with its retraining and, beside it, how
    far retrainings of the same counterfactual agree with each other (the ceiling)."""
    from tda.jobs.quality.check_validation import markdown

    method = {"facts": 3, "in_prune_list": 1.0, "check_mean_drop": 2.0,
              "retrain_mean_drop": 9.0, "spearman_per_fact": 0.5,
              "spearman_vs_mean_retrain": 0.4}  # fmt: skip
    result = {
        "facts": 3, "method_ranking_spearman": 1.0, "oracle_separated": 0.5,
        "check_seconds_per_fact": 1.0,
        "retrain_seeds": 3,
        "methods": [{"method": "a top-10", **method, "retrainings": 3, "seed_agreement": 0.9,
                     "spearman_vs_one_retraining": 0.2, "spearman_union": 0.55},
                    {"method": "oracle", **method},
                    {"method": "random", **method, "in_prune_list": None}],
        "retrain_self_agreement": {"a top-10": 0.3, "oracle": 0.7},
    }  # fmt: skip
    table = markdown(result)
    assert "| a top-10 | 0.4 | 0.3 |" in table and "| oracle | 0.4 | 0.7 |" in table
    assert "| random | - | 2.000 | 9.000 | 0.500 |" in table
    assert "| random | 0.4" not in table
    # with seeds: the check against the run's one retraining and the seeds' agreement; and
    # the check of the whole removal, beside the check of each fact's set
    assert "| a top-10 | 3 | 0.2 | 0.9 |" in table and "| a top-10 | 0.5 | 0.55 |" in table
    assert "| oracle | 3 |" not in table
    assert "tokenizer learned again" not in table and "one fact's true sources" not in table
    result["single"] = {"facts": 2, "retrain_drops": [3.0, 5.0], "retrain_mean_drop": 4.0,
                        "spearman_check": 1.0, "spearman_union_retrain": -1.0,
                        "check_mean_drop": 2.5, "union_retrain_mean_drop": 9.0}  # fmt: skip
    single = markdown(result)
    assert "| one fact's true sources removed at a time (2 facts, one retraining each) |" in single
    assert "| the check (the oracle's set) | 2.5 | 1.0 |" in single
    assert "| the retraining without every fact's sources at once | 9.0 | -1.0 |" in single
    del result["single"]
    result["methods"][1]["same_tokenizer"] = False  # a run from before --tokenizer
    assert "tokenizer learned again on the pruned corpus (not the original's): oracle." in (
        markdown(result)
    )


def _trained(model: Path, seed: int, steps: int = 1200, tokenizer: str | None = "orig") -> None:
    """A model folder as far as :func:`seeded` reads it: training.json's recipe."""
    model.mkdir(parents=True)
    settings = {"seed": seed, "steps": steps, "lr": 0.003, "max_seq": 128, "d_model": 128,
                "tokenizer": tokenizer}  # fmt: skip
    (model / "training.json").write_text(json.dumps({"settings": settings}))


def test_seeded_retrains_each_set_with_the_next_seeds_and_keeps_what_is_there(
    tmp_path, monkeypatch
):
    """--retrain-seeds: each row's pruned corpus is trained again with the run's recipe and
    the next seeds; a model already trained with that seed and recipe is not trained again,
    one with another recipe is."""
    from tda.jobs.quality import check_validation
    from tda.jobs.quality.commands import Tda

    calls = []

    def train(self, corpus: Path, model: Path) -> None:
        calls.append((corpus, model.name, self.training))
        _trained(model, self.training.seed, self.training.steps, self.training.tokenizer)

    monkeypatch.setattr(Tda, "train", train)
    slots = {}
    for n, row in enumerate(("a top-10", "oracle")):
        cf = tmp_path / f"counterfactual-{n}"
        (cf / "corpus").mkdir(parents=True)
        _trained(cf / "model", seed=5)
        slots[row] = cf / "model"
    _trained(tmp_path / "counterfactual-1" / "model-seed-6", seed=6)  # kept
    _trained(tmp_path / "counterfactual-1" / "model-seed-7", seed=7, steps=10)  # retrained

    models = check_validation.seeded(slots, ["a top-10", "oracle"], 3, 1)
    assert [m.name for m in models["oracle"]] == ["model", "model-seed-6", "model-seed-7"]
    assert models["a top-10"][0] == slots["a top-10"]
    trained = sorted((c.parent.name, name, t.seed, t.steps) for c, name, t in calls)
    assert trained == [
        ("counterfactual-0", "model-seed-6", 6, 1200),
        ("counterfactual-0", "model-seed-7", 7, 1200),
        ("counterfactual-1", "model-seed-7", 7, 1200),
    ]
    # the run's recipe, its tokenizer included (the original model's)
    assert all(t.lr == 0.003 and t.max_seq == 128 and t.tokenizer == "orig" for _, _, t in calls)
    calls.clear()
    check_validation.seeded(slots, ["a top-10", "oracle"], 3, 1)
    assert calls == []  # everything is there now
    assert check_validation.seeded(slots, ["oracle"], 1, 1) == {"oracle": [slots["oracle"]]}


def test_singles_retrain_without_one_fact_s_sources_at_a_time(tmp_path, monkeypatch):
    """--retrain-each: per fact, the original's recipe and tokenizer retrained on the
    corpus less that fact's sources alone (its own prune list); a model already trained
    with that recipe and that list is kept, one whose list differs is trained again."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tda.jobs.quality import check_validation
    from tda.jobs.quality.chunks import ChunkTable
    from tda.jobs.quality.commands import Tda
    from tda.jobs.quality.facts import make_facts
    from tda.jobs.quality.outputs import Query

    calls = []

    def train(self, corpus: Path, model: Path) -> None:
        calls.append((model.parent.name, self.training))
        _trained(model, self.training.seed, self.training.steps, self.training.tokenizer)

    monkeypatch.setattr(Tda, "train", train)
    monkeypatch.setattr(Tda, "run", lambda self, *args: None)  # tda prune apply
    out = tmp_path / "run"
    _trained(out / "model", seed=0)
    (out / "corpus").mkdir()
    (tmp_path / "root" / "chunks").mkdir(parents=True)
    rows = {"chunk_id": [1, 2, 3], "source": ["s"] * 3, "doc_id": ["a", "b", "c"],
            "record_index": [0] * 3, "char_start": [0] * 3, "char_end": [1] * 3,
            "text": ["x", "y", "z"]}  # fmt: skip
    pq.write_table(pa.table(rows), tmp_path / "root" / "chunks" / "part-000000.parquet")
    table = ChunkTable(tmp_path / "root")
    facts = make_facts(3, 0)
    queries = [Query("verbatim", f, f.verbatim_prompt, f" {f.place}") for f in facts[:2]]

    models = check_validation.singles(out, {queries[0]: [1], queries[1]: [2, 3]},
                                      tmp_path / "root", table, 1)  # fmt: skip
    assert models == {q: out / f"single-{q.fact.index}" / "model" for q in queries}
    assert sorted(name for name, _ in calls) == [f"single-{f.index}" for f in facts[:2]]
    assert {t.tokenizer for _, t in calls} == {str(out / "model")}
    assert {(t.seed, t.steps, t.lr, t.max_seq) for _, t in calls} == {(0, 1200, 0.003, 128)}
    pruned = pq.read_table(out / f"single-{facts[1].index}" / "prune.parquet")
    assert sorted(pruned["chunk_id"].to_pylist()) == [2, 3]
    calls.clear()
    check_validation.singles(out, {queries[0]: [1], queries[1]: [2, 3]}, tmp_path / "root",
                             table, 1)  # fmt: skip
    assert calls == []  # both kept
    check_validation.singles(out, {queries[0]: [1, 2]}, tmp_path / "root", table, 1)
    assert [name for name, _ in calls] == [f"single-{facts[0].index}"]  # another set


def test_union_drops_unlearn_the_whole_removal_on_a_copy(builtin_dir, real_docs):
    """The check of a retraining's whole removal: unlearning the documents that hold the
    answers lowers every answer's log-probability, more than unlearning unrelated text
    does, and the original model is untouched."""
    from types import SimpleNamespace

    from tda.jobs.quality.check_validation import union_drops
    from tda.schemas import CheckSettings

    encoder = load_encoder(builtin_dir, "cpu")
    tokenizer = encoder.load_tokenizer()
    texts = [text for _, text in real_docs[:4]]
    queries = []
    for text in texts[:2]:
        words = text.split(" ")
        place = " ".join(words[12:16])
        queries.append(
            SimpleNamespace(prompt=" ".join(words[:12]), fact=SimpleNamespace(place=place))
        )
    weights = {k: v.clone() for k, v in encoder.model.state_dict().items()}
    settings = CheckSettings(steps=2, lr=0.002)
    own = union_drops(encoder, tokenizer, queries, {0, 1}, texts.__getitem__, settings)
    other = union_drops(encoder, tokenizer, queries, {2, 3}, texts.__getitem__, settings)
    assert all(o > 0 for o in own) and sum(own) > sum(other), (own, other)
    assert all(torch.equal(v, encoder.model.state_dict()[k]) for k, v in weights.items())
