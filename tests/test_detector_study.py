"""The detector study over a store: one run at a time, and the same table with any worker count."""
import numpy as np
import pandas as pd
import pytest

from phaselib.config import RunConfig
from phaselib.detector_study import (by_fraction, by_fraction_summary, evaluate_detectors, held_out, held_out_summary,
                                     split_seeds, warnings_summary)
from phaselib.evaluate import detector_table, evaluate
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


def held_out_tables(seeds: range) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per seed: a generalising run (event at 1000), a never-generalising one and a control, 2000
    epochs each. Signal "lucky" leads by 600 on even-ranked seeds and alarms after the event on the
    others; "steady" leads by 200 on all; neither alarms on the runs without a transition."""
    runs, alarms = [], []
    for i, s in enumerate(seeds):
        for kind, task, event in (("g", "modular", 1000.0), ("n", "modular", np.nan), ("c", "regression", np.nan)):
            runs.append(dict(run=f"{kind}{s}", task=task, operation="add", frac=0.5, seed=s, epochs=2000,
                             event_epoch=event))
            for signal, lead in (("lucky", 600 if i % 2 == 0 else -100), ("steady", 200)):
                epoch = 1000.0 - lead if kind == "g" else np.nan
                alarms.append(dict(run=f"{kind}{s}", signal=signal, layer="all", detector="online(k=3.0)",
                                   alarm_epoch=epoch))
    return pd.DataFrame(alarms), pd.DataFrame(runs)


def test_held_out_scores_the_rows_chosen_on_half_the_seeds_on_the_other_half():
    alarms, runs = held_out_tables(range(6))
    assert split_seeds(runs["seed"]) == ((0, 2, 4), (1, 3, 5))
    check = held_out(alarms, runs, max_false_alarm_rate=1.0, min_hit_rate=0.5)
    assert list(check["signal"]) == ["lucky", "steady"]  # ranked by lead where chosen
    assert list(check["median_lead"]) == [600, 200]
    assert list(check["median_lead_held_out"]) == [-100, 200]
    assert list(check["hit_rate_held_out"]) == [0.0, 1.0]
    assert list(check["kept"]) == [False, True]
    text = held_out_summary(check, 6)
    assert "Chosen on seeds 0, 2, 4 and scored on seeds 1, 3, 5: 1 of the 2 top rows keep" in text
    assert "50 epochs there against 400 where they were chosen (1 of 2 rows lead less" in text


def test_held_out_needs_three_seeds_a_half():
    alarms, runs = held_out_tables(range(5))
    assert held_out(alarms, runs) is None
    assert "needs at least 6 seeds (3 to choose on, 3 to report on); these runs have 5" in held_out_summary(None, 5)


def test_warnings_are_the_ranked_rows_that_stay_quiet_without_a_transition():
    alarms, runs = held_out_tables(range(6))
    loud = alarms[alarms["signal"] == "steady"].assign(signal="loud")  # alarms in every run, the null runs too
    loud.loc[loud["alarm_epoch"].isna(), "alarm_epoch"] = 500.0
    alarms = pd.concat([alarms, loud], ignore_index=True)
    ranked = detector_table(evaluate(alarms, runs), 1.0, 0.9)  # "lucky" hits half the runs: out
    assert "loud" in set(ranked["signal"])  # once per 2000-epoch run: inside the per-1000-epoch budget
    text = warnings_summary(ranked)
    assert text.startswith("1 of the 2 rows that pass the budget and the hit rate stay quiet")
    assert "The best, steady (all) under `online(k=3.0)` (online, so causal" in text
    assert "leads by a median 200 epochs" in text and "in 6 of 6 generalised runs" in text
    assert text.endswith("alarms on 0 of 6 controls and 0 of 6 runs that never generalised.")
    only_loud = ranked[ranked["signal"] == "loud"]
    assert "no signal here warns of generalisation specifically" in warnings_summary(only_loud)
    assert "no transition is announced" in warnings_summary(ranked.iloc[:0])
    check = held_out(alarms, runs, 1.0, 0.9, specific_only=True)
    assert list(check["signal"]) == ["lucky", "steady"]  # chosen where lucky hits every run, not "loud"
    assert list(check["kept"]) == [False, True]
    assert "1 of the 2 warnings keep the budget, the hit rate and their quiet" in held_out_summary(check, 6)


def test_by_fraction_counts_warnings_and_false_alarms_per_fraction():
    alarms, runs = held_out_tables(range(4))
    runs["frac"] = [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]  # seeds 0, 1 at 50%; 2, 3 at 90%
    alarms.loc[alarms["run"] == "n0", "alarm_epoch"] = 300.0  # one never-generalised run alarms, at 50%
    t = by_fraction(alarms, runs, "lucky", "all", "online(k=3.0)")
    assert list(t["frac"]) == [0.5, 0.9]
    assert list(t["generalised"]) == [2, 2] and list(t["warned"]) == [1, 1]  # lucky leads on seeds 0 and 2 only
    assert list(t["never_alarmed"]) == [1, 0] and list(t["never_generalised"]) == [2, 2]
    assert list(t["controls_alarmed"]) == [0, 0] and list(t["controls"]) == [2, 2]
    assert by_fraction_summary(t) == ("On the runs that never generalised it alarms in 1/2 at 50%, 0/2 at 90%; "
                                      "and on 0 of 4 controls.")
    assert by_fraction_summary(t.assign(never_generalised=0)).startswith("Every modular run generalised")
