import numpy as np
import pandas as pd
import pytest

from phaselib.claims import clopper_pearson
from phaselib.config import RunConfig
from phaselib.record import RunRecord, concat_tables, tidy
from phaselib.signal_claims import (CLAIMS, FAILS, HOLDS, PARTLY, UNTESTABLE, alarm_table, course, course_summary,
                                   estimate_quality, fall_summary, fall_table, first_step, honest_shares, largest_fall,
                                   quality_totals, trace_check, verdicts)


def record(task: str, event: int | None, lmin_drop: int | None, noise_drop: int | None, erank_jump: int | None,
           seed: int = 0, erank_step: float = 5.0) -> RunRecord:
    """A run with known change epochs in each probed signal and a known generalisation event."""
    n = 1200
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    metric = np.where(t >= event, 0.95, 0.02) if event is not None else np.full(n, 0.02)
    erank = 10 + 0.05 * rng.standard_normal(n) + (erank_step * (t >= erank_jump) if erank_jump is not None else 0)
    cfg = RunConfig(task=task, modulus=11, seed=seed, epochs=n, width=8)
    base = tidy(cfg.key, t, {("test_metric", "all"): metric, ("erank", "all"): erank})
    sparse_h = np.arange(0, n, 50)
    lmin = -0.5 + 0.01 * rng.standard_normal(len(sparse_h))
    if lmin_drop is not None:
        lmin[sparse_h >= lmin_drop] *= 20
    noise = np.exp(2 + 0.05 * rng.standard_normal(len(sparse_h)))
    if noise_drop is not None:
        noise[sparse_h >= noise_drop] /= 20
    extra = tidy(cfg.key, sparse_h, {("hessian_lmin", "all"): lmin, ("b_simple", "all"): noise})
    return RunRecord(cfg, concat_tables([base, extra]))


def claim_row(v, signal: str, detector: str):
    """The verdict row of the claim on ``signal`` judged by ``detector`` (its detect function's name)."""
    name = next(c.claim for c in CLAIMS if c.signal == signal and c.detect.__name__ == detector)
    return v.set_index("claim").loc[name]


def test_signals_that_lead_the_event_support_every_claim():
    recs = [record("modular", 800, 400, 450, 500, seed=s) for s in range(6)] + [record("regression", 0, None, None, None)]
    a = alarm_table(recs)
    mod = a[a["task"] == "modular"]
    assert mod["supports"].all()
    assert set(mod.loc[mod["signal"] == "hessian_lmin", "alarm_epoch"]) <= set(range(400, 600))
    erank_epochs = mod.loc[mod["signal"] == "erank", "alarm_epoch"]
    assert (abs(erank_epochs - 500) <= 10).all()
    assert set(mod.loc[mod["signal"] == "b_simple", "alarm_epoch"]) <= set(range(450, 650))  # both B_simple readings
    v = verdicts(a)
    assert len(v) == len(CLAIMS) == 4
    assert (v["verdict"] == HOLDS).all() and (v["control alarms"] == "0/1").all()


def test_a_claim_every_run_supports_holds_only_with_enough_runs():
    """5 of 5 supporting runs leave the share's exact 95% CI down to 0.48: holds partly, saying why."""
    v = verdicts(alarm_table([record("modular", 800, 400, 450, 500, seed=s) for s in range(5)]))
    assert (v["supporting runs"] == "5/5").all() and (v["verdict"] == PARTLY).all()
    assert v["reason"].str.contains("5 run(s) are too few to show it for most runs", regex=False).all()
    assert v["reason"].str.contains("reaches down to 0.48", regex=False).all()


# log10 B_simple every 50 epochs of the extended study's 90%/seed-42 run (2000 epochs, event at
# epoch 515): a start-up jump, a fall of 1.4 decades to epoch 400, a slow rise after the event.
B_SIMPLE_90 = [4.2, 4.9, 4.5, 4.2, 3.9, 3.7, 3.6, 3.5, 3.5, 3.6, 3.6, 3.7, 3.7, 3.8, 3.8, 3.9, 3.9, 3.9, 4.0, 4.0,
               4.0, 4.0, 4.0, 4.0, 4.0, 4.1, 4.1, 4.1, 4.1, 4.1, 4.1, 4.1, 4.2, 4.2, 4.2, 4.2, 4.2, 4.2, 4.2, 4.2]


