"""The encoder interface: :class:`ConceptEncoder` (token ids in, per-token concept
activations out), devices, and the default context policy.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tda.schemas import ContextPolicy, EncoderInfo, Pooling
from tda.schemas.errors import UserError

if TYPE_CHECKING:
    import torch

    from tda.attribution.corpus.tokenizer import TextTokenizer


__all__ = [
    "MAX_DEFAULT_WINDOW",
    "ConceptActivations",
    "ConceptEncoder",
    "EncoderError",
    "default_context_policy",
    "resolve_device",
]

# Windows given only --context default to the model's context limit, capped here: attention
# cost grows with the window, and 1024 tokens of left context is far more than a chunk needs.
MAX_DEFAULT_WINDOW = 1024


class EncoderError(UserError):
    """A model SPEC that cannot be loaded or used; one line naming the fix."""


@dataclass
class ConceptActivations:
    """Per-token output of one forward pass over a batch of windows.

    ``hidden == known_features + unknown_features + residual`` exactly, and the LM logits
    are ``hidden @ unembedding.T``, so every logit splits into per-concept contributions
    plus the residual's (:func:`logit_split`).
    """

    hidden: torch.Tensor  # (B, T, D) final hidden state, the LM head's input
    known_features: torch.Tensor  # (B, T, D) sum_i w_i * E_known[i] over the token's top-k
    unknown_features: torch.Tensor  # (B, T, D) same for the unknown (learned) concepts
    known_ids: torch.Tensor  # (B, T, k) int64 known concept ids, strongest first
    known_weights: torch.Tensor  # (B, T, k) float32 sigmoid(concept logit) in [0, 1]
    unknown_ids: torch.Tensor  # (B, T, ku) int64
    unknown_weights: torch.Tensor  # (B, T, ku) float32
    logits: torch.Tensor | None = None  # (B, T, V), only when asked for
    # (D,) each, or None: how pooled hidden-state vectors are centred and scaled before
    # they are normalised (the model's statistics over held-out text; see
    # tda.attribution.encoders.builtin.calibrate.hidden_statistics)
    pool_mean: torch.Tensor | None = None
    pool_scale: torch.Tensor | None = None
    # (B, T, C) every known concept's weight, or None: models with a small concept set
    # (builtin) give it, so a chunk's concept weights do not depend on which concepts
    # made each token's top-k (a rare concept outranked on every token was never stored)
    known_all: torch.Tensor | None = None

    @property
    def residual(self) -> torch.Tensor:
        """(B, T, D) what the concepts leave unexplained (Steerling's epsilon)."""
        return self.hidden - self.known_features - self.unknown_features


class ConceptEncoder(ABC):
    """A concept-bottleneck LM behind the interface every stage uses.

    Implementations set ``info`` (:class:`~tda.schemas.EncoderInfo`), ``concept_names``
    (one per known concept), ``pad_safe`` (True when right padding cannot change the
    activations of real tokens, i.e. causal attention), ``device`` and ``pad_id``.
    """

    info: EncoderInfo
    concept_names: tuple[str, ...]
    harmful_concepts: frozenset[str] = frozenset()
    pad_safe: bool = True
    pad_id: int = 0
    mask_id: int | None = None  # the "no information" token for attribution baselines
    # known concept name -> its calibration (tda.attribution.encoders.builtin.calibrate.
    # ConceptCalibration: probability and threshold of a chunk's weight); empty when the
    # model has none
    concept_calibration: dict = {}  # noqa: RUF012 (read-only default)
    # a short label per unknown concept (from where it fires most); empty when none
    unknown_labels: tuple[str, ...] = ()
    device: torch.device

    @abstractmethod
    def forward(
        self,
        ids: torch.Tensor | None,
        *,
        embeds: torch.Tensor | None = None,
        with_logits: bool = False,
    ) -> ConceptActivations:
        """ids (B, T) int64 on ``device`` (or embeds (B, T, D), for input gradients) ->
        per-token activations. Positions attend to earlier positions (and, for Steerling,
        to the rest of their 64-token block); windows never mix documents."""

    def generate(
        self,
        prompt_ids: Sequence[int],
        n: int,
        temperature: float,
        seed: int,
        window: int,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
    ) -> list[int]:
        """Continue ``prompt_ids`` (non-empty) by up to ``n`` tokens; deterministic for
        the same arguments. Default: left-to-right, one forward per token over the last
        ``window`` tokens; the logits of tokens already in the window are divided (if
        positive) or multiplied (if negative) by ``repetition_penalty``; then greedy at
        ``temperature`` 0, else sampled from softmax(logits / temperature) cut to its top
        ``top_p`` mass, with a generator seeded by ``seed``."""
        import torch

        generator = torch.Generator().manual_seed(seed)
        ids = [int(i) for i in prompt_ids]
        with torch.inference_mode():
            for _ in range(n):
                context = torch.tensor([ids[-window:]], dtype=torch.int64, device=self.device)
                logits = self.forward(context, with_logits=True).logits[0, -1].float().cpu()
                if repetition_penalty != 1.0:
                    seen = torch.unique(context[0].cpu())
                    got = logits[seen]
                    logits[seen] = torch.where(
                        got > 0, got / repetition_penalty, got * repetition_penalty
                    )
                if temperature == 0:
                    token = int(torch.argmax(logits))
                else:
                    probs = torch.softmax(logits / temperature, dim=-1)
                    if top_p < 1.0:
                        # keep the smallest set of most likely tokens whose mass reaches top_p
                        sorted_p, order = torch.sort(probs, descending=True, stable=True)
                        keep = torch.cumsum(sorted_p, 0) - sorted_p < top_p
                        probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_p[keep])
                    token = int(torch.multinomial(probs, 1, generator=generator))
                ids.append(token)
        return ids[len(prompt_ids) :]

    @property
    def tokenizer(self) -> TextTokenizer:
        """The model's tokenizer, loaded once (each :meth:`load_tokenizer` call builds a
        new one: ~10-25 ms for a 270 kB tokenizer.json, per search before this)."""
        cached = self.__dict__.get("_tokenizer_cache")
        if cached is None:  # two threads may both load it once; either result is the same
            cached = self.__dict__["_tokenizer_cache"] = self.load_tokenizer()
        return cached

    @property
    def generation_defaults(self) -> dict[str, float]:
        """``top_p`` and ``repetition_penalty`` when a request leaves them unset."""
        return {"top_p": 1.0, "repetition_penalty": 1.0}

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Rows of the token embedding table (valid token ids are 0..vocab_size-1)."""

    @abstractmethod
    def token_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, T, D) input embeddings (what ``embeds`` replaces)."""

    @abstractmethod
    def known_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """(...,) known concept ids -> (..., D) their concept vectors E_known[ids]."""

    @abstractmethod
    def unknown_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """(...,) unknown concept ids -> (..., D) their concept vectors."""

    @abstractmethod
    def unembedding(self, token_ids: torch.Tensor) -> torch.Tensor:
        """(...,) vocabulary ids -> (..., D) rows of the LM head (tied to the embeddings)."""

    @abstractmethod
    def load_tokenizer(self) -> TextTokenizer:
        """The tokenizer the model was trained with (its fingerprint is in ``info``)."""

    def feature_dim(self, pooling: Pooling) -> int:
        """D of the pooled dense vector."""
        return self.info.n_known if pooling.method == "weights" else self.info.hidden_size

    def context_policy(
        self, window: int | None = None, context: int | None = None, chunk_size: int | None = None
    ):
        return default_context_policy(self.info, window, context, chunk_size)


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda when a GPU is visible, else cpu; ``cuda`` without a GPU is an error."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise EncoderError("--device cuda, but torch sees no CUDA GPU on this machine")
    return torch.device(device)


