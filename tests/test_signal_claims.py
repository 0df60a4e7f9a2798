import numpy as np
import pytest

from phaselib.claims import clopper_pearson
from phaselib.config import RunConfig
from phaselib.record import RunRecord, concat_tables, tidy
from phaselib.signal_claims import (FAILS, HOLDS, UNTESTABLE, alarm_table, estimate_quality, honest_shares,
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


def test_signals_that_lead_the_event_support_every_claim():
    recs = [record("modular", 800, 400, 450, 500, seed=s) for s in range(3)] + [record("regression", 0, None, None, None)]
    a = alarm_table(recs)
    mod = a[a["task"] == "modular"]
    assert mod["supports"].all()
    assert set(mod.loc[mod["signal"] == "hessian_lmin", "alarm_epoch"]) <= set(range(400, 600))
    erank_epochs = mod.loc[mod["signal"] == "erank", "alarm_epoch"]
    assert (abs(erank_epochs - 500) <= 10).all()
    v = verdicts(a)
    assert (v["verdict"] == HOLDS).all() and (v["control alarms"] == "0/1").all()


def test_signals_after_the_event_or_absent_do_not():
    recs = [record("modular", 300, 700, None, 900, seed=s) for s in range(2)]
    v = verdicts(alarm_table(recs)).set_index("claim")["verdict"]
    assert (v == FAILS).all()


def test_no_generalised_run_is_untestable():
    v = verdicts(alarm_table([record("modular", None, 400, 400, 400)]))
    assert (v["verdict"] == UNTESTABLE).all()
    empty = verdicts(alarm_table([]))  # no runs at all: every claim untestable, no error
    assert len(empty) == 3 and (empty["verdict"] == UNTESTABLE).all() and (empty["control alarms"] == "0/0").all()


def test_an_alarm_the_control_shares_is_not_specific():
    recs = [record("modular", 800, 400, 450, 500, seed=s) for s in range(2)] + [record("regression", 0, 100, None, 300)]
    v = verdicts(alarm_table(recs))
    lmin = v.iloc[0]
    assert lmin["verdict"] == "holds partly" and "not specific" in lmin["reason"]


def test_a_control_alarm_the_other_way_is_not_a_false_alarm():
    """The effective rank claim predicts a jump up; a control whose erank steps down does not share it."""
    recs = ([record("modular", 800, 400, 450, 500, seed=s) for s in range(2)]
            + [record("regression", 0, None, None, 300, erank_step=-5.0)])
    a = alarm_table(recs)
    assert a.loc[a["task"] == "regression"].set_index("signal").loc["erank", "direction"] == "down"
    erank = verdicts(a).iloc[2]  # CLAIMS order: lambda_min, B_simple, effective rank
    assert erank["verdict"] == HOLDS and erank["control alarms"] == "0/1"
    assert "1 alarm(s) on such runs in the other direction not counted" in erank["reason"]


def test_a_run_that_never_generalised_but_alarms_makes_the_claim_unspecific():
    """The same task without a transition: an erank jump there is not announcing one."""
    recs = ([record("modular", 800, 400, 450, 500, seed=s) for s in range(2)]
            + [record("modular", None, None, None, 500, seed=5)]
            + [record("regression", 0, None, None, None, seed=s) for s in range(3)])
    v = verdicts(alarm_table(recs))
    erank = v.iloc[2]
    assert erank["supporting runs"] == "2/2" and erank["verdict"] == "holds partly"
    assert erank["never-generalised alarms"] == "1/1" and erank["control alarms"] == "0/3"
    assert "never-generalised 1/1" in erank["reason"] and "not specific" in erank["reason"]
    assert v.iloc[0]["never-generalised alarms"] == "0/1" and v.iloc[0]["verdict"] == HOLDS


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
