"""lambda_min precursor: tenfold drops and zero crossings that persist, on synthetic series."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phaselib.detect.curvature import detect
from phaselib.detect.online import Alarm


def test_tenfold_drop_of_positive_level():
    """0.5 +- 5% noise, dropping to 0.02 at probe 40 (the seed's example): alarm at the third
    probe below 0.05."""
    rng = np.random.default_rng(0)
    x = 0.5 * (1 + 0.05 * rng.normal(size=60))
    x[40:] = 0.02 * (1 + 0.05 * rng.normal(size=20))
    a = detect(x, persistence=3)
    assert a == Alarm(42, float(x[42]), "down", "curvature")


def test_ninefold_drop_is_not_enough_and_factor_is_a_knob():
    x = np.r_[np.full(20, 1.0), np.full(20, 1 / 9)]
    assert detect(x) is None
    assert detect(x, drop_factor=8.0).index == 22


def test_zero_crossing_from_positive_is_a_drop():
    x = np.r_[np.linspace(1.0, 0.9, 30), np.linspace(-0.01, -0.5, 30)]
    assert detect(x, persistence=5).index == 34


def test_negative_level_tenfold_more_negative_or_upward_crossing():
    rng = np.random.default_rng(1)
    base = -0.01 * (1 + 0.1 * rng.normal(size=40))
    down = detect(np.r_[base, np.full(10, -0.2)])
    assert (down.index, down.direction) == (42, "down")
    up = detect(np.r_[base, np.full(10, 0.003)])
    assert (up.index, up.direction) == (42, "up")
    assert detect(np.r_[base, np.full(10, -0.05)]) is None  # only fivefold
    both = np.r_[base, np.full(5, 0.003), np.full(5, -0.2)]  # up across zero first, then tenfold down
    assert detect(both).direction == "up" and detect(both, direction="up").index == 42
    assert (detect(both, direction="down").index, detect(both, direction="down").direction) == (47, "down")
    assert detect(np.r_[base, np.full(10, 0.003)], direction="down") is None
    with pytest.raises(ValueError, match="direction"):
        detect(both, direction="sideways")


def test_dip_that_does_not_persist_is_ignored():
    x = np.full(50, 1.0)
    x[30:32] = 0.01  # two probes only
    assert detect(x, persistence=3) is None
    assert detect(x, persistence=2).index == 31


def test_baseline_is_excluded_and_robust():
    x = np.full(30, 2.0)
    x[1] = -100.0  # one bad estimate inside the baseline: the median ignores it
    assert detect(x, baseline=5) is None
    x[:5] = 0.05  # a drop inside the baseline is the baseline
    assert detect(x, baseline=5) is None


def test_zero_level_uses_sign_only():
    x = np.r_[np.zeros(10), np.full(5, 1.0), np.full(5, -1e-9)]
    assert detect(x, baseline=10).index == 17


@pytest.mark.parametrize("kw, name", [
    (dict(drop_factor=1.0), "drop_factor"), (dict(drop_factor=np.inf), "drop_factor"),
    (dict(persistence=0), "persistence"), (dict(baseline=0), "baseline"),
])
def test_invalid_parameters(kw, name):
    with pytest.raises(ValueError, match=name):
        detect(np.ones(20), **kw)


def test_short_and_bad_series():
    assert detect(np.ones(3)) is None
    with pytest.raises(ValueError, match="finite"):
        detect(np.array([1.0, np.nan, 1.0]))


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.floats(-10, 10), min_size=1, max_size=80),
       persistence=st.integers(1, 6), factor=st.floats(1.5, 20.0))
def test_alarm_matches_definition(values, persistence, factor):
    """Brute-force check of the definition: the alarm is the first index whose last
    ``persistence`` samples all qualify in the same direction."""
    x = np.array(values)
    b = max(2, len(x) // 10)
    level = np.median(x[:b])

    def qualifies(v: float) -> int:
        if level > 0:
            return -1 if v <= level / factor else 0
        if level < 0:
            return -1 if v <= level * factor else (1 if v > 0 else 0)
        return -1 if v < 0 else 0

    q = [qualifies(v) for v in x]
    expected = next((t for t in range(b + persistence - 1, len(x))
                     if q[t] != 0 and all(q[j] == q[t] for j in range(t - persistence + 1, t + 1))),
                    None)
    a = detect(x, drop_factor=factor, persistence=persistence)
    assert (a.index if a else None) == expected
