"""Concept encoders: one code path for training chunks (embed stage) and output chunks
(attributor).

Algorithm (:func:`encode_documents`):

1. Each document's chunks are grouped into forward-pass windows (:func:`plan_windows`,
   :class:`~tda.schemas.ContextPolicy`): a window holds up to ``window`` tokens, and each
   chunk is pooled from the first window that holds it whole, so chunks near a window
   start get ``context`` tokens of left context from the overlap.
2. Windows are sorted by length and packed into batches under a token budget, padding
   included (:func:`batch_windows`). Encoders whose attention would see the padding
   (Steerling: bidirectional inside 64-token blocks) only get batches of equal length.
3. Each batch is ONE forward pass, ``ConceptEncoder.forward(ids (B, T))`` ->
   :class:`ConceptActivations` (per-token concept activations).
4. :func:`pool_chunks` turns each chunk's tokens into a dense L2-normalised vector (D,)
   and its top-k known concepts with weights, as :class:`~tda.schemas.Pooling` says.

Encoders (:func:`load_encoder`, model SPEC): ``builtin:DIR`` (or a bare DIR holding one of
ours, :mod:`tda.attribution.builtin`) and ``steerling:ID_OR_PATH``
(:mod:`tda.attribution.steerling_encoder`).
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tda.schemas import ContextPolicy, EncoderInfo, Pooling

if TYPE_CHECKING:
    import torch

    from .tokenizer import TextTokenizer

__all__ = [
    "ConceptActivations",
    "ConceptEncoder",
    "DocumentTokens",
    "EncodeStats",
    "EncoderError",
    "LogitSplit",
    "PooledChunks",
    "Window",
    "batch_windows",
    "default_context_policy",
    "encode_documents",
    "encode_whole",
    "load_encoder",
    "logit_split",
    "model_tokenizer_spec",
    "plan_windows",
    "pool_chunks",
    "resolve_device",
]

# Windows given only --context default to the model's context limit, capped here: attention
# cost grows with the window, and 1024 tokens of left context is far more than a chunk needs.
MAX_DEFAULT_WINDOW = 1024


class EncoderError(ValueError):
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
        self, prompt_ids: Sequence[int], n: int, temperature: float, seed: int, window: int
    ) -> list[int]:
        """Continue ``prompt_ids`` (non-empty) by up to ``n`` tokens; deterministic for
        the same arguments. Default: left-to-right, one forward per token over the last
        ``window`` tokens, greedy at ``temperature`` 0, else sampled from
        softmax(logits / temperature) with a generator seeded by ``seed``."""
        import torch

        generator = torch.Generator().manual_seed(seed)
        ids = [int(i) for i in prompt_ids]
        with torch.inference_mode():
            for _ in range(n):
                context = torch.tensor([ids[-window:]], dtype=torch.int64, device=self.device)
                logits = self.forward(context, with_logits=True).logits[0, -1].float().cpu()
                if temperature == 0:
                    token = int(torch.argmax(logits))
                else:
                    probs = torch.softmax(logits / temperature, dim=-1)
                    token = int(torch.multinomial(probs, 1, generator=generator))
                ids.append(token)
        return ids[len(prompt_ids) :]

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


# --------------------------------------------------------------------------------------
# Loading


def load_encoder(
    spec: str, device: str = "auto", trust_remote_code: bool = False
) -> ConceptEncoder:
    """Model SPEC -> encoder on ``device``.

    * ``builtin:DIR`` or a bare ``DIR`` holding one of ours (``config.json`` of kind
      ``tda.builtin``); DIR may be any fsspec URL;
    * ``steerling:ID_OR_PATH``: Guide Labs' Steerling (local directory with config.json +
      safetensors, or a Hugging Face id when the hub is reachable).

    Weights are read with safetensors; nothing is unpickled.
    """
    if not spec:
        raise EncoderError("--model SPEC is required (builtin:DIR or steerling:ID_OR_PATH)")
    if spec.startswith("steerling:"):
        from .steerling_encoder import load_steerling

        return load_steerling(spec, device, trust_remote_code)
    location = spec[len("builtin:") :] if spec.startswith("builtin:") else spec
    kind = _config_kind(location)
    if kind == "tda.builtin":
        from .builtin import load_builtin

        return load_builtin(spec, location, device)
    if kind == "steerling":
        raise EncoderError(
            f"{location} holds a Steerling checkpoint; pass --model steerling:{location}"
        )
    raise EncoderError(
        f"{spec} is not a model SPEC tda knows: give builtin:DIR (made by `tda model train`) "
        f"or steerling:ID_OR_PATH"
    )


def model_tokenizer_spec(spec: str) -> str:
    """Model SPEC -> the tokenizer SPEC its chunks must be cut with, without loading weights:
    the model directory when it ships a ``tokenizer.json`` (builtin models, test
    Steerlings), else Steerling's own ``tiktoken:cl100k_base``."""
    import fsspec

    steerling = spec.startswith("steerling:")
    location = spec.split(":", 1)[1] if steerling or spec.startswith("builtin:") else spec
    try:
        fs, path = fsspec.core.url_to_fs(location)
        ships_one = fs.exists(path.rstrip("/") + "/tokenizer.json")
    except (OSError, ValueError):
        ships_one = False
    if ships_one:
        return location
    if steerling:
        return "tiktoken:cl100k_base"
    raise EncoderError(f"{location} holds no tokenizer.json; pass --tokenizer SPEC")


