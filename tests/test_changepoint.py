"""Change points (ruptures): seeded synthetic ground truth with stated tolerances.

Series of 3000 samples are handled at a resolution of f = 12 samples (MAX_POINTS = 250), so
change points are multiples of 12. Tolerances: a step is located within f of the truth (any
cost); a variance change within f by the normal cost and within 4 f by rbf (it sees block
means); a ramp of length L starting at t0 gives its first change point in [t0 - f, t0 + L/4]
and all of them inside the ramp (+- f).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from ruptures.costs import CostL2, CostNormal

from phaselib.detect.changepoint import (
    PENALTY_C, ChangePoints, CostL2Prefix, CostNormalPrefix, block_means, default_penalty, detect,
    downsample_factor)

N, T0, F = 3000, 1507, 12
ALL = [(m, c) for m in ("pelt", "binseg") for c in ("l2", "normal", "rbf")]


def noise(seed: int, n: int = N) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=n)


def test_prefix_costs_equal_ruptures_costs():
    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(size=200), 5 + 0.01 * rng.normal(size=100), np.full(20, 2.0)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pairs = [(CostL2Prefix().fit(x), CostL2().fit(x)),
                 (CostNormalPrefix().fit(x), CostNormal().fit(x))]
    for start, end in [(0, 320), (0, 2), (10, 90), (150, 260), (200, 300), (300, 320)]:
        for ours, theirs in pairs:
            assert ours.error(start, end) == pytest.approx(theirs.error(start, end),
                                                           rel=1e-9, abs=1e-9)


def test_block_means_and_factor():
    assert downsample_factor(3000) == 12 and downsample_factor(250) == 1
    assert downsample_factor(251) == 2
    np.testing.assert_allclose(block_means(np.arange(7.0), 3), [1.0, 4.0, 6.0])


@pytest.mark.parametrize("method, cost", ALL)
def test_pure_noise_has_no_change_point(method, cost):
    cp = detect(noise(1), method, cost)
    assert cp == ChangePoints((), None, default_penalty(250, cost), method, cost, F)


@pytest.mark.parametrize("cost", ["l2", "normal"])
def test_default_penalty_false_positive_rate_on_noise(cost):
    """The default (one unit above BIC) gives no spurious change point in 300 noise series;
    BIC itself (2 log m for l2, 3 log m for normal) gives some: the reason for the choice."""
    bic = {"l2": 2.0, "normal": 3.0}[cost] * math.log(250)
    series = [noise(1000 + s) for s in range(300)]
    default_hits = sum(bool(detect(x, "binseg", cost).indices) for x in series)
    bic_hits = sum(bool(detect(x, "binseg", cost, penalty=bic).indices) for x in series)
    assert default_hits == 0
    assert bic_hits >= 1


@pytest.mark.parametrize("method, cost", ALL)
def test_step_found_within_one_block(method, cost):
    x = noise(2)
    x[T0:] += 1.0
    cp = detect(x, method, cost)
    assert len(cp.indices) == 1
    assert abs(cp.indices[0] - T0) <= F
    assert cp.transition == cp.indices[0]
    assert all(i % F == 0 for i in cp.indices)


@pytest.mark.parametrize("method, cost, tol", [
    ("pelt", "normal", F), ("binseg", "normal", F), ("binseg", "rbf", 4 * F)])
def test_variance_change_found(method, cost, tol):
    x = noise(3)
    x[T0:] *= 2.5
    cp = detect(x, method, cost)
    assert len(cp.indices) == 1 and abs(cp.indices[0] - T0) <= tol


def test_l2_is_blind_to_variance_changes():
    x = noise(3)
    x[T0:] *= 2.5
    assert detect(x, "binseg", "l2").indices == ()


@pytest.mark.parametrize("method, cost", [("pelt", "l2"), ("binseg", "l2"), ("binseg", "normal"),
                                          ("binseg", "rbf")])
def test_ramp_found(method, cost):
    length = 500
    x = noise(4)
    x[T0:T0 + length] += np.linspace(0.0, 5.0, length)
    x[T0 + length:] += 5.0
    cp = detect(x, method, cost)
    assert T0 - F <= cp.transition <= T0 + length / 4
    assert all(T0 - F <= i <= T0 + length + F for i in cp.indices)


def test_initial_transient_is_skipped():
    """A fast initial decay (first ~50 samples) gives a change point at or before the 5%
    transient; the transition is the later step."""
    x = noise(5)
    x += 10 * np.exp(-np.arange(N) / 10)
    x[T0:] += 1.0
    cp = detect(x, "pelt", "l2")
    assert cp.indices[0] <= 0.05 * N
    assert abs(cp.transition - T0) <= F
    assert detect(x, "pelt", "l2", transient=0).transition == cp.indices[0]


def test_short_series_full_resolution():
    """A Hessian-probe series (60 points, f = 1): a 3-sigma step at 30 is found within 2."""
    x = noise(6, 60)
    x[30:] += 3.0
    for method in ("pelt", "binseg"):
        cp = detect(x, method, "l2")
        assert cp.factor == 1 and len(cp.indices) == 1 and abs(cp.transition - 30) <= 2


def test_constant_and_tiny_series():
    assert detect(np.ones(500)).indices == ()
    assert detect(np.arange(5.0)).indices == ()


def test_penalty_and_resolution_knobs():
    x = noise(7)
    x[T0:] += 1.0
    cp = detect(x, "binseg", "l2", max_points=N)
    assert cp.factor == 1 and abs(cp.indices[0] - T0) <= 10
    assert cp.penalty == pytest.approx(PENALTY_C["l2"] * math.log(N))
    loose = detect(noise(8), "binseg", "l2", penalty=0.5)
    assert loose.penalty == 0.5 and len(loose.indices) > 3  # a tiny penalty over-segments


@pytest.mark.parametrize("kw, name", [
    (dict(method="dp"), "method"), (dict(cost="ar"), "cost"), (dict(penalty=-1.0), "penalty"),
    (dict(min_size=0), "min_size"), (dict(transient=-1), "transient"),
    (dict(max_points=2), "max_points"),
])
def test_invalid_parameters(kw, name):
    with pytest.raises(ValueError, match=name):
        detect(noise(0, 100), **kw)
    with pytest.raises(ValueError, match="finite"):
        detect(np.array([0.0, np.nan, 1.0]))
