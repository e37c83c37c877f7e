"""The exact logit split: every logit = known-concept contributions + unknown + residual."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tda.attribution.encoders.base import ConceptActivations, ConceptEncoder

if TYPE_CHECKING:
    import torch


__all__ = ["LogitSplit", "logit_split"]

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