def test_a_fall_from_the_start_up_peak_is_no_step():
    """The 90% run's B_simple falls from its start-up peak (epoch 50) as a ramp: with the start-up
    transient left out of the segmentation, no change point steps down before the event, whether
    or not the initialisation probe (epoch 0) is in the series; the 3σ rule stays silent too. (With
    the transient in the segmentation, the first segment, epochs 0-249, was the level a "drop" at
    epoch 250 = 5 probes, PELT's minimum segment, was measured from: an artefact.)"""
    cfg = record("modular", 515, None, None, None).config.replace(epochs=2000)
    metric = tidy(cfg.key, np.arange(2000), {("test_metric", "all"): np.where(np.arange(2000) >= 515, 0.95, 0.02)})
    epochs = np.arange(0, 50 * len(B_SIMPLE_90), 50)
    for first in (0, 1):  # with and without the probe at initialisation
        b = tidy(cfg.key, epochs[first:], {("b_simple", "all"): 10.0 ** np.array(B_SIMPLE_90[first:])})
        a = alarm_table([RunRecord(cfg, concat_tables([metric, b]))])
        v = verdicts(a)
        for detector in ("_noise_step", "_noise"):
            row = claim_row(v, "b_simple", detector)
            assert row["supporting runs"] == "0/1" and row["verdict"] == FAILS, (first, detector)
        step = a.set_index("claim").loc[claim_row(v, "b_simple", "_noise_step").name]
        assert np.isnan(step["alarm_epoch"]) or step["alarm_epoch"] > 515


def test_a_step_is_measured_from_the_segment_before_it_not_from_the_start():
    """Levels 0, 5, 3: the change at 800 steps down (5 to 3), though 3 is above the start."""
    rng = np.random.default_rng(1)
    x = np.concatenate([np.zeros(400), np.full(400, 5.0), np.full(400, 3.0)]) + 0.05 * rng.standard_normal(1200)
    idx, direction = first_step(x, "down")
    assert direction == "down" and abs(idx - 800) <= 12
    idx, direction = first_step(x, "up")
    assert direction == "up" and abs(idx - 400) <= 12
    assert first_step(np.ones(100), "up") == (None, None)

def test_signals_after_the_event_or_absent_do_not():
    recs = [record("modular", 300, 700, None, 900, seed=s) for s in range(2)]
    v = verdicts(alarm_table(recs)).set_index("claim")
    assert (v["verdict"] == FAILS).all()
    assert v["reason"].str.contains("2 run(s) are too few to show it for fewer than half of the runs", regex=False).all()
    many = verdicts(alarm_table([record("modular", 300, 700, None, 900, seed=s) for s in range(6)]))
    assert not many["reason"].str.contains("too few").any()  # 0 of 6: the CI reaches up to 0.46


def test_no_generalised_run_is_untestable():
    v = verdicts(alarm_table([record("modular", None, 400, 400, 400)]))
    assert (v["verdict"] == UNTESTABLE).all()
    empty = verdicts(alarm_table([]))  # no runs at all: every claim untestable, no error
    assert len(empty) == len(CLAIMS) and (empty["verdict"] == UNTESTABLE).all() and (empty["control alarms"] == "0/0").all()


def test_an_alarm_the_control_shares_is_not_specific():
    recs = [record("modular", 800, 400, 450, 500, seed=s) for s in range(2)] + [record("regression", 0, 100, None, 300)]
    v = verdicts(alarm_table(recs))
    lmin = v.iloc[0]
    assert lmin["verdict"] == "holds partly" and "not specific" in lmin["reason"]


def test_a_control_alarm_the_other_way_is_not_a_false_alarm():
    """The effective rank claim predicts a jump up; a control whose erank steps down does not share it."""
    recs = ([record("modular", 800, 400, 450, 500, seed=s) for s in range(6)]
            + [record("regression", 0, None, None, 300, erank_step=-5.0)])
    a = alarm_table(recs)
    assert a.loc[a["task"] == "regression"].set_index("signal").loc["erank", "direction"] == "down"
    erank = claim_row(verdicts(a), "erank", "_erank")
    assert erank["verdict"] == HOLDS and erank["control alarms"] == "0/1"
    assert "1 alarm(s) in the other direction on runs without a transition, not counted" in erank["reason"]


def test_a_run_that_never_generalised_but_alarms_makes_the_claim_unspecific():
    """The same task without a transition: an erank jump there is not announcing one."""
    recs = ([record("modular", 800, 400, 450, 500, seed=s) for s in range(6)]
            + [record("modular", None, None, None, 500, seed=15)]
            + [record("regression", 0, None, None, None, seed=s) for s in range(3)])
    v = verdicts(alarm_table(recs))
    erank = claim_row(v, "erank", "_erank")
    assert erank["supporting runs"] == "6/6" and erank["verdict"] == "holds partly"
    assert erank["never-generalised alarms"] == "1/1" and erank["control alarms"] == "0/3"
    assert "never-generalised 1/1" in erank["reason"] and "not specific" in erank["reason"]
    lmin = claim_row(v, "hessian_lmin", "_lmin")
    assert lmin["never-generalised alarms"] == "0/1" and lmin["verdict"] == HOLDS


