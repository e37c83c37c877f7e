"""builtin: our own small Steerling-shaped concept-bottleneck causal LM.

Shape of the computation, per token (shapes for a batch of B windows of T tokens)::

    ids (B, T) -> token + position embeddings -> n_layers causal transformer blocks
      -> hidden h (B, T, D)
      -> known head:   l = W_k h + b_k [+ MLP([h, x0])] (B, T, C);  w = sigmoid(l);  top-k
                       known_features = sum_topk w_i * E_known[i]          (B, T, D)
      -> unknown head: u = W_u h (detached);  top-k of sigmoid(u)
                       unknown_features = sum_topk s_j * E_unknown[j]      (B, T, D)
      -> residual = h - known_features - unknown_features
      -> logits = (known_features + unknown_features + residual) @ E_tok.T  (tied)

so every logit splits exactly into per-concept contributions w_i * (E_known[i] . E_tok[y])
plus the unknown concepts' and the residual's (Steerling's ``epsilon``). The known head is
supervised by concept taggers (:mod:`tda.attribution.encoders.builtin.concepts`); the
unknown head learns to reconstruct what the known concepts leave out of h.

A model directory holds ``model.safetensors`` (weights; fingerprint = its sha256),
``config.json`` (kind ``tda.builtin``: architecture, concept names, tokenizer
fingerprint), ``tokenizer.json``, ``concepts.yaml`` (the concept set it was trained on)
and ``training.json`` (how training went). Loading never unpickles.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from tda.attribution.encoders import (
    ConceptActivations,
    ConceptEncoder,
    EncoderError,
    resolve_device,
)
from tda.schemas import ConfigError, EncoderInfo

if TYPE_CHECKING:
    from tda.attribution.corpus.tokenizer import TextTokenizer

__all__ = [
    "BUILTIN_KIND",
    "BuiltinConfig",
    "BuiltinEncoder",
    "ConceptLM",
    "load_builtin",
    "save_builtin",
]

BUILTIN_KIND = "tda.builtin"
# 2: pooling statistics in the weights; concept calibration and unknown-concept labels
# in config.json; the known concepts carry the prediction (trained through them).
FORMAT_VERSION = 2


@dataclass(frozen=True)
class BuiltinConfig:
    """Architecture of a builtin model (saved in config.json)."""

    vocab_size: int
    n_known: int  # known concepts = the concept set's size
    d_model: int = 128  # small enough to train on 2 CPU cores in minutes
    n_layers: int = 4
    n_heads: int = 4
    max_seq: int = 256  # context limit; training crops and embed windows use it
    n_unknown: int = 512  # learned concepts: a small SAE-like dictionary over h
    known_topk: int = 8  # a token rarely carries more than a few tagged concepts
    unknown_topk: int = 32
    mlp_ratio: int = 4
    # The known head also reads the input token's embedding (a linear term beside h's):
    # the taggers label words, and a 4-layer model's last hidden state is already about
    # the next token (docs/model.md: per-concept AUROC with and without it).
    token_head: bool = False
    # Width of a hidden layer in the known head, which then also reads [h, input token
    # embedding] through a GELU MLP added to its linear logits (0: none, the default, and
    # what models saved without the field have). A linear read of h caps the held-out
    # concept AUROC near 0.85 on the demo corpus whatever its training; an MLP of 256 on
    # the same frozen h and token embedding reaches 0.96 (docs/model.md).
    known_hidden: int = 0

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ConfigError(f"--d-model {self.d_model} must be divisible by {self.n_heads} heads")
        for name in ("vocab_size", "n_known", "d_model", "n_layers", "max_seq", "n_unknown"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.known_hidden < 0:
            raise ConfigError(f"known_hidden must be >= 0, got {self.known_hidden}")


class _Block(nn.Module):
    """Pre-norm transformer block with causal self-attention."""

    def __init__(self, cfg: BuiltinConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.ln_1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln_2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model),
            nn.GELU(),
            nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(D, dim=2)  # (B, T, D) each
        q, k, v = (t.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, D/H)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, D))
        return x + self.mlp(self.ln_2(x))


class ConceptLM(nn.Module):
    """The builtin concept-bottleneck LM (see the module docstring)."""

    def __init__(self, cfg: BuiltinConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_seq, cfg.d_model)
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.known_pred = nn.Linear(cfg.d_model, cfg.n_known)
        self.known_token = nn.Linear(cfg.d_model, cfg.n_known) if cfg.token_head else None
        self.known_mlp = (
            nn.Sequential(
                nn.Linear(2 * cfg.d_model, cfg.known_hidden),
                nn.GELU(),
                nn.Linear(cfg.known_hidden, cfg.n_known),
            )
            if cfg.known_hidden
            else None
        )
        self.known_emb = nn.Parameter(torch.empty(cfg.n_known, cfg.d_model))
        self.unknown_pred = nn.Linear(cfg.d_model, cfg.n_unknown)
        self.unknown_emb = nn.Parameter(torch.empty(cfg.n_unknown, cfg.d_model))
        # Pooling statistics of h over held-out text, set once training ends (identity
        # until then): see calibrate.hidden_statistics.
        self.register_buffer("pool_mean", torch.zeros(cfg.d_model))
        self.register_buffer("pool_scale", torch.ones(cfg.d_model))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
        nn.init.normal_(self.known_emb, std=0.02)
        nn.init.normal_(self.unknown_emb, std=0.02)

    def hidden(self, ids: torch.Tensor | None, embeds: torch.Tensor | None = None) -> torch.Tensor:
        """ids (B, T) or token embeddings (B, T, D) -> final hidden states (B, T, D)."""
        x = self.tok_emb(ids) if embeds is None else embeds
        T = x.shape[1]
        if self.cfg.max_seq < T:
            raise EncoderError(f"{T} tokens exceed the model's context of {self.cfg.max_seq}")
        x = x + self.pos_emb.weight[:T]
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)

    def known_logits(self, h: torch.Tensor, x0: torch.Tensor | None = None) -> torch.Tensor:
        """h (..., D), and x0 (..., D) the input token embeddings for a model whose known
        head reads them -> the known head's logits (..., C)."""
        logits = self.known_pred(h)
        if self.known_token is not None:
            logits = logits + self.known_token(x0)
        if self.known_mlp is not None:
            logits = logits + self.known_mlp(torch.cat([h, x0], dim=-1))
        return logits

    def heads(self, h: torch.Tensor, x0: torch.Tensor | None = None):
        """h (B, T, D), and the input token embeddings x0 (B, T, D) for a model whose
        known head reads them -> (known_logits (B, T, C), known top-k (ids, weights),
        known_features, unknown top-k (ids, weights), unknown_features)."""
        known_logits = self.known_logits(h, x0)  # (B, T, C)
        kw, ki = torch.topk(torch.sigmoid(known_logits), min(self.cfg.known_topk, self.cfg.n_known))
        known_features = torch.einsum("btk,btkd->btd", kw, self.known_emb[ki])
        # The unknown head reads a detached h (as Steerling's does): it explains h, it
        # does not shape it.
        uw, ui = torch.topk(
            torch.sigmoid(self.unknown_pred(h.detach())),
            min(self.cfg.unknown_topk, self.cfg.n_unknown),
        )
        unknown_features = torch.einsum("btk,btkd->btd", uw, self.unknown_emb[ui])
        return known_logits, (ki, kw), known_features, (ui, uw), unknown_features

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, T, V); the LM head is tied to the token embeddings."""
        return h @ self.tok_emb.weight.T


class BuiltinEncoder(ConceptEncoder):
    """A loaded builtin model behind the :class:`ConceptEncoder` interface."""

    pad_safe = True  # causal attention: right padding never reaches real tokens

    def __init__(
        self,
        model: ConceptLM,
        info: EncoderInfo,
        concept_names: tuple[str, ...],
        harmful: frozenset[str],
        tokenizer_json: bytes,
        device: torch.device,
        calibration: dict | None = None,
        unknown_labels: tuple[str, ...] = (),
    ) -> None:
        self.model = model.to(device).eval()
        self.info = info
        self.concept_names = concept_names
        self.harmful_concepts = harmful
        self.device = device
        self._tokenizer_json = tokenizer_json
        # name -> ConceptCalibration, fitted on held-out text when the model was trained
        self.concept_calibration = calibration or {}
        self.unknown_labels = unknown_labels

    def forward(self, ids, *, embeds=None, with_logits=False) -> ConceptActivations:
        x0 = self.model.tok_emb(ids) if embeds is None else embeds
        h = self.model.hidden(None, x0)
        known_logits, (ki, kw), known, (ui, uw), unknown = self.model.heads(h, x0)
        return ConceptActivations(
            hidden=h,
            known_features=known,
            unknown_features=unknown,
            known_ids=ki,
            known_weights=kw,
            unknown_ids=ui,
            unknown_weights=uw,
            logits=self.model.logits(h) if with_logits else None,
            pool_mean=self.model.pool_mean,
            pool_scale=self.model.pool_scale,
            known_all=torch.sigmoid(known_logits),
        )

    @property
    def vocab_size(self) -> int:
        return int(self.model.tok_emb.num_embeddings)

    @property
    def generation_defaults(self) -> dict[str, float]:
        # A small model left to greedy decoding loops on its most frequent phrase
        # (", and the United States" eight times); a CTRL-style penalty on repeats and a
        # 0.9 nucleus keep its outputs varied (docs/model.md: distinct-2).
        return {"top_p": 0.9, "repetition_penalty": 1.3}

    def token_embeddings(self, ids):
        return self.model.tok_emb(ids)

    def known_embeddings(self, ids):
        return self.model.known_emb[ids]

    def unknown_embeddings(self, ids):
        return self.model.unknown_emb[ids]

    def unembedding(self, token_ids):
        return self.model.tok_emb.weight[token_ids]

    def load_tokenizer(self) -> TextTokenizer:
        from tda.attribution.corpus.tokenizer import HFTokenizer

        return HFTokenizer(self._tokenizer_json, self.info.spec, self.info.spec)


def _state_dict(model: ConceptLM) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in sorted(model.state_dict().items())}


def save_builtin(
    out_dir: str,
    model: ConceptLM,
    concept_set,
    tokenizer_json: bytes,
    tokenizer_fingerprint: str,
    training: dict,
    calibration: dict | None = None,
    unknown_labels: Sequence[str] = (),
) -> str:
    """Write a model directory (see the module docstring); returns the weights' fingerprint.

    Files are written to temp names and renamed, config.json last."""
    import os

    from safetensors.torch import save

    os.makedirs(out_dir, exist_ok=True)
    # One metadata key only: safetensors writes its metadata map in hash order, so two
    # keys would make the bytes (and the fingerprint) differ from run to run.
    weights = save(_state_dict(model), metadata={"kind": BUILTIN_KIND})
    fingerprint = "sha256:" + hashlib.sha256(weights).hexdigest()
    config = {
        "kind": BUILTIN_KIND,
        "format_version": FORMAT_VERSION,
        "model": asdict(model.cfg),
        "concepts": [
            {
                "name": c.name,
                "description": c.description,
                "harmful": c.harmful,
                **(
                    {"calibration": calibration[c.name].to_dict()}
                    if calibration and c.name in calibration
                    else {}
                ),
            }
            for c in concept_set.concepts
        ],
        "unknown_labels": list(unknown_labels),
        "tokenizer_fingerprint": tokenizer_fingerprint,
        "weights_fingerprint": fingerprint,
    }
    files = {
        "model.safetensors": weights,
        "tokenizer.json": tokenizer_json,
        "concepts.yaml": concept_set.source_text.encode("utf-8"),
        "training.json": (json.dumps(training, indent=2, sort_keys=True) + "\n").encode(),
        "config.json": (json.dumps(config, indent=2, sort_keys=True) + "\n").encode(),
    }
    for name, data in files.items():
        tmp = os.path.join(out_dir, f"_tmp-{name}")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, os.path.join(out_dir, name))
    return fingerprint


def load_builtin(spec: str, location: str, device: str = "auto") -> BuiltinEncoder:
    """A model directory (local or fsspec URL) -> :class:`BuiltinEncoder` on ``device``.

    Checks that the weights' sha256 equals the fingerprint recorded in config.json, so a
    torn or swapped file is refused."""
    import fsspec
    from safetensors.torch import load

    from tda.attribution.corpus.tokenizer import HFTokenizer

    fs, path = fsspec.core.url_to_fs(location)
    path = path.rstrip("/")

    def read(name: str) -> bytes:
        try:
            with fs.open(f"{path}/{name}", "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise EncoderError(f"model directory {location} has no {name}") from None

    config = json.loads(read("config.json"))
    if config.get("format_version") != FORMAT_VERSION:
        raise EncoderError(
            f"{location}: builtin model format {config.get('format_version')} is not "
            f"{FORMAT_VERSION}; retrain it with this tda"
        )
    weights = read("model.safetensors")
    fingerprint = "sha256:" + hashlib.sha256(weights).hexdigest()
    if fingerprint != config["weights_fingerprint"]:
        raise EncoderError(
            f"{location}/model.safetensors does not match the fingerprint in config.json "
            f"(corrupt or replaced); retrain or restore the directory"
        )
    tokenizer_json = read("tokenizer.json")
    tokenizer = HFTokenizer(tokenizer_json, spec, location)
    if tokenizer.info.fingerprint != config["tokenizer_fingerprint"]:
        raise EncoderError(
            f"{location}/tokenizer.json is not the tokenizer the model was trained with"
        )
    cfg = BuiltinConfig(**config["model"])
    model = ConceptLM(cfg)
    model.load_state_dict(load(weights), strict=True)
    concepts = config["concepts"]
    from tda.attribution.encoders.builtin.calibrate import ConceptCalibration

    calibration = {
        c["name"]: ConceptCalibration.from_dict(c["calibration"])
        for c in concepts
        if "calibration" in c
    }
    info = EncoderInfo(
        name="builtin",
        spec=spec,
        fingerprint=fingerprint,
        tokenizer_fingerprint=tokenizer.info.fingerprint,
        hidden_size=cfg.d_model,
        n_known=cfg.n_known,
        n_unknown=cfg.n_unknown,
        max_window=cfg.max_seq,
        block_align=1,
    )
    return BuiltinEncoder(
        model,
        info,
        tuple(c["name"] for c in concepts),
        frozenset(c["name"] for c in concepts if c["harmful"]),
        tokenizer_json,
        resolve_device(device),
        calibration,
        tuple(config.get("unknown_labels", ())),
    )
