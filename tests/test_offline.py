import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phaselib.detect.offline import (Settings, analyse, generalisation_epoch, pearson, peak_index, smooth,
                                     steepest_increase_index, xcorr_lag)


def bump(n, centre, width=40.0):
    t = np.arange(n)
    return np.exp(-0.5 * ((t - centre) / width) ** 2)


def sigmoid(n, centre, width=20.0):
    return 1 / (1 + np.exp(-(np.arange(n) - centre) / width))


def test_peak_of_a_noisy_bump_is_found():
    rng = np.random.default_rng(0)
    x = bump(3000, 700) + 0.05 * rng.standard_normal(3000)
    assert abs(peak_index(x) - 700) <= 10


def test_skip_ignores_the_initial_transient():
    x = bump(1000, 500) + 3 * np.exp(-np.arange(1000) / 3.0)  # a huge spike at 0
    assert abs(peak_index(x, skip_frac=0.02) - 500) <= 3
    assert peak_index(x, skip_frac=0.0) < 5


def test_steepest_increase_of_a_sigmoid():
    assert abs(steepest_increase_index(sigmoid(2000, 1234)) - 1234) <= 2


def test_smoothing_handles_short_series():
    for n in (0, 1, 2, 3, 4, 10, 50):
        x = np.arange(n, dtype=float) ** 2
        s = smooth(x)
        assert s.shape == x.shape
    # a cubic is reproduced exactly by an order-3 filter
    x = np.linspace(-1, 1, 20) ** 3
    np.testing.assert_allclose(smooth(x), x, atol=1e-10)
    assert peak_index(np.array([1.0])) == 0 and steepest_increase_index(np.array([1.0])) == 0


def test_flat_signals_and_ties_go_to_the_earliest_index():
    flat = np.ones(200)
    assert peak_index(flat, skip_frac=0.1) == 20
    assert steepest_increase_index(flat) == 0
    assert np.isnan(pearson(flat, np.arange(200.0))[0])


def test_generalisation_epoch_needs_reaching_and_staying():
    m = np.array([0.1, 0.6, 0.4, 0.55, 0.7, 0.9])
    assert generalisation_epoch(m, 0.5) == 3
    assert generalisation_epoch(m, 0.95) is None
    assert generalisation_epoch(np.array([0.9, 0.2]), 0.5) is None
    assert generalisation_epoch(np.array([0.6, 0.7]), 0.5) == 0
    assert generalisation_epoch(np.array([]), 0.5) is None


def test_xcorr_recovers_a_known_shift_and_its_sign():
    n = 2000
    g = -sigmoid(n, 800, 30)  # the gradient falls first ...
    m = sigmoid(n, 950, 30)   # ... the metric rises 150 samples later
    k, c = xcorr_lag(g, m, max_lag=500)
    assert k == 150 and c < 0


def test_xcorr_ties_go_to_lag_zero():
    z = np.zeros(100)
    assert xcorr_lag(z, z)[0] == 0


@settings(max_examples=25, deadline=None)
@given(st.integers(-300, 300))
def test_xcorr_lag_is_the_shift(shift):
    n = 1500
    rng = np.random.default_rng(abs(shift))
    base = np.cumsum(rng.standard_normal(n + 700))
    g = base[350:350 + n]
    m = base[350 - shift:350 - shift + n]
    assert xcorr_lag(g, m, max_lag=400, window=3, order=1)[0] == shift


def test_analyse_lag_and_verdict():
    n = 3000
    rng = np.random.default_rng(1)
    epochs = np.arange(n)
    grads = {"fc1": bump(n, 500, 80) + 0.01 * rng.standard_normal(n), "fc2": 0.5 * bump(n, 450, 80)}
    metric = sigmoid(n, 700)
    a = analyse(epochs, grads, metric)
    assert abs(a.gnorm_peak_epoch - 490) <= 20 and abs(a.metric_transition_epoch - 700) <= 3
    assert a.lag == a.metric_transition_epoch - a.gnorm_peak_epoch and a.lag > 0
    assert a.generalised and a.verdict == "generalised"
    assert abs(a.layer_peak_epochs["fc2"] - 450) <= 10
    assert a.layer_lags["fc1"] == a.metric_transition_epoch - a.layer_peak_epochs["fc1"]
    never = analyse(epochs, grads, 0.05 * sigmoid(n, 1200))
    assert not never.generalised and never.verdict == "did not generalise"
    assert never.metric_transition_epoch > 0  # the paper's heuristic still answers; the verdict says no


def test_analyse_maps_indices_to_recorded_epochs():
    epochs = np.arange(0, 3000, 10)
    a = analyse(epochs, {"fc1": bump(300, 50, 8)}, sigmoid(300, 70, 2), Settings(window=11))
    assert a.gnorm_peak_epoch == 500 and a.metric_transition_epoch == 700


@pytest.mark.parametrize("bad", [dict(window=0), dict(order=-1), dict(skip_frac=1.0), dict(threshold=0.0),
                                 dict(max_lag=-1)])
def test_settings_validation(bad):
    with pytest.raises(ValueError, match=list(bad)[0]):
        Settings(**bad)


@pytest.mark.parametrize("step", [1, 3, 7])
def test_a_falling_norm_peaks_where_the_search_starts_at_any_recording_step(step):
    """The search start is a sample index: with a record every `step` epochs it is epochs[int(n * skip)]."""
    epochs = np.arange(0, 3000, step)
    falling = {"all": np.exp(-epochs / 500.0) + 1.0}
    a = analyse(epochs, falling, sigmoid(len(epochs), len(epochs) // 2), Settings(skip_frac=0.02))
    assert a.gnorm_search_start_epoch == epochs[int(len(epochs) * 0.02)]
    assert a.gnorm_peak_epoch == a.gnorm_search_start_epoch
