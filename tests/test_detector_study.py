"""The detector study over a store: one run at a time, and the same table with any worker count."""
import numpy as np
import pandas as pd
import pytest

from phaselib.config import RunConfig
from phaselib.detector_study import evaluate_detectors
from phaselib.record import RunRecord, tidy
from phaselib.store import RunStore


def run(task: str, seed: int, event: int | None, jump: int | None, probes: tuple = ()) -> RunRecord:
    """A 600-epoch run whose grad norm steps up at ``jump`` and whose test metric rises at ``event``."""
    n, t = 600, np.arange(600)
    rng = np.random.default_rng(seed)
    g = 1 + 0.02 * rng.standard_normal(n) + (3.0 * (t >= jump) if jump is not None else 0)
    metric = np.where(t >= event, 0.95, 0.02) if event is not None else np.full(n, 0.02)
    cfg = RunConfig(task=task, modulus=11, seed=seed, epochs=n, width=8, probes=probes)
    return RunRecord(cfg, tidy(cfg.key, t, {("grad_norm", "all"): g, ("test_metric", "all"): metric}))


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    store = RunStore(tmp_path_factory.mktemp("det") / "store.sqlite")
    recs = [run("modular", s, 400, 250) for s in range(4)] + [run("modular", 9, None, None), run("regression", 5, 0, None)]
    for r in recs:
        store.put(r)
    return store, [r.config for r in recs]


def test_changepoints_and_online_alarms_lead_the_known_event(stored):
    store, configs = stored
    ev = evaluate_detectors(store, configs)
    g = ev[(ev["signal"] == "grad_norm") & (ev["layer"] == "all")]
    assert len(g) >= 2
    for row in g.itertuples():
        assert row.hits == 4 and row.n_runs_generalised == 4
        assert 100 <= row.median_lead <= 160  # step at 250, event at 400: a lead of ~150 epochs


def test_the_table_does_not_depend_on_the_worker_count(stored):
    store, configs = stored
    pd.testing.assert_frame_equal(evaluate_detectors(store, configs), evaluate_detectors(store, configs, workers=2))
    with pytest.raises(ValueError, match="workers"):
        evaluate_detectors(store, configs, workers=0)


def test_a_run_and_its_probed_twin_count_once(stored, tmp_path):
    """The probed twin carries the plain run's base signals bit for bit: scored together, the
    run would count twice (and halve the sign test's p-value)."""
    store, configs = stored
    twin = run("modular", 0, 400, 250, probes=(("hessian_every", 100),))
    assert twin.config.replace(probes=()).key == configs[0].key
    store.put(twin)
    both = evaluate_detectors(store, configs + [twin.config])
    pd.testing.assert_frame_equal(both, evaluate_detectors(store, [twin.config] + configs[1:]))
    assert (both["n_runs_generalised"] == 4).all()
