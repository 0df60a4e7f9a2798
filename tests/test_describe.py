"""phaselib.detect.describe: every detector's result in one line, "no transition" when it found none."""
from __future__ import annotations

import numpy as np
import pytest

from phaselib.detect import NO_TRANSITION, changepoint, curvature, describe, online


def step(n: int = 600, at: int = 300, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.r_[rng.normal(1.0, 0.1, at), rng.normal(2.0, 0.1, n - at)]


def flat(n: int = 600, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(1.0, 0.1, n)


def test_each_detector_says_no_transition_on_a_flat_series():
    x = flat()
    for result in (online.replay(x), changepoint.detect(x), curvature.detect(x), None, []):
        assert describe(result).startswith(NO_TRANSITION), result


def test_a_found_step_is_named_with_its_position_or_epoch():
    x = step()
    cp = changepoint.detect(x)
    assert describe(cp) == f"transition at index {cp.transition} (pelt, l2 cost; 1 change point(s) in all)"
    epochs = np.arange(len(x)) * 10
    first = online.replay(x)[0]
    assert describe(online.replay(x), epochs) == f"transition flagged at epoch {10 * first.index} (online, up)"
    assert describe(first) == describe([first]) == describe([first, online.Alarm(599, 2.0, "up", "online")])


def test_change_points_inside_the_transient_are_not_a_transition():
    x = step(at=10)  # the step lies within the first 5% (the start-up transient)
    cp = changepoint.detect(x)
    assert cp.indices and cp.transition is None
    assert describe(cp) == f"{NO_TRANSITION} (pelt, l2 cost: change points only within the start-up transient)"


def test_anything_else_is_refused():
    for bad, name in (([1, 2], "list"), (3, "int"), ("alarm", "str")):
        with pytest.raises(TypeError, match=f"result: {name}"):
            describe(bad)