def test_verdicts_carry_the_exact_ci_of_the_supporting_share():
    recs = [record("modular", 800, 400, 450, 500, seed=s) for s in range(3)]
    v = verdicts(alarm_table(recs))
    assert (v["supporting runs"] == "3/3").all()
    assert (v["share 95% CI"] == "[0.29, 1.00]").all()  # Clopper-Pearson 3/3: 0.025 ** (1/3) = 0.292


def probed(seed: int, lmax_ok: list[int], lmin_ok: list[int], rse: float, z: list[float] | None = None) -> RunRecord:
    """A run with Hessian probes whose convergence flags and trace standard errors are known, and,
    given ``z``, an exact trace that many standard errors below each Hutchinson estimate."""
    cfg = RunConfig(task="modular", modulus=11, seed=seed, epochs=100, width=8)
    ep = np.arange(len(lmax_ok)) * 10
    trace = np.full(len(ep), 4.0)
    signals = {("hessian_lmax_converged", "all"): lmax_ok, ("hessian_lmin_converged", "all"): lmin_ok,
               ("hessian_trace", "all"): trace}
    if z is not None:
        signals[("hessian_trace_exact", "all")] = trace - np.asarray(z) * trace * rse
        signals[("hessian_trace_exact", "fc1")] = trace  # block rows do not count
    return RunRecord(cfg, tidy(cfg.key, ep, signals, stderr={("hessian_trace", "all"): trace * rse}))


def test_quality_totals_add_up_the_per_run_table():
    recs = [probed(0, [1, 1, 0], [1, 0, 0], 0.01), probed(1, [1, 1, 1], [1, 1, 0], 0.03),
            probed(2, [0, 1, 1], [1, 1, 1], 0.02)]
    per_run = estimate_quality(recs)
    assert list(per_run["λ_min converged"]) == ["1/3", "2/3", "3/3"]
    q = quality_totals(recs)
    assert (q["probes"], q["lmax"], q["lmin"]) == (9, 7, 6)
    assert abs(q["trace_rse"] - 0.02) < 1e-12
    assert np.isnan(quality_totals([])["trace_rse"]) and quality_totals([])["probes"] == 0
    assert (q["trace_n"], q["trace_in1"], q["trace_in2"]) == (0, 0, 0)
    assert (per_run["within 2 s.e."] == "not recorded").all()


def test_trace_error_bars_are_checked_against_the_exact_trace():
    recs = [probed(0, [1, 1, 1, 1], [1, 1, 1, 1], 0.01, z=[0.5, -1.5, 2.5, -0.2]),
            probed(1, [1, 1, 1], [1, 1, 1], 0.02, z=[-3.0, 1.9, 0.9])]
    per_run = estimate_quality(recs)
    assert list(per_run["trace within 1 s.e. of exact"]) == ["2/4", "1/3"]
    assert list(per_run["within 2 s.e."]) == ["3/4", "2/3"]
    q = quality_totals(recs)
    assert (q["trace_n"], q["trace_in1"], q["trace_in2"]) == (7, 3, 5)
    assert q["trace_in2_ci"] == clopper_pearson(5, 7) and q["trace_in1_ci"][0] < 3 / 7 < q["trace_in1_ci"][1]


def test_the_first_alarm_in_the_claims_direction_counts_not_the_first_of_any():
    """erank steps down at 300, then up at 500, before the event at 800: the jump up supports."""
    rec = record("modular", 800, None, None, None, seed=7)
    t = rec.table
    erank = t["signal"] == "erank"
    epochs = t.loc[erank, "epoch"].to_numpy()
    t.loc[erank, "value"] = 10.0 + 0.05 * np.random.default_rng(7).standard_normal(erank.sum()) \
        - 4.0 * ((epochs >= 300) & (epochs < 500)) + 5.0 * (epochs >= 500)
    a = alarm_table([rec]).set_index("signal").loc["erank"]
    assert a["direction"] == "up" and abs(a["alarm_epoch"] - 500) <= 10 and a["supports"]


def test_the_trace_check_sentence_and_its_expected_shares():
    e1, e2 = honest_shares(30)
    assert abs(e1 - 0.6744) < 1e-4 and abs(e2 - 0.9451) < 1e-4  # t with 29 degrees of freedom
    assert honest_shares(1000)[0] == pytest.approx(0.6827, abs=1e-3)  # the normal limit
    q = quality_totals([probed(0, [1, 1, 1, 1], [1, 1, 1, 1], 0.01, z=[0.5, -1.5, 2.5, -0.2])])
    text = trace_check(q)
    assert "at 2/4 probes (50%, 95% CI" in text and "within two at 3/4 (75%" in text
    assert text.endswith("honest error bars give 67% and 95%")
    assert "not checked" in trace_check(quality_totals([probed(1, [1], [1], 0.01)]))


