import numpy as np
import pandas as pd
import pytest

from phaselib.config import RunConfig
from phaselib.detect.offline import Settings
from phaselib.record import RunRecord, tidy
from phaselib.sweep import analyse_record
from phaselib.widgets import ThresholdExplorer


def synthetic_record(seed: int, peak: int, rise: int, top: float = 1.0) -> RunRecord:
    """A run whose gradient peaks at ``peak`` and whose test metric rises at ``rise``."""
    n = 1000
    t = np.arange(n)
    rng = np.random.default_rng(seed)
    g = np.exp(-0.5 * ((t - peak) / 40) ** 2) + 0.02 * rng.standard_normal(n)
    m = top / (1 + np.exp(-(t - rise) / 10))
    cfg = RunConfig(modulus=11, seed=seed, epochs=n, width=8)
    cols = {("grad_norm", "fc1"): g, ("grad_norm", "fc2"): 0.5 * g, ("test_metric", "all"): m,
            ("train_metric", "all"): np.ones(n)}
    return RunRecord(cfg, tidy(cfg.key, t, cols))


@pytest.fixture
def explorer():
    return ThresholdExplorer([synthetic_record(1, 300, 500), synthetic_record(2, 200, 700, top=0.6)])


def test_initial_detections_match_the_analysis(explorer):
    rec = explorer.records[0]
    assert explorer.current == analyse_record(rec, Settings())
    assert abs(explorer.current.lag - 200) <= 10


def test_moving_the_threshold_changes_the_verdict_and_table(explorer):
    assert explorer.analyses[1].generalised  # tops out at 0.6 >= 0.5
    explorer.threshold.value = 0.8
    assert not explorer.analyses[1].generalised
    table = explorer.table()
    assert isinstance(table, pd.DataFrame) and table.loc[1, "verdict"] == "did not generalise"


def test_moving_skip_and_window_recomputes(explorer):
    explorer.run.value = 1
    assert abs(explorer.current.gnorm_peak_epoch - 200) <= 10
    explorer.skip_frac.value = 0.25  # skips past the peak at 200
    assert explorer.current.gnorm_peak_epoch >= 250
    explorer.skip_frac.value = 0.0
    explorer.window.value = 3
    explorer.order.value = 7  # clipped to window - 1
    assert explorer.settings.order == 2
    assert explorer.current == analyse_record(explorer.records[1], explorer.settings)


def test_widget_and_static_view_render(explorer):
    w = explorer.widget()
    assert len(w.children) == 7
    explorer.static_view()


def test_detector_choice_and_knobs_recompute_events():
    rec = synthetic_record(3, 300, 500)
    ex = ThresholdExplorer([rec])
    assert ex.events == []
    ex.signal.value = ("test_metric", "all")
    ex.detector.value = "changepoint"
    assert ex.events and abs(ex.events[0] - 500) <= 25  # the metric's step
    ex.signal.value = ("grad_norm", "fc1")  # a noisy bump centred on epoch 300
    ex.detector.value = "online"
    ex.det_window.value = 5
    ex.persistence.value = 3
    first = list(ex.events)
    assert first and 180 <= first[0] <= 320
    ex.k.value = 8.0
    assert ex.events != first or ex.events == []
    ex.penalty.value = 1e9
    ex.detector.value = "changepoint"
    assert ex.events == []  # an enormous penalty allows no change point: no transition


def test_widget_shows_detector_controls(explorer):
    assert len(explorer.widget().children) == 7
