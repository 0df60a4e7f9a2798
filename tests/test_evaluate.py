"""Evaluation of detectors: hand-computed tables, an end-to-end synthetic sweep."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from phaselib.detect.online import replay
from phaselib.evaluate import (
    DetectorSpec, alarms_for, detector_table, evaluate, event_epochs, leads,
    sign_test, spec, specific, sweep)

NAN = math.nan


@pytest.fixture
def runs() -> pd.DataFrame:
    return pd.DataFrame({
        "run": ["A", "B", "C", "D"], "task": ["modular", "modular", "modular", "regression"],
        "operation": ["add", "add", "add", None], "frac": [0.7, 0.9, 0.5, 0.7],
        "seed": [42, 42, 42, 42], "epochs": [3000, 3000, 3000, 3000],
        "event_epoch": [1000.0, 600.0, NAN, 10.0]})  # the control's event is ignored


@pytest.fixture
def alarms() -> pd.DataFrame:
    rows = [("A", "x", 700.0), ("B", "x", 650.0), ("C", "x", 100.0), ("D", "x", NAN),
            ("A", "y", NAN), ("B", "y", 500.0), ("B", "y", 900.0), ("C", "y", NAN),
            ("D", "y", 200.0), ("D", "y", 400.0)]
    return pd.DataFrame([(r, "gnorm", "all", d, e) for r, d, e in rows],
                        columns=["run", "signal", "layer", "detector", "alarm_epoch"])


def test_evaluate_by_hand(alarms, runs):
    ev = evaluate(alarms, runs).set_index("detector")
    x, y = ev.loc["x"], ev.loc["y"]
    # x: leads A 300, B -50 (late); one alarm on the never-generalised run C
    assert (x.n_runs_generalised, x.n_leads, x.hits) == (2, 2, 1)
    assert x.hit_rate == 0.5 and x.median_lead == 125.0
    assert x.false_alarms_per_1000_epochs == pytest.approx(1000 / 6000)
    assert x.false_alarms_per_1000_epochs_control == 0.0
    assert x.false_alarms_per_1000_epochs_never_generalised == pytest.approx(1000 / 3000)
    assert x.p_value == pytest.approx(0.75)  # one positive, one negative lead
    assert (x.null_runs_alarmed, x.n_null_runs) == (1, 2)  # C alarmed, the control D not
    assert (x.null_runs_alarmed_control, x.n_null_runs_control) == (0, 1)
    assert (x.null_runs_alarmed_never_generalised, x.n_null_runs_never_generalised) == (1, 1)
    assert (x.lead_ci_low, x.lead_ci_high, x.lead_ci_coverage) == (-50, 300, 0.5)  # two leads: the range, 50%
    # y: A missed (no alarm), B's first alarm leads by 100 (its later alarm is ignored);
    # both control alarms count
    assert (y.n_runs_generalised, y.n_leads, y.hits, y.median_lead) == (2, 1, 1, 100.0)
    assert math.isnan(y.lead_ci_low) and math.isnan(y.lead_ci_high)
    assert y.false_alarms == 2 and y.false_alarms_per_1000_epochs_control == pytest.approx(2 / 3)
    assert (y.null_runs_alarmed, y.n_null_runs) == (1, 2)  # two alarms, one run (D)
    assert y.p_value == pytest.approx(0.5)


def test_leads_table(alarms, runs):
    lt = leads(alarms, runs)
    got = {(r.detector, r.run): r.lead for r in lt.itertuples()}
    assert got[("x", "A")] == 300 and got[("x", "B")] == -50 and got[("y", "B")] == 100
    assert math.isnan(got[("y", "A")])
    assert set(lt["run"]) == {"A", "B"}


def test_runs_table_is_checked(alarms, runs):
    with pytest.raises(ValueError, match="missing from the runs table"):
        evaluate(alarms, runs[runs["run"] != "A"])
    with pytest.raises(ValueError, match="lacks columns"):
        evaluate(alarms, runs.drop(columns="epochs"))


def test_sign_test():
    assert sign_test(np.array([5, 3, 8, 1, 2, 9.0])) == pytest.approx(1 / 64)
    assert sign_test(np.array([-5, -3.0])) == pytest.approx(1.0)
    assert sign_test(np.array([0.0, 4.0])) == pytest.approx(0.5)  # the zero is dropped
    assert math.isnan(sign_test(np.array([])))


def test_specs_are_hashable_and_sweepable():
    a = spec("online", persistence=10, k=3.0)
    assert a == DetectorSpec("online", (("k", 3.0), ("persistence", 10)))
    assert a.label == "online(k=3.0, persistence=10)"
    assert len({a, spec("online", k=3.0, persistence=10)}) == 1
    grid = sweep("online", k=[2, 3], persistence=[5, 10, 20])
    assert len(grid) == 6 and len(set(grid)) == 6
    with pytest.raises(ValueError, match="name"):
        spec("magic")


def _tidy(run: str, epochs: np.ndarray, values: np.ndarray, signal: str = "g") -> pd.DataFrame:
    return pd.DataFrame({"run": run, "epoch": epochs, "signal": signal, "layer": "all",
                         "value": values, "stderr": NAN})


def test_alarms_for_maps_indices_to_epochs():
    """A sparse signal (every 5 epochs from 10) with a NaN: the alarm epoch is the epoch of the
    replay's alarm index on the finite values, in epoch order."""
    rng = np.random.default_rng(0)
    epochs = np.arange(10, 10 + 5 * 400, 5)
    v = rng.normal(size=400)
    v[250:] += 6.0
    v[3] = np.nan
    t = pd.concat([_tidy("r1", epochs, v), _tidy("r2", epochs, rng.normal(size=400))])
    t = t.sample(frac=1.0, random_state=1)  # order must not matter
    det = spec("online", window=10, persistence=5)
    out = alarms_for(t, det)
    finite = ~np.isnan(v)
    expected = epochs[finite][replay(v[finite], baseline=39, window=10, persistence=5)[0].index]
    got = dict(zip(out["run"], out["alarm_epoch"]))
    assert got["r1"] == expected and math.isnan(got["r2"])
    assert list(out.columns) == ["run", "signal", "layer", "detector", "alarm_epoch"]
    assert set(out["detector"]) == {det.label}


