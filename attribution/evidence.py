"""Re-ranking candidates by the model's own evidence: token-level late interaction on the
predicting positions (``tda attribute --rerank evidence``).

When the model wrote output token ``y_t``, its hidden state at position ``t - 1`` is what
produced it. A training chunk is evidence for that token where the model, reading the
chunk, was in a similar state *and the same token followed*: the kNN-LM view of a
language model's memory (Khandelwal et al., 2020), restricted to the candidates the
channels already found. Per candidate:

``evidence = mean over the output chunk's tokens t of max over the candidate's positions
j with next token == y_t of cos(h_out[t - 1], h_train[j])`` (0 for a token the candidate
never predicts).

The candidates are encoded alone (their own tokens in one window, as the embed stage's
default encodes training chunks), in batches; the output's states come from the
attributor's one forward pass. A copied passage scores near 1 (same tokens, same
states); a chunk sharing only common words scores low because its states around those
words differ. ``docs/quality.md`` measures it against the fused order it re-ranks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tda.attribution.encoders import ConceptEncoder
from tda.attribution.encoders.windows import batch_windows

__all__ = ["BATCH_TOKENS", "evidence_scores"]

# Candidate tokens run per forward batch (padding included).
BATCH_TOKENS = 8192


def evidence_scores(
    encoder: ConceptEncoder,
    query_states: np.ndarray,
    targets: np.ndarray,
    candidates: Sequence[np.ndarray],
) -> np.ndarray:
    """The output chunk's predicting states ``query_states`` (n, H) float32 (row i: the
    state that produced token ``targets[i]``) and ``targets`` (n,) int64, against each
    candidate's token ids (a list of (L_c,) int64) -> (len(candidates),) float32 scores
    in [-1, 1] (see the module)."""
    import torch

    scores = np.zeros(len(candidates), dtype=np.float32)
    if len(targets) == 0 or not candidates:
        return scores
    q = _unit(np.asarray(query_states, dtype=np.float32))
    targets = np.asarray(targets, dtype=np.int64)
    lengths = [len(c) for c in candidates]
    usable = [i for i, n in enumerate(lengths) if n >= 2]
    if not usable:
        return scores
    order = sorted(usable, key=lambda i: -lengths[i])  # similar lengths batch together
    sub = [lengths[i] for i in order]
    for batch in batch_windows(sub, BATCH_TOKENS, equal_length=not encoder.pad_safe):
        rows = [order[b] for b in batch]
        longest = max(lengths[r] for r in rows)
        ids = np.full((len(rows), longest), encoder.pad_id, dtype=np.int64)
        for b, r in enumerate(rows):
            ids[b, : lengths[r]] = candidates[r]
        with torch.inference_mode():
            hidden = encoder.forward(torch.from_numpy(ids).to(encoder.device)).hidden
        hidden = hidden.float().cpu().numpy()
        for b, r in enumerate(rows):
            n = lengths[r]
            states = _unit(hidden[b, : n - 1])  # position j predicts token j + 1
            following = ids[b, 1:n]
            same = targets[:, None] == following[None, :]  # (n_out, n - 1)
            if not same.any():
                continue
            sims = np.where(same, q @ states.T, -np.inf).max(axis=1)
            scores[r] = float(np.where(np.isfinite(sims), sims, 0.0).mean())
    return scores


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)
