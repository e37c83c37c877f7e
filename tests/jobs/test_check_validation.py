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
