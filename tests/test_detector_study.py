"""The detector study over a store: one run at a time, and the same table with any worker count."""
import numpy as np
import pandas as pd
import pytest

from phaselib.config import RunConfig
from phaselib.detector_study import (baseline_sensitivity, baseline_summary, by_fraction, by_fraction_summary,
                                     evaluate_detectors, held_out, held_out_summary, loud_fractions, split_seeds,
                                     warning_table, warnings_summary)
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
    assert "over the 2 row(s) with leads on both halves, the median of their median lead is 50 epochs there " \
           "against 400 where they were chosen (1 of 2 lead less" in text


def test_a_row_without_leads_on_the_held_out_half_is_not_testable_and_not_kept():
    alarms, runs = held_out_tables(range(6))
    odd = alarms["run"].str[1:].astype(int) % 2 == 1
    alarms.loc[odd & (alarms["signal"] == "lucky"), "alarm_epoch"] = np.nan  # lucky never alarms held out
    check = held_out(alarms, runs)  # min_hit_rate 0: a hit rate of 0 alone would pass
    row = check.set_index("signal").loc["lucky"]
    assert not row["testable"] and not row["kept"]
    text = held_out_summary(check, 6)
    assert "(1 without any lead there, so not testable)" in text
    assert "over the 1 row(s) with leads on both halves, the median of their median lead is 200 epochs there " \
           "against 200" in text  # the medians compare the same rows


def test_held_out_needs_three_seeds_a_half_and_a_seed_per_run():
    alarms, runs = held_out_tables(range(5))
    assert held_out(alarms, runs) is None
    assert "needs at least 6 seeds (3 to choose on, 3 to report on); these runs have 5" in held_out_summary(None, 5)
    with pytest.raises(ValueError, match="runs: a 'seed' for every run"):
        held_out(alarms, runs.drop(columns="seed"))


def test_warnings_are_the_ranked_rows_that_stay_quiet_without_a_transition():
    alarms, runs = held_out_tables(range(6))
    loud = alarms[alarms["signal"] == "steady"].assign(signal="loud")  # alarms in every run, the null runs too
    loud.loc[loud["alarm_epoch"].isna(), "alarm_epoch"] = 500.0
    alarms = pd.concat([alarms, loud], ignore_index=True)
    evaluation = evaluate(alarms, runs)
    ranked = detector_table(evaluation, 1.0, 0.9)  # "lucky" hits half the runs: out
    assert "loud" in set(ranked["signal"])  # once per 2000-epoch run: inside the per-1000-epoch budget
    warnings = warning_table(evaluation, 1.0, 0.9)
    assert list(warnings["signal"]) == ["steady"]
    text = warnings_summary(ranked, warnings)
    assert text.startswith("1 (signal, detector) row(s) pass the budget and the hit rate and stay quiet")
    assert "The best, steady (all) under `online(k=3.0)` (causal: it knows an alarm at the epoch" in text
    assert "alarms before the event in 6 of 6 generalised runs, with a median lead of 200 epochs" in text
    assert "% CI 200 to 200)" in text  # six equal leads
    assert text.endswith("alarms on 0 of 6 controls and on 0 of 6 runs that never generalised.")
    assert "no signal here warns of generalisation specifically" in warnings_summary(ranked, warnings.iloc[:0])
    assert "no transition is announced" in warnings_summary(ranked.iloc[:0], warnings.iloc[:0])
    check = held_out(alarms, runs, 1.0, 0.9, warnings_only=True)
    assert list(check["signal"]) == ["lucky", "steady"]  # chosen where lucky hits every run, not "loud"
    assert list(check["kept"]) == [False, True]
    assert "1 of the 2 warnings keep the budget, the hit rate and their quiet" in held_out_summary(check, 6)


def test_a_warning_names_its_interval_coverage_and_whether_it_is_causal():
    alarms, runs = held_out_tables(range(3))  # 3 leads: the interval is their range, below 95%
    alarms["detector"] = "curvature(drop_factor=10.0, persistence=3)"
    alarms.loc[alarms["run"] == "g1", "alarm_epoch"] = 900.0
    evaluation = evaluate(alarms[alarms["signal"] == "steady"], runs)
    text = warnings_summary(detector_table(evaluation), warning_table(evaluation))
    assert "(causal: it knows an alarm at the epoch it falls on)" in text
    assert "(75% CI 100 to 200)" in text
    alarms["detector"] = "changepoint(cost=l2, method=pelt)"
    evaluation = evaluate(alarms[alarms["signal"] == "steady"], runs)
    assert "(not causal: it sees the whole run)" in warnings_summary(detector_table(evaluation),
                                                                    warning_table(evaluation))


