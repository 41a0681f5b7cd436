"""scikit-learn / scipy replace hand-written calibration code: same results within tolerance.

The hand-written implementations they replaced are kept here only, as the reference.
"""

import numpy as np
import pytest

from cbo_ros.core.calibration import IsotonicCalibration, pool_adjacent_violators, ServerProfile
from cbo_ros.core.calibration_fit import group_bootstrap
from cbo_ros.core.calibration_metrics import brier_score, negative_log_likelihood


def reference_pav(y, weights=None):
    """The pool-adjacent-violators loop sklearn's isotonic_regression replaced."""
    y = np.asarray(y, dtype=np.float64)
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=np.float64)
    means, masses, sizes = [], [], []
    for value, weight in zip(y, w):
        means.append(value)
        masses.append(weight)
        sizes.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            mass = masses[-2] + masses[-1]
            mean = (means[-2] * masses[-2] + means[-1] * masses[-1]) / mass
            size = sizes[-2] + sizes[-1]
            del means[-1], masses[-1], sizes[-1]
            means[-1], masses[-1], sizes[-1] = mean, mass, size
    return np.repeat(means, sizes)


def reference_isotonic_knots(conf, hits, weights):
    """The former IsotonicCalibration fit (tie pooling + PAV + knots at block centres)."""
    w = weights / weights.sum()
    xs, inverse = np.unique(conf, return_inverse=True)
    mass = np.bincount(inverse, weights=w, minlength=xs.size)
    keep = mass > 0
    xs, mass = xs[keep], mass[keep]
    rates = np.bincount(inverse, weights=w * hits, minlength=keep.size)[keep] / mass
    ys = reference_pav(rates, mass)
    starts = np.flatnonzero(np.r_[True, np.diff(ys) != 0])
    ends = np.r_[starts[1:], len(ys)]
    knots_x = np.array([np.average(xs[s:e], weights=mass[s:e]) for s, e in zip(starts, ends)])
    return knots_x, np.clip(ys[starts], 1e-3, 1.0 - 1e-3)


def reference_group_bootstrap(statistic, groups, samples=1000, seed=0):
    """The former hand-written cluster bootstrap (percentile interval)."""
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    order = np.argsort(inverse, kind='stable')
    bounds = np.r_[0, np.cumsum(np.bincount(inverse))]
    members = [order[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)]
    rng = np.random.default_rng(seed)
    count = len(members)
    values = np.array([statistic(np.concatenate([members[i] for i in
                                                 rng.integers(0, count, count)]))
                       for _ in range(int(samples))], dtype=np.float64)
    return np.percentile(values, 2.5, axis=0), np.percentile(values, 97.5, axis=0)


def sample(n=3000, seed=3):
    rng = np.random.default_rng(seed)
    raw = rng.beta(5, 2, n)
    conf = np.round(raw, 3)                         # ties, as float confidences have
    hits = (rng.random(n) < raw ** 2).astype(float)  # overconfident
    weights = rng.choice([0.5, 1.0, 2.0], n)
    return conf, hits, weights


def test_pav_matches_the_hand_written_loop():
    rng = np.random.default_rng(5)
    for _ in range(20):
        y, w = rng.random(300), rng.random(300) + 0.1
        np.testing.assert_allclose(pool_adjacent_violators(y, w), reference_pav(y, w),
                                   atol=1e-12)
        np.testing.assert_allclose(pool_adjacent_violators(y), reference_pav(y), atol=1e-12)


def test_isotonic_calibration_matches_the_former_fit():
    conf, hits, weights = sample()
    fitted = IsotonicCalibration().fit_confidences(conf, hits, weights)
    knots_x, knots_y = reference_isotonic_knots(conf, hits, weights)
    np.testing.assert_allclose(fitted.knots_x, knots_x, atol=1e-12)
    np.testing.assert_allclose(fitted.knots_y, knots_y, atol=1e-12)
    grid = np.linspace(0, 1, 501)
    np.testing.assert_allclose(fitted.predict_confidences(grid),
                               np.interp(grid, knots_x, knots_y), atol=1e-12)


def test_server_profile_bins_match_the_former_pav():
    conf, hits, weights = sample(seed=4)
    profile = ServerProfile.fit(conf, conf, {128: hits}, bins=10, weights=weights)
    index = np.clip((conf * 10).astype(int), 0, 9)
    counts = np.bincount(index, weights=weights, minlength=10)
    sums = np.bincount(index, weights=weights * hits, minlength=10)
    prior = float(np.sum(weights * hits) / np.sum(weights))
    expected = reference_pav((sums + 4.0 * prior) / (counts + 4.0), counts + 4.0)
    np.testing.assert_allclose(profile.accuracy[128], expected, atol=1e-12)


def test_log_loss_and_brier_match_the_formulas():
    conf, hits, _ = sample()
    conf = np.r_[conf, 0.0, 1.0, 1.0]              # the clipped extremes too
    hits = np.r_[hits, 1.0, 0.0, 1.0]
    clipped = np.clip(conf, 1e-12, 1 - 1e-12)
    nll = -np.mean(hits * np.log(clipped) + (1 - hits) * np.log(1 - clipped))
    assert negative_log_likelihood(conf, hits) == pytest.approx(nll, rel=1e-12)
    assert brier_score(conf, hits) == pytest.approx(np.mean((conf - hits) ** 2), rel=1e-12)
    # One outcome only (all wrong, all right) is still defined.
    assert brier_score([0.2, 0.4], [0, 0]) == pytest.approx(0.1)
    assert negative_log_likelihood([0.5, 0.5], [1, 1]) == pytest.approx(np.log(2))


def test_scipy_group_bootstrap_matches_the_hand_written_one():
    rng = np.random.default_rng(7)
    groups = np.repeat(np.arange(12), rng.integers(5, 40, 12))
    effect = rng.normal(0.6, 0.15, 12)[groups]       # strongly correlated within a group
    hits = (rng.random(len(groups)) < np.clip(effect, 0, 1)).astype(float)

    def statistic(pick):
        return np.array([hits[pick].mean(), hits[pick].std()])

    low, high = group_bootstrap(statistic, groups, 4000, seed=1)
    old_low, old_high = reference_group_bootstrap(statistic, groups, 4000, seed=1)
    # Different random draws: equal up to Monte Carlo noise (interval ~0.2 wide).
    np.testing.assert_allclose(low, old_low, atol=0.02)
    np.testing.assert_allclose(high, old_high, atol=0.02)
    assert low.shape == (2,) and np.all(low < high)
    # Whole groups are resampled: the interval is wider than a frame-level one would be.
    frame_low, frame_high = group_bootstrap(statistic, np.arange(len(groups)), 2000)
    assert high[0] - low[0] > 1.2 * (frame_high[0] - frame_low[0])
    # Deterministic for a seed.
    again = group_bootstrap(statistic, groups, 4000, seed=1)
    np.testing.assert_array_equal(again[0], low)


def test_group_bootstrap_of_one_group_is_the_statistic_itself():
    low, high = group_bootstrap(lambda pick: float(np.mean(pick)), np.zeros(7), 100)
    assert float(low) == float(high) == pytest.approx(3.0)
    old_low, old_high = reference_group_bootstrap(lambda pick: float(np.mean(pick)), np.zeros(7))
    assert (float(old_low), float(old_high)) == (float(low), float(high))