def test_event_epochs():
    ep = np.arange(0, 100, 2)
    acc = np.clip((ep - 40) / 20, 0, 1)
    t = pd.concat([_tidy("a", ep, acc, "test_metric"), _tidy("b", ep, acc * 0.5, "test_metric")])
    ev = event_epochs(t, "test_metric", threshold=0.9)
    assert ev["a"] == 58.0 and math.isnan(ev["b"])


def synthetic_sweep(seed: int = 0, lead: int = 300) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Six runs that generalise at a random epoch, with a signal stepping up ``lead`` epochs
    before; three that never generalise and two controls, whose signal is stationary; a second
    signal that is pure noise everywhere."""
    rng = np.random.default_rng(seed)
    epochs = np.arange(2000)
    tables, runs = [], []
    for i in range(11):
        kind = "gen" if i < 6 else "never" if i < 9 else "control"
        event = float(rng.integers(800, 1800)) if kind == "gen" else NAN
        g = rng.normal(size=2000)
        if kind == "gen":
            g[int(event) - lead:] += 5.0
        tables += [_tidy(f"r{i}", epochs, g, "precursor"),
                   _tidy(f"r{i}", epochs, rng.normal(size=2000), "noise")]
        runs.append(dict(run=f"r{i}", task="regression" if kind == "control" else "modular",
                         operation="add", frac=0.5, seed=i, epochs=2000, event_epoch=event))
    return pd.concat(tables, ignore_index=True), pd.DataFrame(runs)


def test_end_to_end_synthetic_sweep():
    table, runs = synthetic_sweep()
    specs = sweep("online", k=[3.0], persistence=[10]) + [spec("changepoint", method="binseg")]
    alarms = pd.concat([alarms_for(table, s) for s in specs], ignore_index=True)
    ev = evaluate(alarms, runs).set_index(["signal", "detector"])
    on = ev.loc[("precursor", specs[0].label)]
    # the online alarm lags the step by about ceil(W k / 5) + m - 1 = 39 epochs
    assert on.hits == 6 and on.hit_rate == 1.0
    assert 300 - 50 <= on.median_lead <= 300 - 30
    assert on.lead_ci_low <= on.median_lead <= on.lead_ci_high
    assert on.false_alarms_per_1000_epochs == 0.0 and on.p_value == pytest.approx(1 / 64)
    cp = ev.loc[("precursor", specs[1].label)]
    assert cp.hits == 6 and abs(cp.median_lead - 300) <= 8  # change points see the step itself
    noise = ev.loc[("noise", specs[0].label)]
    assert noise.hits == 0 and math.isnan(noise.median_lead)

    table_ = detector_table(ev.reset_index(), max_false_alarm_rate=0.1)
    assert list(table_["signal"]) == ["precursor", "precursor"]
    assert list(table_["detector"]) == [specs[1].label, specs[0].label]  # ranked by lead
    assert list(table_["rank"]) == [1, 2]


def test_detector_table_fixed_false_alarm_rate():
    ev = pd.DataFrame({
        "signal": ["s"] * 4 + ["t"], "layer": ["all"] * 5,
        "detector": ["online(k=2)", "online(k=3)", "online(k=4)", "curvature()", "online(k=3)"],
        "median_lead": [500.0, 300.0, 100.0, 50.0, 400.0],
        "lead_ci_low": NAN, "lead_ci_high": NAN, "lead_ci_coverage": NAN, "hits": 3, "n_runs_generalised": 3,
        "hit_rate": [1.0, 1.0, 0.67, 1.0, 1.0],
        "false_alarms_per_1000_epochs": [0.9, 0.1, 0.0, 0.0, NAN], "null_runs_alarmed": [3, 1, 0, 0, 0],
        "n_null_runs": [3, 3, 3, 3, 0], "p_value": 0.125,
        "null_runs_alarmed_control": [1, 0, 0, 0, 0], "n_null_runs_control": [1, 1, 1, 1, 0],
        "null_runs_alarmed_never_generalised": [2, 1, 0, 0, 0], "n_null_runs_never_generalised": [2, 2, 2, 2, 0]})
    t = detector_table(ev, max_false_alarm_rate=0.2)
    # k=2 breaks the false-alarm budget; the best remaining online knob is k=3; t has no null
    # runs, so its rate is unknown and it is left out
    assert list(t["detector"]) == ["online(k=3)", "curvature()"]
    assert list(t["null_runs_alarmed"]) == [1, 0] and (t["n_null_runs"] == 3).all()
    # k=2 fires on the one control; k=3 on half the never-generalised runs; k=4 and curvature on none
    assert list(specific(ev)) == [False, False, True, True, True]
    assert len(detector_table(ev, max_false_alarm_rate=0.2, best_per_family=False)) == 3
    assert list(detector_table(ev, 1.0)["detector"])[0] == "online(k=2)"
