"""What a trained builtin model learns about itself on held-out text, stored with it.

* **Concept calibration** (:func:`calibrate_concepts`): per known concept, a Platt scaling
  ``p = sigmoid(a * logit(w) + b)`` of the chunk-level weight ``w`` (the strongest firing
  of the concept over a chunk's tokens, as the embed stage stores it with the default
  ``max`` concept pooling) against the taggers' chunk labels (the chunk holds a tagged
  token), and the threshold on ``p`` that maximises F1 on the held-out chunks. Scans use
  ``p`` as their score and the threshold as their default cut.
* **Unknown-concept labels** (:func:`label_unknown_concepts`): each learned concept is
  named after the tokens where it fires most, as sparse-autoencoder tools label features
  (the three most frequent token strings among its top activations).
* **Logit shares** (:func:`logit_shares`): how much of the logit of the actual next
  tokens the known concepts, the unknown concepts and the residual carry (the definition
  is in :data:`SHARE_DEFINITION`).
* **Pooling statistics** (:func:`hidden_statistics`): the per-dimension mean and spread
  of held-out chunks' mean hidden states, so pooled chunk vectors are standardised before
  they are normalised (without it a briefly trained model's chunk vectors share one
  dominant direction and coincide at float16 precision, and every search score sits
  near 1).

Everything here is numpy on arrays the trainer collects in one pass over held-out text.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "SHARE_DEFINITION",
    "ConceptCalibration",
    "calibrate_concepts",
    "firing_cuts",
    "fit_platt",
    "hidden_statistics",
    "label_unknown_concepts",
    "logit_shares",
    "platt_probability",
]

SHARE_DEFINITION = (
    "per held-out chunk of CHUNK tokens, sum each part's contribution to the logit of the "
    "actual next token over the chunk's tokens (as a report's logit totals do), take "
    "absolute values, and add them up over all chunks; share = part / (known + unknown + "
    "residual)"
)

# Weights are sigmoids; clip before the logit so a saturated 0 or 1 stays finite.
_EPS = 1e-6


@dataclass(frozen=True)
class ConceptCalibration:
    """One concept's calibration: ``p = sigmoid(a * logit(w) + b)``; a chunk is a hit when
    ``p >= threshold``. precision / recall / f1 at that threshold on held-out chunks;
    ``positives`` of ``chunks`` held-out chunks carried the tagger label."""

    a: float
    b: float
    threshold: float
    precision: float
    recall: float
    f1: float
    positives: int
    chunks: int

    def probability(self, weights: np.ndarray) -> np.ndarray:
        """(n,) weights in [0, 1] -> (n,) calibrated probabilities."""
        return platt_probability(weights, self.a, self.b)

    def weight_cut(self) -> float:
        """The raw weight at which ``p`` reaches the threshold (the calibration is
        monotone in the weight); inf when it does not rise with the weight."""
        if self.a <= 0:
            return float("inf")
        t = min(max(self.threshold, _EPS), 1 - _EPS)
        return float(_sigmoid(np.asarray((np.log(t / (1 - t)) - self.b) / self.a)))

    def to_dict(self) -> dict:
        # a, b and the threshold exactly (a rounded cut would move chunks across it)
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: dict) -> ConceptCalibration:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def platt_probability(weights: np.ndarray, a: float, b: float) -> np.ndarray:
    """(n,) weights in [0, 1] -> (n,) ``sigmoid(a * logit(w) + b)`` (weights clipped so a
    saturated 0 or 1 stays finite)."""
    w = np.clip(np.asarray(weights, dtype=np.float64), _EPS, 1 - _EPS)
    return _sigmoid(a * np.log(w / (1 - w)) + b)


def firing_cuts(names: Sequence[str], calibration: dict, default: float = 0.5) -> np.ndarray:
    """(C,) per known concept (by id), the raw chunk weight from which it counts as firing:
    its calibrated threshold, else ``default``."""
    return np.array(
        [calibration[n].weight_cut() if n in calibration else default for n in names],
        dtype=np.float64,
    )


def fit_platt(
    x: np.ndarray, y: np.ndarray, l2: float = 1.0, iters: int = 100
) -> tuple[float, float]:
    """Logistic regression of labels ``y`` (n,) bool on one feature ``x`` (n,): Newton's
    method with step halving (the penalised loss never rises) and an L2 penalty ``l2``
    on the slope, so separable or degenerate data (every chunk at one weight) stays
    finite. Returns (a, b) with ``P(y) = sigmoid(a * x + b)``."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    # Platt's targets: (n+ + 1) / (n+ + 2) and 1 / (n- + 2), not 1 and 0, against overfit.
    pos, neg = y.sum(), len(y) - y.sum()
    t = np.where(y > 0, (pos + 1) / (pos + 2), 1 / (neg + 2))
    X = np.stack([x, np.ones_like(x)], axis=1)

    def loss(a: float, b: float) -> float:
        z = a * x + b
        return float(np.sum(np.logaddexp(0.0, z) - t * z) + 0.5 * l2 * a * a)

    a, b = 0.0, float(np.log((pos + 1) / (neg + 1)))  # start at the base rate
    current = loss(a, b)
    for _ in range(iters):
        p = _sigmoid(a * x + b)
        grad = X.T @ (p - t) + np.array([l2 * a, 0.0])
        hess = (X * (p * (1 - p))[:, None]).T @ X + np.diag([l2, 1e-9])
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-6:
            new = loss(a - scale * step[0], b - scale * step[1])
            if new <= current:
                break
            scale /= 2
        else:
            break  # no step lowers the loss: converged
        a, b = a - scale * step[0], b - scale * step[1]
        improved, current = current - new, new
        if improved < 1e-10 * max(1.0, abs(current)):
            break
    return float(a), float(b)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500.0, 500.0)))


