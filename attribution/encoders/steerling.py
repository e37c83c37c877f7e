"""steerling: Guide Labs' Steerling (``steerling:guidelabs/steerling-8b`` or a local path)
behind the :class:`~tda.attribution.encoders.ConceptEncoder` interface.

Mapping of ``InterpretableCausalDiffusionLM`` onto :class:`ConceptActivations`
(facts in DESIGN.md): hidden = the transformer's final hidden state; known_features =
the known head's features (sum of sigmoid(logit) x concept embedding over its top-32);
unknown_features = the unknown head's ``unk_hat``; residual = Steerling's ``epsilon``;
logits = ``lm_head(hidden)`` (= ``lm_head(composed)``). The known head's ``topk`` is raised
to ``topk_features`` so the reported concepts are exactly those the features use.

Our forward calls the model's own submodules in the order its ``forward`` does, but skips
the LM head unless logits are asked for: the embed stage never needs the (B, T, 100k)
logits. Attention is bidirectional inside 64-token blocks counted from position 0, so
windows start on block boundaries (``block_align`` 64), get no BOS token (it would shift
every block), and are never right-padded (padding inside the last block would change the
real tokens' activations): the batcher groups equal-length windows instead.

Loading: ``config.json`` + ``*.safetensors`` read directly into the model classes of the
installed ``steerling`` package: nothing is unpickled and no code from the checkpoint runs
(a hub download fetches only config, weights, JSON and Parquet files), so
``--trust-remote-code`` is never required; it is accepted and logged. The 8B weights need
a CUDA GPU (bf16, ~17 GB); on a machine without one the loader refuses before reading them.
"""

from __future__ import annotations

import hashlib
import json
import os

import torch

from tda.attribution.encoders import (
    ConceptActivations,
    ConceptEncoder,
    EncoderError,
    resolve_device,
)
from tda.schemas import EncoderInfo

__all__ = ["CPU_MAX_PARAMS", "SteerlingEncoder", "load_steerling"]

# Above this many parameters a model is not run on CPU: Steerling-8B would need ~34 GB of
# fp32 weights and hours per document there.
CPU_MAX_PARAMS = 1_000_000_000


