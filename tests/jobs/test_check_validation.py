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
        "methods": [{"method": "a top-10", **method}, {"method": "oracle", **method},
                    {"method": "random", **method, "in_prune_list": None}],
        "retrain_self_agreement": {"a top-10": 0.3, "oracle": 0.7},
    }  # fmt: skip
    table = markdown(result)
    assert "| a top-10 | 0.4 | 0.3 |" in table and "| oracle | 0.4 | 0.7 |" in table
    assert "| random | - | 2.000 | 9.000 | 0.500 |" in table
    assert "| random | 0.4" not in table
