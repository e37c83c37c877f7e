"""What a trained builtin model learns about itself: concept calibration, unknown-concept
labels, logit shares, pooling statistics; and the calibrated concept scan."""

from __future__ import annotations

import numpy as np
import pytest

from tda.attribution.curation.scan import wilson_lower
from tda.attribution.encoders.builtin.calibrate import (
    ConceptCalibration,
    calibrate_concepts,
    fit_platt,
    hidden_statistics,
    label_unknown_concepts,
    logit_shares,
)


def test_platt_recovers_a_known_logistic_relation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=20_000)
    y = rng.random(20_000) < 1 / (1 + np.exp(-(2.0 * x - 1.0)))
    a, b = fit_platt(x, y)
    assert a == pytest.approx(2.0, abs=0.1)
    assert b == pytest.approx(-1.0, abs=0.1)


def test_platt_stays_finite_on_separable_data():
    x = np.array([-3.0, -2.0, -1.0, 1.0, 2.0, 3.0])
    a, b = fit_platt(x, x > 0)
    assert np.isfinite([a, b]).all() and a > 0


def test_calibration_is_monotone_and_its_threshold_separates():
    """A concept whose chunk weight is high exactly on its positives gets a threshold
    between the two groups, precision and recall 1; probabilities rise with the weight."""
    rng = np.random.default_rng(1)
    pos = rng.uniform(0.6, 0.9, 40)
    neg = rng.uniform(0.01, 0.3, 400)
    weights = np.concatenate([pos, neg])[:, None]
    labels = np.concatenate([np.ones(40), np.zeros(400)])[:, None].astype(bool)
    cal = calibrate_concepts(weights, labels, ["violence"])["violence"]
    assert cal.positives == 40 and cal.chunks == 440
    assert cal.precision == 1.0 and cal.recall == 1.0
    p = cal.probability(np.array([0.05, 0.3, 0.6, 0.9]))
    assert np.all(np.diff(p) > 0)
    lowest_positive = cal.probability(pos.min(keepdims=True))[0]
    highest_negative = cal.probability(neg.max(keepdims=True))[0]
    assert highest_negative < cal.threshold < lowest_positive
    # round trip through config.json
    assert ConceptCalibration.from_dict(cal.to_dict()).threshold == pytest.approx(cal.threshold)


def test_calibration_skips_a_concept_without_positives():
    weights = np.random.default_rng(0).random((50, 2))
    labels = np.zeros((50, 2), dtype=bool)
    labels[:5, 1] = True
    assert set(calibrate_concepts(weights, labels, ["never", "some"])) == {"some"}


def test_unknown_labels_name_the_tokens_where_a_concept_fires_most():
    # concept 0 fires strongly on token 7 ("whale") and weakly elsewhere; concept 2 never
    ids = np.array([[0, 1], [0, 1], [0, 1], [1, 0], [1, 0]])
    weights = np.array([[0.9, 0.1], [0.8, 0.1], [0.7, 0.2], [0.3, 0.05], [0.3, 0.01]])
    tokens = np.array([7, 7, 8, 9, 9])
    text = {7: " whale", 8: " sperm", 9: "\n"}
    labels = label_unknown_concepts(ids, weights, tokens, 3, text.__getitem__, top=3)
    assert labels[0] == "whale | sperm"
    assert labels[1] == "'\\n' | sperm"  # whitespace-only tokens are shown quoted
    assert labels[2] == "(never fires)"


def test_logit_shares_are_absolute_sums_over_chunks():
    known = np.array([3.0, -1.0])
    unknown = np.array([1.0, 1.0])
    residual = np.array([0.0, -2.0])
    share = logit_shares(known, unknown, residual)
    assert share == {"known": 0.5, "unknown": 0.25, "residual": 0.25, "chunks": 2}


def test_hidden_statistics_centre_and_scale():
    h = np.random.default_rng(0).normal(loc=5.0, scale=2.0, size=(10_000, 4))
    mean, scale = hidden_statistics(h.sum(0), (h**2).sum(0), len(h))
    assert mean == pytest.approx(np.full(4, 5.0), abs=0.1)
    assert scale == pytest.approx(np.full(4, 2.0), abs=0.1)


def test_wilson_lower_bound_ranks_a_large_source_above_a_lucky_small_one():
    assert wilson_lower(1, 1) < wilson_lower(300, 1000)
    assert wilson_lower(0, 10) == 0.0 and wilson_lower(0, 0) == 0.0
    assert 0.0 < wilson_lower(30, 100) < 0.3


def test_weight_cut_is_the_raw_weight_where_the_probability_reaches_the_threshold():
    from tda.attribution.encoders.builtin.calibrate import firing_cuts

    cal = ConceptCalibration(2.0, -1.0, 0.7, 1.0, 1.0, 1.0, 5, 50)
    w = cal.weight_cut()
    assert cal.probability(np.array([w]))[0] == pytest.approx(0.7)
    falling = ConceptCalibration(-1.0, 0.0, 0.5, 0, 0, 0, 1, 2)
    cuts = firing_cuts(["a", "b", "c"], {"a": cal, "b": falling})
    assert cuts[0] == pytest.approx(w) and cuts[1] == np.inf and cuts[2] == 0.5


def test_platt_on_degenerate_chunks_stays_bounded():
    """The demo's violence concept: almost every held-out chunk at the clipped minimum
    weight and the few positives among them. Newton without step control diverged there
    (a = -456,692, b = -2.9e12, every probability 0)."""
    x = np.full(3000, np.log(1e-6 / (1 - 1e-6)))
    x[:40] = 0.3  # a few chunks where the concept fired
    y = np.zeros(3000, dtype=bool)
    y[:20] = True  # half of them tagged
    y[100:113] = True  # and some tagged chunks where the head did not fire
    a, b = fit_platt(x, y)
    assert np.isfinite([a, b]).all() and abs(a) < 10 and abs(b) < 50
    p = 1 / (1 + np.exp(-(a * x + b)))
    assert p[:40].mean() > p[40:].mean()  # firing chunks are likelier