def _config_kind(location: str) -> str | None:
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(location)
        with fs.open(path.rstrip("/") + "/config.json", "rb") as f:
            data = json.loads(f.read())
    except FileNotFoundError:
        raise EncoderError(f"model not found: {location} has no config.json") from None
    except (OSError, ValueError) as exc:
        raise EncoderError(f"cannot read the model config at {location}: {exc}") from exc
    if not isinstance(data, dict):
        return None
    if data.get("kind") == "tda.builtin":
        return "tda.builtin"
    if data.get("interpretable") or data.get("model_type") == "causal_diffusion":
        return "steerling"
    return None


# --------------------------------------------------------------------------------------
# Windows and batches


@dataclass(frozen=True)
class DocumentTokens:
    """One document as the encoder sees it.

    ``ids``: (n,) token ids of the whole document; ``spans``: (m, 2) token [start, end)
    of its chunks, in chunk order (starts non-decreasing).
    """

    ids: np.ndarray
    spans: np.ndarray


@dataclass(frozen=True)
class Window:
    """Tokens [start, end) of document ``doc``; pools chunks [first, last) of that doc."""

    doc: int
    start: int
    end: int
    first: int
    last: int

    @property
    def length(self) -> int:
        return self.end - self.start


def plan_windows(spans: np.ndarray, n_tokens: int, policy: ContextPolicy, doc: int = 0):
    """(m, 2) chunk token spans of one document -> list of :class:`Window`.

    Every chunk lands in exactly one window, the first that holds it whole; windows start
    on multiples of ``policy.align``. Raises EncoderError for a chunk longer than the
    window or one that does not start on the alignment grid.
    """
    window, context, align = policy.window, policy.context, policy.align
    starts, ends = spans[:, 0], spans[:, 1]
    if len(spans) and int((ends - starts).max()) > window:
        raise EncoderError(
            f"a chunk of {int((ends - starts).max())} tokens does not fit the {window}-token "
            f"window; raise --window or re-chunk with a smaller --chunk-size"
        )
    if align > 1 and len(spans) and bool((starts % align).any()):
        bad = int(starts[(starts % align) != 0][0])
        raise EncoderError(
            f"a chunk starts at token {bad}, off the model's {align}-token blocks; re-chunk "
            f"with --chunk-size and --stride multiples of {align}"
        )
    out: list[Window] = []
    first, m = 0, len(spans)
    start = 0
    while first < m:
        end = min(start + window, n_tokens)
        last = first
        while last < m and ends[last] <= end:
            last += 1
        out.append(Window(doc, start, end, first, last))
        first = last
        if first < m:
            head, tail = int(starts[first]), int(ends[first])
            # as much left context as asked, but the chunk must fit and the window move on
            fit = -(-(tail - window) // align) * align
            start = max((head - context) // align * align, start + align, fit)
    return out


def batch_windows(lengths: Sequence[int], batch_tokens: int, equal_length: bool):
    """Window lengths -> batches (lists of window indices), longest first.

    A batch's cost is ``len(batch) * its longest window`` tokens (padding included) and
    stays within ``batch_tokens``; a window longer than the budget forms a batch alone.
    With ``equal_length``, a batch never mixes lengths (no padding at all). Deterministic:
    ties keep input order.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current:
            longest = lengths[current[0]]
            fits = (len(current) + 1) * longest <= batch_tokens
            if not fits or (equal_length and lengths[i] != longest):
                batches.append(current)
                current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


# --------------------------------------------------------------------------------------
# Pooling


@dataclass
class PooledChunks:
    """Per chunk, in the order given: ``vectors`` (n, D) float32 unit rows (or zero rows,
    counted in ``zero_vectors``), and the top-k known concepts as ragged lists."""

    vectors: np.ndarray
    concept_ids: list[np.ndarray]  # each (k_i,) uint16, strongest first
    concept_weights: list[np.ndarray]  # each (k_i,) float32, > 0
    zero_vectors: int = 0


def pool_chunks(
    acts: ConceptActivations,
    rows: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    pooling: Pooling,
    n_known: int,
) -> PooledChunks:
    """Pool per-token activations into per-chunk vectors.

    acts: a batch's activations, tensors (B, T, ...). rows / starts / ends: (n,) each: chunk
    i covers positions [starts[i], ends[i]) of batch row rows[i] (chunks may overlap).
    Returns :class:`PooledChunks` for the n chunks, in that order.
    """
    import torch

    hidden = acts.hidden
    device = hidden.device
    B, T, D = hidden.shape
    n = len(rows)
    lengths = torch.as_tensor(ends - starts, device=device)
    # (P,) one entry per (chunk, token) pair: chunk slot and flat token index b*T + t
    pair_chunk = torch.repeat_interleave(torch.arange(n, device=device), lengths)
    offsets = torch.arange(int(lengths.sum()), device=device) - torch.repeat_interleave(
        torch.cumsum(lengths, 0) - lengths, lengths
    )
    base = torch.as_tensor(rows * T + starts, device=device)
    pair_flat = torch.repeat_interleave(base, lengths) + offsets
    denom = lengths.to(torch.float32).unsqueeze(1)

    k = acts.known_ids.shape[-1]
    ids_pairs = acts.known_ids.reshape(B * T, k)[pair_flat]  # (P, k)
    w_pairs = acts.known_weights.reshape(B * T, k)[pair_flat].float()  # (P, k)
    flat_concept = (pair_chunk.unsqueeze(1) * n_known + ids_pairs).reshape(-1)

    def concept_matrix(reduce: str) -> torch.Tensor:
        """(n, n_known) chunk x known-concept weight: max or mean over the chunk's tokens."""
        out = torch.zeros(n * n_known, device=device, dtype=torch.float32)
        if reduce == "max":
            out.scatter_reduce_(0, flat_concept, w_pairs.reshape(-1), "amax")
            return out.view(n, n_known)
        out.index_add_(0, flat_concept, w_pairs.reshape(-1))
        return out.view(n, n_known) / denom

    if pooling.method == "weights":
        vectors = concept_matrix("mean")
    else:
        source = {
            "concepts": lambda: acts.known_features + acts.unknown_features,
            "known": lambda: acts.known_features,
            "hidden": lambda: hidden,
        }[pooling.features]()
        feats = source.reshape(B * T, D)
        if pooling.method == "last":
            vectors = feats[torch.as_tensor(rows * T + ends - 1, device=device)].float()
        elif pooling.method == "max":
            vectors = torch.full((n, D), -math.inf, device=device, dtype=torch.float32)
            index = pair_chunk.unsqueeze(1).expand(-1, D)
            vectors.scatter_reduce_(0, index, feats[pair_flat].float(), "amax")
        else:
            vectors = torch.zeros((n, D), device=device, dtype=torch.float32)
            vectors.index_add_(0, pair_chunk, feats[pair_flat].float())
            vectors /= denom
    norms = vectors.norm(dim=1, keepdim=True)
    zero = norms.squeeze(1) == 0
    vectors = torch.where(zero.unsqueeze(1), vectors, vectors / norms.clamp_min(1e-30))

    weights = concept_matrix(pooling.concept_reducer)
    top = min(pooling.top_k, n_known)
    top_w, top_i = torch.topk(weights, top, dim=1)  # sorted, strongest first
    top_w, top_i = top_w.cpu().numpy(), top_i.cpu().numpy().astype(np.uint16)
    keep = top_w > 0
    return PooledChunks(
        vectors=vectors.cpu().numpy(),
        concept_ids=[top_i[i][keep[i]] for i in range(n)],
        concept_weights=[top_w[i][keep[i]] for i in range(n)],
        zero_vectors=int(zero.sum()),
    )


# --------------------------------------------------------------------------------------
# The one code path


@dataclass
class EncodeStats:
    windows: int = 0
    batches: int = 0
    window_tokens: int = 0  # real tokens run through the model
    padded_tokens: int = 0  # padding added to form batches


def encode_documents(
    encoder: ConceptEncoder,
    docs: Sequence[DocumentTokens],
    pooling: Pooling,
    policy: ContextPolicy,
    batch_tokens: int,
) -> tuple[PooledChunks, EncodeStats]:
    """Documents -> every chunk pooled, in document then chunk order (steps 1-4 above).

    Returns the pooled chunks (n = total chunks) and what it took (windows, batches,
    tokens run, padding).
    """
    import torch

    windows: list[Window] = []
    for d, doc in enumerate(docs):
        windows.extend(plan_windows(doc.spans, len(doc.ids), policy, d))
    offsets = np.cumsum([0] + [len(doc.spans) for doc in docs])
    n_total = int(offsets[-1])
    dim = encoder.feature_dim(pooling)
    vectors = np.zeros((n_total, dim), dtype=np.float32)
    concept_ids: list[np.ndarray | None] = [None] * n_total
    concept_weights: list[np.ndarray | None] = [None] * n_total
    stats = EncodeStats(windows=len(windows))
    zero_vectors = 0
    lengths = [w.length for w in windows]
    for batch in batch_windows(lengths, batch_tokens, equal_length=not encoder.pad_safe):
        longest = lengths[batch[0]]
        ids = np.full((len(batch), longest), encoder.pad_id, dtype=np.int64)
        rows, starts, ends, slots = [], [], [], []
        for b, wi in enumerate(batch):
            w = windows[wi]
            doc = docs[w.doc]
            ids[b, : w.length] = doc.ids[w.start : w.end]
            spans = doc.spans[w.first : w.last]
            rows.append(np.full(len(spans), b))
            starts.append(spans[:, 0] - w.start)
            ends.append(spans[:, 1] - w.start)
            slots.append(np.arange(w.first, w.last) + offsets[w.doc])
        stats.batches += 1
        stats.window_tokens += sum(lengths[i] for i in batch)
        stats.padded_tokens += len(batch) * longest - sum(lengths[i] for i in batch)
        with torch.inference_mode():
            acts = encoder.forward(torch.from_numpy(ids).to(encoder.device))
            pooled = pool_chunks(
                acts,
                np.concatenate(rows),
                np.concatenate(starts),
                np.concatenate(ends),
                pooling,
                encoder.info.n_known,
            )
        slot = np.concatenate(slots)
        vectors[slot] = pooled.vectors
        for j, s in enumerate(slot):
            concept_ids[s] = pooled.concept_ids[j]
            concept_weights[s] = pooled.concept_weights[j]
        zero_vectors += pooled.zero_vectors
    return (
        PooledChunks(vectors, concept_ids, concept_weights, zero_vectors),  # type: ignore[arg-type]
        stats,
    )


def encode_whole(
    encoder: ConceptEncoder,
    docs: Sequence[DocumentTokens],
    pooling: Pooling,
    window: int,
    align: int,
) -> PooledChunks:
    """Documents each encoded whole in ONE window of its own, no left context, all in one
    batch where the encoder allows padding (queries: a search text, or output chunks'
    search windows). ``window``: the index's window; a longer document gets a window of
    its own length, rounded up to ``align``. Returns their chunks pooled, in order."""
    longest = -(-max(len(d.ids) for d in docs) // align) * align
    policy = ContextPolicy(window=max(window, longest), context=0, align=align)
    pooled, _ = encode_documents(encoder, docs, pooling, policy, policy.window * len(docs))
    return pooled


# --------------------------------------------------------------------------------------
# Exact logit decomposition


@dataclass
class LogitSplit:
    """How each token's logit for a target token splits over concepts.

    ``known.sum(-1) + unknown.sum(-1) + residual == logit`` (up to float rounding).
    """

    known: torch.Tensor  # (B, T, k) contribution of each of the token's top-k known concepts
    unknown: torch.Tensor  # (B, T, ku) same for the unknown concepts
    residual: torch.Tensor  # (B, T) the residual's contribution
    logit: torch.Tensor  # (B, T) the target's logit


def logit_split(
    encoder: ConceptEncoder, acts: ConceptActivations, targets: torch.Tensor
) -> LogitSplit:
    """Split the logit of ``targets`` (B, T) at every position into concept contributions:
    sigmoid(l_i) * (v_i . W_y) per concept i, and residual . W_y."""
    w_y = encoder.unembedding(targets).float()  # (B, T, D)
    known_v = encoder.known_embeddings(acts.known_ids).float()  # (B, T, k, D)
    unknown_v = encoder.unknown_embeddings(acts.unknown_ids).float()  # (B, T, ku, D)
    known = acts.known_weights.float() * (known_v * w_y.unsqueeze(2)).sum(-1)
    unknown = acts.unknown_weights.float() * (unknown_v * w_y.unsqueeze(2)).sum(-1)
    residual = (acts.residual.float() * w_y).sum(-1)
    logit = (acts.hidden.float() * w_y).sum(-1)
    return LogitSplit(known=known, unknown=unknown, residual=residual, logit=logit)