def test_largest_fall_is_the_maximum_drawdown():
    assert largest_fall(np.array([1.0, 4.0, 2.0, 8.0, 1.0, 3.0])) == (8.0, 3, 4)
    assert largest_fall(np.array([1.0, 2.0, 3.0])) == (1.0, None, None)  # never falls
    assert largest_fall(np.array([5.0])) == (1.0, None, None)
    rng = np.random.default_rng(0)
    for _ in range(50):  # against the brute-force pair search
        v = np.exp(rng.normal(size=12))
        brute = max(v[i] / v[j] for i in range(12) for j in range(i + 1, 12))
        f, i, j = largest_fall(v)
        assert f == pytest.approx(max(brute, 1.0)) and (f == 1.0 or v[i] / v[j] == pytest.approx(f))


def test_fall_table_measures_before_the_event_only():
    """The 90% run's B_simple falls x10 from epoch 100 (after the start-up transient: 2 of 40 probes)
    to 350 before its event at 515; a run without an event is measured over the rest of the run,
    and so is the regression control, whose early 'event' is a fit, not a transition."""
    cfg = record("modular", 515, None, None, None).config.replace(epochs=2000)
    metric = tidy(cfg.key, np.arange(2000), {("test_metric", "all"): np.where(np.arange(2000) >= 515, 0.95, 0.02)})
    epochs = np.arange(0, 50 * len(B_SIMPLE_90), 50)
    rec = RunRecord(cfg, concat_tables([metric, tidy(cfg.key, epochs, {("b_simple", "all"): 10.0 ** np.array(B_SIMPLE_90)})]))
    row = fall_table([rec]).iloc[0]
    assert row["event_epoch"] == 515 and (row["from epoch"], row["to epoch"]) == (100, 350)
    assert row["largest fall (x)"] == pytest.approx(10 ** 1.0)
    flat = fall_table([record("modular", None, None, None, None)]).iloc[0]  # no event: the whole run
    assert flat["event_epoch"] is None and 1.0 <= flat["largest fall (x)"] < 1.5
    ctrl_cfg = RunConfig(task="regression", modulus=11, seed=0, epochs=2000, width=8)  # R² passes 0.5 at epoch 20
    falling = np.r_[np.full(10, 5.0), np.linspace(5.0, 0.5, 30)]
    ctrl = RunRecord(ctrl_cfg, concat_tables([
        tidy(ctrl_cfg.key, np.arange(2000), {("test_metric", "all"): np.where(np.arange(2000) >= 20, 0.9, 0.1)}),
        tidy(ctrl_cfg.key, epochs, {("b_simple", "all"): 10.0 ** falling})]))
    row = fall_table([ctrl]).iloc[0]
    assert row["largest fall (x)"] == pytest.approx(10 ** 4.5) and row["to epoch"] == 1950  # past its 'event'



def test_fall_summary_sets_generalised_runs_against_the_rest():
    falls = pd.DataFrame({"task": ["modular", "modular", "modular", "regression"], "event_epoch": [515, 600, None, 20],
                          "largest fall (x)": [25.0, 4.0, 1.2, 1.1]})
    text = fall_summary(falls)
    assert "in the 2 generalised run(s): median x14.5 (x4.0 to x25.0)" in text
    assert "in the 2 run(s) without a transition: median x1.1 (x1.1 to x1.2)" in text  # the control counts here
    assert "in the 0 generalised run(s): no run" in fall_summary(falls[falls["event_epoch"].isna()])


def test_course_shows_a_negative_series_decaying_to_zero_that_the_rule_cannot_see():
    """λ_min from -0.5 decaying to -0.01 (x50 smaller) in a generalised run: the claim's rule (a
    tenfold drop or a zero crossing) stays silent, the course shows the decay."""
    rec = record("modular", 600, None, None, None)
    t = rec.table
    decay = t["signal"] == "hessian_lmin"
    t.loc[decay, "value"] = -0.5 * np.exp(-np.log(50) * t.loc[decay, "epoch"] / t.loc[decay, "epoch"].max())
    assert alarm_table([rec]).set_index("signal").loc["hessian_lmin", "alarm_epoch"] is None
    flat = record("regression", None, None, None, None, seed=1)
    c = course([rec, flat])
    assert list(c["generalised"]) == [True, False] and not c["changes sign"].any()
    assert c["magnitude shrinks (x)"].iloc[0] == pytest.approx(50.0) and 0.9 < c["magnitude shrinks (x)"].iloc[1] < 1.1
    text = course_summary(c)
    assert text.startswith("λ_min is negative at the first probe in 2 of 2 runs; from the first probe to the last its "
                           "magnitude shrinks by x50.0 in the 1 generalised run(s) and by x")
    assert text.endswith("in the 1 run(s) without a transition; it changes sign in 0 of 2")
    assert course_summary(c.iloc[:0]) == "λ_min: no run with two probes"