def test_a_specific_knob_is_not_hidden_behind_a_louder_one_of_its_family():
    alarms, runs = held_out_tables(range(6))
    steady = alarms[alarms["signal"] == "steady"]
    loud = steady.assign(detector="online(k=2.0)")  # same family, larger lead, alarms on every null run
    loud.loc[loud["alarm_epoch"].isna(), "alarm_epoch"] = 500.0
    loud.loc[loud["alarm_epoch"] == 800.0, "alarm_epoch"] = 700.0
    evaluation = evaluate(pd.concat([steady, loud], ignore_index=True), runs)
    assert list(detector_table(evaluation)["detector"]) == ["online(k=2.0)"]  # the louder knob wins the family
    assert list(warning_table(evaluation)["detector"]) == ["online(k=3.0)"]


def test_by_fraction_counts_warnings_and_false_alarms_per_fraction_and_length():
    alarms, runs = held_out_tables(range(4))
    runs["frac"] = [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]  # seeds 0, 1 at 50%; 2, 3 at 90%
    runs.loc[runs["run"] == "n1", "epochs"] = 10000
    runs.index = [0] * len(runs)  # duplicate labels (a concat without ignore_index) must not matter
    alarms.loc[alarms["run"] == "n0", "alarm_epoch"] = 300.0  # one never-generalised run alarms, at 50%
    t = by_fraction(alarms, runs, "lucky", "all", "online(k=3.0)")
    assert list(zip(t["frac"], t["epochs"])) == [(0.5, 2000), (0.5, 10000), (0.9, 2000)]
    assert list(t["generalised"]) == [2, 0, 2] and list(t["warned"]) == [1, 0, 1]  # lucky leads on seeds 0, 2
    assert list(t["never_generalised_alarmed"]) == [1, 0, 0] and list(t["never_generalised"]) == [1, 1, 2]
    assert list(t["controls_alarmed"]) == [0, 0, 0] and list(t["controls"]) == [2, 0, 2]
    assert t["median_alarm_epoch"].tolist()[::2] == [750.0, 750.0]  # alarms at 400 and 1100 (seeds 0, 1; 2, 3)
    assert t["median_alarm_epoch"].isna().tolist() == [False, True, False]  # no generalised run at 10 000
    assert t["median_event_epoch"].tolist()[::2] == [1000.0, 1000.0]
    text = by_fraction_summary(t)
    assert text.startswith("On the runs that never generalised it alarms in 1/1 at 50% (2000 epochs), 0/1 at 50% "
                           "(10000 epochs), 0/2 at 90% (2000 epochs); it alarms on 0 of 4 controls.")
    assert "Judged fraction by fraction, it fires on at least half of the runs without a transition at 50% " \
           "(2000 epochs): there it is not specific" in text  # pooled it is quiet: 1 of 4
    assert text.endswith("the median epoch of its first alarm, by fraction: 50% (2000 epochs): 750 (event 1000); "
                         "90% (2000 epochs): 750 (event 1000).")
    assert loud_fractions(t)["frac"].tolist() == [0.5]
    assert by_fraction_summary(t.assign(never_generalised=0)).startswith("Every modular run it sees generalised; it "
                                                                         "alarms on 0 of 4 controls.")


def test_by_fraction_counts_only_the_runs_that_carry_the_signal():
    alarms, runs = held_out_tables(range(4))
    probed = alarms[alarms["run"].isin(["g0", "n0", "c0"])]  # a probed signal: one seed's runs only
    t = by_fraction(probed, runs, "steady", "all", "online(k=3.0)")
    assert (int(t["generalised"].sum()), int(t["never_generalised"].sum()), int(t["controls"].sum())) == (1, 1, 1)


def test_baseline_sensitivity_reruns_the_online_warning_with_fixed_baselines(stored):
    """The stored runs' grad norm steps up at epoch 250 of 600; a 100-epoch baseline (the 10% rule
    gives 60) still sees a flat start, so both find the step, 150 epochs before the event at 400."""
    store, configs = stored
    from phaselib.detector_study import DEFAULT_DETECTORS
    row = pd.Series({"signal": "grad_norm", "layer": "all", "detector": DEFAULT_DETECTORS[0].label})
    t = baseline_sensitivity(store, configs, row, baselines=(100, 300))
    assert list(t["baseline"]) == ["10% of the run", "100 epochs", "300 epochs"]
    assert list(t["hits"][:2]) == [4, 4] and (t["n_runs_generalised"] == 4).all()
    assert 100 <= t["median_lead"][0] <= 160 and 100 <= t["median_lead"][1] <= 160
    assert t["hits"][2] == 0  # a baseline past the step: the step is the baseline, nothing to flag
    assert baseline_summary(t).startswith("With a baseline of 100, 300 epochs for every run instead of 10% of each, "
                                          "it warns 4, 0 of 4 generalised runs")
    assert baseline_summary(t).endswith("its figures depend on the baseline's length.")
    assert baseline_sensitivity(store, configs, row.replace({row["detector"]: "changepoint(cost=l2, method=pelt)"})) \
        is None