def default_context_policy(
    info: EncoderInfo,
    window: int | None = None,
    context: int | None = None,
    chunk_size: int | None = None,
) -> ContextPolicy:
    """The encoder's limits + the user's --window/--context -> a validated policy.

    Defaults, with neither given and the chunks' ``chunk_size`` known: each chunk encoded
    alone (window = the chunk size rounded up to the block alignment, context 0), the
    representation docs/quality.md measured best. Otherwise: window = the model's limit
    capped at 1024, rounded down to the block alignment; context = a quarter of the
    window, rounded down likewise.
    """
    from tda.schemas import ConfigError

    align = info.block_align
    if window is None and context is None and chunk_size:
        window = -(-chunk_size // align) * align
        if window > info.max_window:
            raise ConfigError(
                f"the chunks ({chunk_size} tokens) exceed the model's context limit of "
                f"{info.max_window} tokens; re-chunk with a smaller --chunk-size"
            )
        return ContextPolicy(window=window, context=0, align=align)
    if window is None:
        window = min(info.max_window, MAX_DEFAULT_WINDOW) // align * align
    elif window > info.max_window:
        raise ConfigError(
            f"--window {window} exceeds the model's context limit of {info.max_window} tokens"
        )
    if context is None:
        context = window // 4 // align * align
    return ContextPolicy(window=window, context=context, align=align)
