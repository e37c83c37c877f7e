"""The re-rank signals: concept overlap, longest shared word run, stable ordering."""

from __future__ import annotations

import numpy as np
import pytest

from tda.attribution.rerank import concept_overlap, longest_shared_run, rerank_order, words


def test_words_are_lower_cased_word_runs():
    assert words("The Amber-falcon guild, founded 1901!") == [
        "the", "amber", "falcon", "guild", "founded", "1901"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("query", "text", "expected"),
    [
        ("a b c d", "x a b c y", 3),
        ("a b c d", "d c b a", 1),
        ("a b x c d e", "c d e a b", 3),
        ("", "a b", 0),
        ("a b", "", 0),
        ("a a a", "a a", 2),
        ("founded in ashgate", "the guild was founded in ashgate", 3),
    ],
)
def test_longest_shared_run(query, text, expected):
    assert longest_shared_run(query.split(), text.split()) == expected


def test_longest_shared_run_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(200):
        q = rng.integers(0, 4, rng.integers(0, 9)).tolist()
        t = rng.integers(0, 4, rng.integers(0, 9)).tolist()
        brute = max(
            [0]
            + [
                j - i
                for i in range(len(q))
                for j in range(i + 1, len(q) + 1)
                if any(t[s : s + j - i] == q[i:j] for s in range(len(t) - (j - i) + 1))
            ]
        )
        assert longest_shared_run(q, t) == brute


def test_concept_overlap_sums_the_smaller_shared_weight():
    out = {3: 0.5, 7: 0.2, 9: 0.9}
    ids, weights = np.array([7, 3, 11]), np.array([0.6, 0.1, 0.8], dtype=np.float32)
    assert concept_overlap(out, ids, weights) == pytest.approx(0.2 + 0.1)
    assert concept_overlap({}, ids, weights) == 0.0


def test_rerank_order_is_stable_on_ties():
    assert rerank_order([0.0, 2.0, 0.5, 2.0]) == [1, 3, 2, 0]
    assert rerank_order([1, 1, 1]) == [0, 1, 2]