# The threshold maximises F-beta with beta 0.5: precision counts twice as much as recall,
# since a scan's hits go into prune lists (F1's cut kept 86% of every mail source's chunks
# for scam_fraud on the demo, spam and ordinary mail alike).
F_BETA = 0.5


def _best_threshold(p: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    """The cut on ``p`` with the best F-beta (:data:`F_BETA`; the highest cut on ties):
    (t, precision, recall, f-beta). The cut sits halfway between the last chunk kept and
    the next one, not on the last kept chunk itself, so it does not fit the held-out
    sample's edge exactly."""
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], y[order].astype(np.float64)
    tp = np.cumsum(ys)
    k = np.arange(1, len(ps) + 1)
    # only cut between distinct values of p
    last = np.append(ps[1:] != ps[:-1], True)
    precision, recall = tp / k, tp / max(ys.sum(), 1)
    b2 = F_BETA**2
    f1 = np.where(
        tp > 0, (1 + b2) * precision * recall / np.maximum(b2 * precision + recall, 1e-12), 0
    )
    f1 = np.where(last, f1, -1)
    i = int(np.argmax(f1))
    cut = (ps[i] + ps[i + 1]) / 2 if i + 1 < len(ps) else ps[i]
    return float(cut), float(precision[i]), float(recall[i]), float(f1[i])


def calibrate_concepts(
    weights: np.ndarray, labels: np.ndarray, names: Sequence[str]
) -> dict[str, ConceptCalibration]:
    """Chunk-level weights (n, C) in [0, 1] and tagger labels (n, C) bool -> the
    calibration of every concept with at least one positive and one negative chunk."""
    out = {}
    for c, name in enumerate(names):
        y = labels[:, c].astype(bool)
        if y.all() or not y.any():
            continue
        w = np.clip(weights[:, c].astype(np.float64), _EPS, 1 - _EPS)
        a, b = fit_platt(np.log(w / (1 - w)), y)
        cal = ConceptCalibration(a, b, 0.0, 0.0, 0.0, 0.0, int(y.sum()), len(y))
        t, prec, rec, f1 = _best_threshold(cal.probability(w), y)
        out[name] = ConceptCalibration(a, b, t, prec, rec, f1, int(y.sum()), len(y))
    return out


def label_unknown_concepts(
    ids: np.ndarray,
    weights: np.ndarray,
    tokens: np.ndarray,
    n_unknown: int,
    token_text: Callable[[int], str],
    top: int = 40,
) -> list[str]:
    """A short label per unknown concept from its top activations.

    ids / weights: (N, k) each held-out token's top-k unknown concepts and weights;
    tokens: (N,) the token ids at those positions. For each concept, its ``top`` strongest
    activations; the label is the (up to) three most frequent token strings there, most
    frequent first, e.g. ``"whale | sperm | Sperm"``. A concept that never fired is
    ``"(never fires)"``."""
    flat_ids = ids.reshape(-1)
    flat_w = weights.reshape(-1)
    flat_tok = np.repeat(tokens, ids.shape[1])
    order = np.lexsort((-flat_w, flat_ids))  # by concept, strongest first
    sorted_ids = flat_ids[order]
    starts = np.searchsorted(sorted_ids, np.arange(n_unknown), side="left")
    ends = np.searchsorted(sorted_ids, np.arange(n_unknown), side="right")
    labels = []
    for j in range(n_unknown):
        picked = order[starts[j] : min(ends[j], starts[j] + top)]
        if len(picked) == 0:
            labels.append("(never fires)")
            continue
        words = Counter(
            token_text(int(t)).strip() or repr(token_text(int(t))) for t in flat_tok[picked]
        )
        # most frequent first; ties in token order, so labels are the same on every run
        common = sorted(words.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
        labels.append(" | ".join(w for w, _ in common))
    return labels


def logit_shares(known: np.ndarray, unknown: np.ndarray, residual: np.ndarray) -> dict:
    """Per-chunk summed contributions (n,) each -> shares of their absolute values (see
    :data:`SHARE_DEFINITION`)."""
    parts = np.array([np.abs(known).sum(), np.abs(unknown).sum(), np.abs(residual).sum()])
    total = parts.sum()
    shares = parts / total if total > 0 else np.zeros(3)
    return {
        "known": round(float(shares[0]), 4),
        "unknown": round(float(shares[1]), 4),
        "residual": round(float(shares[2]), 4),
        "chunks": len(known),
    }


def hidden_statistics(
    sum_h: np.ndarray, sum_h2: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Running sums of vectors (D,) and their squares (D,) over ``n`` of them ->
    (mean, scale) float32, scale = the standard deviation (at least 1e-3 of the largest,
    so a dead dimension is not blown up)."""
    mean = sum_h / max(n, 1)
    std = np.sqrt(np.maximum(sum_h2 / max(n, 1) - mean**2, 0.0))
    std = np.maximum(std, 1e-3 * max(float(std.max()), 1e-12))
    return mean.astype(np.float32), std.astype(np.float32)