def _estimate_params(model_cfg: dict, concept_cfg: dict, vocab: int) -> int:
    d = model_cfg.get("n_embd", 4096)
    layers = model_cfg.get("n_layers", 32)
    heads = model_cfg.get("n_head", 32)
    kv = model_cfg.get("n_kv_heads") or heads
    inter = model_cfg.get("intermediate_size") or model_cfg.get("mlp_ratio", 4) * d
    attn = d * (d + 2 * kv * d // heads) + d * d
    mlp = 3 * d * inter
    known = 2 * concept_cfg.get("n_concepts", 0) * d
    return layers * (attn + mlp) + vocab * d + known


class SteerlingEncoder(ConceptEncoder):
    pad_safe = False  # bidirectional inside blocks: see the module docstring

    def __init__(self, model, info: EncoderInfo, names: tuple[str, ...], tokenizer, device):
        self.model = model
        self.info = info
        self.concept_names = names
        self.device = device
        self._tokenizer = tokenizer
        self.pad_id = 0
        # Steerling's <|mask|> is the last id (100280 of 100281): the diffusion model's
        # "no information here" token, the natural integrated-gradients baseline.
        self.mask_id = int(model.transformer.tok_emb.num_embeddings) - 1

    def forward(self, ids, *, embeds=None, with_logits=False) -> ConceptActivations:
        m = self.model
        hidden = m.transformer(ids, input_embeds=embeds, return_hidden=True)
        known = m.known_head(hidden, return_logits=False)
        unknown = m.unknown_head(hidden.detach(), return_logits=False)
        return ConceptActivations(
            hidden=hidden,
            known_features=known.features.to(hidden.dtype),
            unknown_features=unknown.features.to(hidden.dtype),
            known_ids=known.topk_indices,
            known_weights=torch.sigmoid(known.topk_logits.float()),
            unknown_ids=unknown.topk_indices,
            unknown_weights=torch.sigmoid(unknown.topk_logits.float()),
            logits=m.transformer.lm_head(hidden) if with_logits else None,
        )

    @property
    def vocab_size(self) -> int:
        return int(self.model.transformer.tok_emb.num_embeddings)

    @property
    def generation_defaults(self) -> dict[str, float]:
        return {"top_p": 0.8, "repetition_penalty": 1.1}  # Steerling's GenerationConfig's

    def generate(
        self, prompt_ids, n, temperature, seed, window, top_p=0.8, repetition_penalty=1.1
    ) -> list[int]:
        """Steerling's own generator (block diffusion: each 64-token block unmasked by
        confidence, ``n`` rounded up to whole blocks, then cut to ``n``), greedy at
        temperature 0, else sampled with ``seed``, ``top_p`` and
        ``repetition_penalty``."""
        from steerling.configs.generation import GenerationConfig
        from steerling.inference.causal_diffusion import SteerlingGenerator

        block = max(1, self.info.block_align)
        blocks = -(-n // block)
        prompt = [int(i) for i in prompt_ids][-(window - blocks * block) :]
        if window - blocks * block < 1:
            raise EncoderError(f"--generate {n} leaves no room for the prompt in {window} tokens")
        config = GenerationConfig(
            max_new_tokens=blocks * block,
            steps=blocks * block,
            temperature=temperature,
            seed=seed,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
        )
        generator = SteerlingGenerator(
            self.model,
            _GeneratorTokenizer(self),
            _GeneratorConfig(block, getattr(self.model.transformer, "n_layers", 1)),
            is_interpretable=True,
            device=self.device,
        )
        out = generator.generate_full(torch.tensor([prompt], device=self.device), config)
        return [int(t) for t in out.tokens[len(prompt) :].tolist()][:n]

    def token_embeddings(self, ids):
        return self.model.transformer.tok_emb(ids)

    def known_embeddings(self, ids):
        return self.model.known_head._get_embedding(ids)

    def unknown_embeddings(self, ids):
        return self.model.unknown_head._get_embedding(ids)

    def unembedding(self, token_ids):
        return self.model.transformer.lm_head.weight[token_ids]

    def load_tokenizer(self):
        return self._tokenizer


class _GeneratorTokenizer:
    """The special ids Steerling's generator needs, and decoding through our tokenizer
    (its own tokenizer would fetch cl100k_base over the network)."""

    def __init__(self, encoder: SteerlingEncoder) -> None:
        self.mask_token_id = encoder.mask_id
        vocab = encoder.vocab_size
        self.pad_token_id = vocab - 4  # Steerling: <|pad|> <|bos|> <|endofchunk|> <|mask|> last
        self.eos_token_id = 100257 if vocab > 100257 else vocab - 2  # cl100k <|endoftext|>
        self._tokenizer = encoder.load_tokenizer()

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self._tokenizer.decode([int(i) for i in ids])


class _GeneratorConfig:
    def __init__(self, diff_block_size: int, n_layers: int) -> None:
        self.diff_block_size = diff_block_size
        self.n_layers = n_layers


def _snapshot(location: str) -> str:
    """A local directory for ``location``: itself, or a Hugging Face hub snapshot."""
    if os.path.isdir(location):
        return location
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise EncoderError(
            f"{location} is not a local directory and huggingface_hub is not installed "
            f"(pip install 'tda[steerling]'), or give a local checkpoint path"
        ) from None
    try:
        return snapshot_download(
            location, allow_patterns=["config.json", "*.safetensors", "*.json", "*.parquet"]
        )
    except Exception as exc:  # hub errors come in many classes; report them in one line
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise EncoderError(f"cannot fetch {location} from the Hugging Face hub: {first}") from None


def _weights_fingerprint(files: list[str]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(os.path.basename(path).encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()


def _tokenizer(directory: str, spec: str):
    """The model's tokenizer: a ``tokenizer.json`` shipped in the directory (test models)
    or Steerling's own, tiktoken cl100k_base (chunk with ``--tokenizer
    tiktoken:cl100k_base``)."""
    from tda.attribution.corpus.tokenizer import HFTokenizer, load_tokenizer

    path = os.path.join(directory, "tokenizer.json")
    if os.path.exists(path):
        with open(path, "rb") as f:
            return HFTokenizer(f.read(), spec, os.path.basename(directory.rstrip("/")))
    return load_tokenizer("tiktoken:cl100k_base")


def _concept_names(directory: str, n_known: int) -> tuple[str, ...]:
    """Known-concept names from the model's concept label table when it ships one."""
    path = os.path.join(directory, "concept_labels.parquet")
    names = [f"known_{i:05d}" for i in range(n_known)]
    if os.path.exists(path):
        import pyarrow.parquet as pq

        table = pq.read_table(path).to_pydict()
        heads = table.get("head", ["known"] * len(table["concept_id"]))
        for cid, name, head in zip(table["concept_id"], table["name"], heads, strict=True):
            if head in (None, "known") and 0 <= int(cid) < n_known:
                names[int(cid)] = str(name)
    return tuple(names)


def load_steerling(spec: str, device: str = "auto", trust_remote_code: bool = False):
    """``steerling:ID_OR_PATH`` -> :class:`SteerlingEncoder` (bf16 on CUDA, fp32 on CPU)."""
    location = spec.split(":", 1)[1]
    if not location:
        raise EncoderError("give steerling:ID_OR_PATH, e.g. steerling:guidelabs/steerling-8b")
    try:
        from steerling.configs.causal_diffusion import CausalDiffusionConfig
        from steerling.configs.concept import ConceptConfig
        from steerling.models.interpretable.interpretable_causal_diffusion import (
            InterpretableCausalDiffusionLM,
        )
    except ImportError as exc:
        raise EncoderError(
            f"the steerling package is not importable ({exc}); install it with "
            f"pip install 'tda[steerling]' && pip install --no-deps "
            f"--ignore-requires-python steerling==0.2.0"
        ) from None
    directory = _snapshot(location)
    with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
        raw = json.load(f)
    concept_data = raw.get("concept")
    if not raw.get("interpretable") or not concept_data:
        raise EncoderError(
            f"{location} is not an interpretable Steerling checkpoint (its config.json has no "
            f"'interpretable' concept section), so it has no concept heads to embed with"
        )
    if trust_remote_code:
        # Our loader builds the model from the installed steerling package and never runs
        # code from the checkpoint; the flag is accepted so that a future remote-code path
        # stays opt-in, and recorded in the log.
        import logging

        logging.getLogger("tda").info("--trust-remote-code: not needed for %s", location)
    model_cfg = CausalDiffusionConfig.model_validate(
        {k: v for k, v in raw.items() if k in CausalDiffusionConfig.model_fields}
    )
    concept_cfg = ConceptConfig.model_validate(concept_data)
    vocab = int(raw.get("vocab_size", 100281))
    torch_device = resolve_device(device)
    n_params = _estimate_params(raw, concept_data, vocab)
    if torch_device.type == "cpu" and n_params > CPU_MAX_PARAMS:
        raise EncoderError(
            f"{location} has ~{n_params / 1e9:.1f}B parameters: it needs a CUDA GPU (bf16, "
            f"~{2 * n_params / 1e9:.0f} GB); run the embed stage on GPU workers "
            f"(--device cuda)"
        )
    files = sorted(
        os.path.join(directory, n) for n in os.listdir(directory) if n.endswith(".safetensors")
    )
    if not files:
        raise EncoderError(f"{location} holds no .safetensors weights")
    from safetensors.torch import load_file

    model = InterpretableCausalDiffusionLM(model_cfg, concept_cfg, vocab_size=vocab)
    state: dict[str, torch.Tensor] = {}
    for path in files:
        state.update(load_file(path, device="cpu"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # The LM head is tied to the token embeddings and may be stored once.
    missing = [k for k in missing if "lm_head" not in k and "tok_emb" not in k]
    if missing or unexpected:
        raise EncoderError(
            f"{location}: weights do not match the config (missing {missing[:3]}, "
            f"unexpected {list(unexpected)[:3]})"
        )
    model.transformer._restore_weight_tying()
    model.known_head.topk = model.known_head.topk_features
    dtype = torch.bfloat16 if torch_device.type == "cuda" else torch.float32
    model = model.to(device=torch_device, dtype=dtype).eval()
    tokenizer = _tokenizer(directory, spec)
    if tokenizer.info.vocab_size > vocab:
        raise EncoderError(
            f"{location}: tokenizer has {tokenizer.info.vocab_size} ids, the model {vocab}"
        )
    info = EncoderInfo(
        name="steerling",
        spec=spec,
        fingerprint=_weights_fingerprint(files),
        tokenizer_fingerprint=tokenizer.info.fingerprint,
        hidden_size=model_cfg.n_embd,
        n_known=concept_cfg.n_concepts,
        n_unknown=concept_cfg.n_unknown_concepts or 0,
        max_window=model_cfg.block_size,
        block_align=model_cfg.diff_block_size,
    )
    return SteerlingEncoder(
        model, info, _concept_names(directory, concept_cfg.n_concepts), tokenizer, torch_device
    )
