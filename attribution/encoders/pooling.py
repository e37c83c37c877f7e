"""Pooling and the one encode path for training chunks (embed stage) and output chunks
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
ours, :mod:`tda.attribution.encoders.builtin.model`) and ``steerling:ID_OR_PATH``
(:mod:`tda.attribution.encoders.steerling`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tda.attribution.encoders.base import ConceptActivations, ConceptEncoder
from tda.attribution.encoders.windows import DocumentTokens, Window, batch_windows, plan_windows
from tda.schemas import ContextPolicy, Pooling

if TYPE_CHECKING:
    import torch


__all__ = ["EncodeStats", "PooledChunks", "encode_documents", "encode_whole", "pool_chunks"]

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
        """(n, n_known) chunk x known-concept weight: max or mean over the chunk's tokens
        (of every concept's weight when the model gives them all, else of each token's
        top-k)."""
        if acts.known_all is not None:
            every = acts.known_all.reshape(B * T, -1)[pair_flat].float()  # (P, C)
            out = torch.zeros((n, every.shape[1]), device=device, dtype=torch.float32)
            if reduce == "max":
                index = pair_chunk.unsqueeze(1).expand(-1, every.shape[1])
                return out.scatter_reduce_(0, index, every, "amax", include_self=False)
            return out.index_add_(0, pair_chunk, every) / denom
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
        if pooling.features == "hidden" and acts.pool_mean is not None:
            # Centre and scale by the model's own statistics first: raw hidden states share
            # a few dominant directions, so on a briefly trained model every chunk's mean
            # points the same way and different chunks coincide at float16 precision.
            feats = (feats - acts.pool_mean.to(feats.dtype)) / acts.pool_scale.to(feats.dtype)
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
