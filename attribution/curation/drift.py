"""Quantizer drift: do vectors added to a root still fit the coarse quantizer that was
trained on the root's first vectors?

An IVF index is trained once, on a sample of the vectors it was built from. Vectors
added later (``tda add``) are coded with that quantizer; when they come from another
distribution (another language, another domain), two things show it:

1. they sit farther from their nearest centroid than the training vectors did (the
   residuals the codes must carry grow, and recall drops);
2. they crowd into a few coarse lists (searches that probe those lists scan more and
   lose ranking resolution).

:func:`measure_drift` puts figures on both, against a reference sample of the root's
existing vectors: the mean L2 distance to the nearest centroid (added / reference) and
FAISS's imbalance factor of the list sizes, ``nlist * sum(size_i^2) / n^2`` (1 when
balanced), on equally many reference and added vectors (it grows as n shrinks, so
unequal counts would not compare). :data:`DISTANCE_RATIO` and :data:`IMBALANCE_RATIO`
are the points where ``tda add`` warns and suggests ``tda index retrain``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tda.schemas.wire import JsonRecord

__all__ = [
    "DISTANCE_RATIO",
    "IMBALANCE_RATIO",
    "Drift",
    "coarse_assigner",
    "imbalance_factor",
    "measure_drift",
]

# Warn above these ratios (added / reference). Same-distribution samples of a few hundred
# vectors stay within ~1.1 (distance) and ~1.5 (imbalance) in the tests' clustered data;
# a shifted distribution gives 2-10x on both.
DISTANCE_RATIO = 1.5
IMBALANCE_RATIO = 2.0


@dataclass(frozen=True)
class Drift(JsonRecord):
    """The drift figures of one add: the lists, the vectors compared on each side, the
    mean distance to the nearest centroid and the imbalance factor on each side, their
    ratios (added / reference), and whether either ratio crossed its threshold."""

    lists: int
    reference_vectors: int
    added_vectors: int
    reference_distance: float
    added_distance: float
    distance_ratio: float
    reference_imbalance: float
    added_imbalance: float
    imbalance_ratio: float
    drifted: bool

    def line(self) -> str:
        """The figures as one line (what ``tda add`` prints as its warning)."""
        return (
            f"mean distance to the nearest of {self.lists} centroids {self.added_distance:.3f} "
            f"for the added vectors vs {self.reference_distance:.3f} for the root's "
            f"(x{self.distance_ratio:.2f}); list imbalance {self.added_imbalance:.2f} vs "
            f"{self.reference_imbalance:.2f} (x{self.imbalance_ratio:.2f})"
        )


def imbalance_factor(lists: np.ndarray, nlist: int) -> float:
    """lists: (n,) coarse list of each vector -> ``nlist * sum(size^2) / n^2``."""
    sizes = np.bincount(lists, minlength=nlist).astype(np.float64)
    n = float(sizes.sum())
    return float(nlist * (sizes**2).sum() / (n * n)) if n else 0.0


def _even(x: np.ndarray, n: int) -> np.ndarray:
    """``n`` rows of x evenly spaced (deterministic)."""
    if len(x) <= n:
        return x
    return x[(np.arange(n, dtype=np.int64) * len(x)) // n]


def measure_drift(
    assign: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    nlist: int,
    reference: np.ndarray,
    added: np.ndarray,
) -> Drift:
    """``assign(x (n, D) float32) -> (distance (n,), list (n,))``: the quantizer's
    nearest centroid of each vector and the L2 distance to it. ``reference``: (r, D)
    vectors like the training sample; ``added``: (a, D) the new ones. Imbalance is
    compared on min(r, a) vectors of each side, evenly spaced."""
    ref_d, ref_l = assign(np.ascontiguousarray(reference, dtype=np.float32))
    add_d, add_l = assign(np.ascontiguousarray(added, dtype=np.float32))
    n = min(len(ref_l), len(add_l))
    ref_imb = imbalance_factor(_even(ref_l, n), nlist)
    add_imb = imbalance_factor(_even(add_l, n), nlist)
    ref_mean, add_mean = float(ref_d.mean()), float(add_d.mean())
    d_ratio = add_mean / ref_mean if ref_mean > 0 else float("inf")
    i_ratio = add_imb / ref_imb if ref_imb > 0 else float("inf")
    return Drift(
        lists=nlist,
        reference_vectors=len(ref_l),
        added_vectors=len(add_l),
        reference_distance=round(ref_mean, 6),
        added_distance=round(add_mean, 6),
        distance_ratio=round(d_ratio, 4),
        reference_imbalance=round(ref_imb, 4),
        added_imbalance=round(add_imb, 4),
        imbalance_ratio=round(i_ratio, 4),
        drifted=bool(d_ratio > DISTANCE_RATIO or i_ratio > IMBALANCE_RATIO),
    )


def coarse_assigner(index) -> tuple[Callable, int] | None:
    """A FAISS index (as a reader opened it: IVF, possibly behind OPQ / PCA transforms)
    -> (assign, nlist) for :func:`measure_drift`, or None when it has no coarse
    quantizer (a flat index: nothing to drift from)."""
    import faiss

    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return None
    transforms = []
    if isinstance(index, faiss.IndexPreTransform):
        transforms = [
            faiss.downcast_VectorTransform(index.chain.at(i)) for i in range(index.chain.size())
        ]
    quantizer = ivf.quantizer
    centroids = quantizer.reconstruct_n(0, ivf.nlist)  # (nlist, D')

    def assign(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        for t in transforms:
            x = t.apply_py(x)
        _, lists = quantizer.search(np.ascontiguousarray(x, dtype=np.float32), 1)
        lists = lists[:, 0]
        return np.linalg.norm(x - centroids[lists], axis=1), lists

    return assign, int(ivf.nlist)
