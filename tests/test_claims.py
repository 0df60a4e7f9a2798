import numpy as np
import pandas as pd
import pytest

from phaselib.claims import (FAILS, HOLDS, PARTLY, UNTESTABLE, claims_table, clopper_pearson, operation_table,
                             per_frac_lags, shown_for_most, spearman_ci, spearman_test)
from phaselib.tables import mean_ci, median_ci, table1, table2


def summary(lags: dict, gen: dict | None = None, reg_lags=(-12, -12, -12), r=-0.8, op="add", epochs=3000,
            group=None) -> pd.DataFrame:
    """A synthetic summary: lags[frac] = list over seeds; gen[frac] = list of bools."""
    rows = []
    for frac, ls in lags.items():
        for seed, lag in enumerate(ls):
            g = True if gen is None else gen[frac][seed]
            for grp in ([group] if group else ["primary", "variance"] if seed == 0 else ["variance"]):
                rows.append(dict(group=grp, run=f"{op}{epochs}m{frac}{seed}", task="modular", operation=op, frac=frac,
                                 seed=seed, epochs=epochs, generalisation_epoch=300 + lag if g else np.nan,
                                 lag=lag, generalised=g, pearson_r=r, gnorm_peak_epoch=100, metric_transition_epoch=100 + lag,
                                 final_test_metric=0.9 if g else 0.05, verdict="generalised" if g else "did not generalise"))
    for i, (frac, lag) in enumerate(zip(lags, reg_lags)):
        rows.append(dict(group="primary", run=f"r{frac}", task="regression", operation="", frac=frac, seed=0, lag=lag,
                         generalised=True, pearson_r=-0.95, gnorm_peak_epoch=12, metric_transition_epoch=0,
                         final_test_metric=0.97, verdict="generalised"))
    return pd.DataFrame(rows)


def verdicts(s):
    return dict(zip(claims_table(s)["claim"].str[:20], claims_table(s)["verdict"]))


def test_the_papers_own_numbers_hold():
    s = summary({0.5: [699, 422, 804], 0.7: [192, 179, 226], 0.9: [12, 69, 82]})
    t = claims_table(s).set_index("claim")
    v = t["verdict"]
    assert (v == HOLDS).sum() >= 4, v
    assert v.iloc[3] in (HOLDS, PARTLY)  # monotone with 9 points
    reg = t.loc["the regression control shows no positive lag"]  # the paper's three controls
    assert reg["verdict"] == PARTLY and "3 run(s) are too few to show it for most runs" in reg["reason"]
    assert "reaches down to 0.29" in reg["reason"]  # 0 of 3 positive: the no-lead share's CI starts at 0.025 ** (1/3)


def test_a_claim_about_every_run_needs_enough_runs_to_show_a_majority():
    """k = n holds only when the share's exact 95% CI lies above 1/2: 6 of 6 (0.54), not 5 of 5 (0.48)."""
    assert not shown_for_most(5, 5) and shown_for_most(6, 6) and not shown_for_most(0, 0)
    assert shown_for_most(9, 10) and not shown_for_most(8, 10)  # 0.555 and 0.444
    five = _row(claims_table(summary({0.7: [190, 180, 220, 200, 210]})), "gradient peaks precede")
    assert five["verdict"] == PARTLY and "5 run(s) are too few" in five["reason"] and "0.48" in five["reason"]
    six = _row(claims_table(summary({0.7: [190, 180, 220, 200, 210, 230]})), "gradient peaks precede")
    assert six["verdict"] == HOLDS and six["reason"] == "every generalised run has a positive lag"
    controls = summary({f: [300 - 200 * f] for f in (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)}, reg_lags=[-12] * 6)
    assert _row(claims_table(controls), "the regression control")["verdict"] == HOLDS


def test_non_generalised_runs_are_kept_out():
    s = summary({0.5: [699, 422, 804], 0.7: [192, 179, 226], 0.9: [12, 69, 82]},
                gen={0.5: [False] * 3, 0.7: [True] * 3, 0.9: [True] * 3})
    t = claims_table(s)
    assert t.loc[2, "verdict"] == PARTLY and "50%" in t.loc[2, "reason"]
    assert "699" not in t.loc[1, "ours"]  # the 50% lag is not a finding


def test_negative_lags_and_positive_control_fail():
    s = summary({0.5: [-50, -20, -30], 0.7: [10, -5, 3]}, reg_lags=(40, -3))
    t = claims_table(s)
    assert t.loc[0, "verdict"] == FAILS and t.loc[2, "verdict"] == FAILS and t.loc[4, "verdict"] == FAILS


def test_nothing_generalised_is_untestable():
    s = summary({0.5: [5, 6]}, gen={0.5: [False, False]})
    t = claims_table(s)
    assert t.loc[0, "verdict"] == UNTESTABLE and t.loc[3, "verdict"] == UNTESTABLE


def test_weak_pearson():
    s = summary({0.5: [5, 6, 7]}, r=-0.1)
    assert claims_table(s).loc[5, "verdict"] == FAILS


def test_clopper_pearson_known_values():
    lo, hi = clopper_pearson(10, 10)
    assert hi == 1.0 and abs(lo - 0.6915) < 1e-3  # 0.025 ** (1/10)
    assert clopper_pearson(0, 5)[0] == 0.0
    assert all(np.isnan(clopper_pearson(0, 0)))


def test_mean_ci_is_students_t_and_keeps_its_coverage_with_three_seeds():
    from scipy import stats
    x = np.array([192.0, 179.0, 226.0])
    want = stats.t.interval(0.95, 2, loc=x.mean(), scale=x.std(ddof=1) / np.sqrt(3))
    np.testing.assert_allclose(mean_ci(x), want, rtol=1e-12)
    assert all(np.isnan(mean_ci(np.array([3.0, np.nan]))))
    # 2000 normal samples of 3: the t interval covers the mean ~95% of the time, the bootstrap far less
    rng = np.random.default_rng(1)
    samples = rng.normal(0, 1, (2000, 3))
    t_cover = np.mean([lo < 0 < hi for lo, hi in map(mean_ci, samples)])
    def percentile_bootstrap(s, n_boot=400):
        means = s[np.random.default_rng(0).integers(0, len(s), (n_boot, len(s)))].mean(1)
        return np.quantile(means, [0.025, 0.975])
    boot_cover = np.mean([lo < 0 < hi for lo, hi in map(percentile_bootstrap, samples[:400])])
    assert 0.93 < t_cover < 0.97 and boot_cover < 0.85


def test_tables_use_ddof1_and_the_papers_figures():
    s = summary({0.5: [699, 422, 804], 0.7: [192, 179, 226], 0.9: [12, 69, 82]})
    for c in ("final_train_metric", "seed"):
        s[c] = s.get(c, 1.0)
    t2 = table2(s)
    np.testing.assert_allclose(t2["mean"], t2["paper_mean"], atol=0.05)
    np.testing.assert_allclose(t2["std"], t2["paper_std"], atol=0.05)
    t1 = table1(s)
    assert t1.loc[t1["task"] == "modular", "paper_lag"].tolist() == [699, 192, 12]
    assert per_frac_lags(s)["n_generalised"].tolist() == [3, 3, 3]


def _row(t: pd.DataFrame, start: str) -> pd.Series:
    hit = t[t["claim"].str.startswith(start)]
    assert len(hit) == 1, (start, t["claim"].tolist())
    return hit.iloc[0]


def test_half_never_generalises_is_judged_per_horizon():
    never = {0.5: [False] * 3, 0.7: [True] * 3}
    base = summary({0.5: [600, 700, 650], 0.7: [190, 180, 220]}, gen=never, epochs=2000)
    short = _row(claims_table(base), "at 50% the model never")  # 2000 epochs cannot confirm "never by 3000"
    assert short["verdict"] == UNTESTABLE and "too short to test it" in short["reason"]
    full = summary({0.5: [600, 700, 650], 0.7: [190, 180, 220]}, gen=never, epochs=3000)
    three = _row(claims_table(pd.concat([base, full])), "at 50% the model never")  # 3 runs of 3000 epochs
    assert three["verdict"] == PARTLY and "3 run(s) are too few" in three["reason"]
    six = summary({0.5: [600, 700, 650, 640, 660, 610], 0.7: [190, 180, 220]}, gen={0.5: [False] * 6,
                  0.7: [True] * 3}, epochs=3000)
    assert _row(claims_table(six), "at 50% the model never")["verdict"] == HOLDS
    # longer runs that generalise later: true within the paper's horizon only
    late = summary({0.5: [640, 700, 620, 660]}, gen={0.5: [True, True, False, True]}, epochs=10000, group="long")
    t = claims_table(pd.concat([base, late]))
    row = _row(t, "at 50% the model never")
    assert row["verdict"] == PARTLY and "3/4" in row["reason"] and "10000 epochs: 3/4 generalise" in row["ours"]
    assert "2000 epochs: 0/3 generalise, final test accuracy median 5.0%" in row["ours"]
    # the lag claim is now testable against the real events; 642 lies in the CI of these lags
    lag = _row(t, "at 50% the gradient peak leads")
    assert lag["verdict"] == HOLDS and "3/3 positive" in lag["ours"]
    # a 50% run that generalises within the paper's horizon refutes "never"
    soon = summary({0.5: [600, 700, 650]}, gen={0.5: [True, False, False]}, epochs=2000)
    assert _row(claims_table(soon), "at 50% the model never")["verdict"] == FAILS


def test_never_generalising_is_not_shown_while_the_test_metric_still_climbs():
    six = summary({0.5: [600, 700, 650, 640, 660, 610], 0.7: [190, 180, 220]}, gen={0.5: [False] * 6,
                  0.7: [True] * 3}, epochs=3000)
    six["late_test_rise"] = 0.002  # flat at the end: "never" holds at this horizon
    assert _row(claims_table(six), "at 50% the model never")["verdict"] == HOLDS
    six["late_test_rise"] = 0.04  # +4 points over the last 10%: still climbing
    row = _row(claims_table(six), "at 50% the model never")
    assert row["verdict"] == PARTLY
    assert row["reason"].endswith("still rising in 6/6 runs (median +4.0% over the last 10%, to a final median of "
                                  "5.0%): \"never\" is not shown")
    six.loc[six.index[:4], "late_test_rise"] = 0.0  # 2 of 6 still rising: not most
    assert _row(claims_table(six), "at 50% the model never")["verdict"] == HOLDS


def test_late_rise_is_the_gain_over_the_last_tenth():
    from phaselib.sweep import late_rise
    assert late_rise(np.linspace(0.0, 1.0, 101)) == pytest.approx(0.1)
    assert late_rise(np.full(50, 0.3)) == 0.0 and np.isnan(late_rise(np.array([0.5])))


def test_half_lag_untestable_without_events_and_fails_when_negative():
    t = claims_table(summary({0.5: [600, 700]}, gen={0.5: [False, False]}))
    assert _row(t, "at 50% the gradient peak leads")["verdict"] == UNTESTABLE
    t = claims_table(summary({0.5: [-40, -10, 30]}))
    assert _row(t, "at 50% the gradient peak leads")["verdict"] == FAILS
    for lags in ([650], [640, 660]):  # no interval, or a t interval too wide to test the paper's mean
        row = _row(claims_table(summary({0.5: lags})), "at 50% the gradient peak leads")
        assert row["verdict"] == PARTLY and "too few to test" in row["reason"]


def test_other_operations_get_their_own_rows_and_do_not_touch_addition():
    add = summary({0.7: [190, 180, 220], 0.9: [12, 60, 80]})
    mul = summary({0.7: [-50, -60, -70]}, op="mul", reg_lags=())
    t = claims_table(pd.concat([add, mul]))
    assert _row(t, "gradient peaks precede")["verdict"] == HOLDS  # addition alone
    ext = _row(t, "extension: gradient peaks precede the test transition in all modular-multiplication")
    assert ext["verdict"] == FAILS and "0/3" in ext["ours"]
    assert _row(t, "Pearson r strongly negative (extension: multiplication)")["verdict"] == PARTLY  # 3 runs: too few
    # per-fraction lags come from the seed-variance group, one row per operation and fraction
    pf = per_frac_lags(pd.concat([add, mul]))
    assert sorted(zip(pf["operation"], pf["frac"])) == [("add", 0.7), ("add", 0.9), ("mul", 0.7)]


def test_operation_table_counts_generalised_runs_and_lags():
    s = pd.concat([summary({0.7: [190, 180, 220], 0.9: [12, 60, 80]}),
                   summary({0.7: [-50, 10, 70]}, gen={0.7: [True, True, False]}, op="sub", reg_lags=())])
    ot = operation_table(s).set_index(["operation", "fraction"])
    assert ot.loc[("add", "70%"), "generalised"] == "3/3" and ot.loc[("add", "70%"), "gradient leads"] == "3/3"
    assert abs(ot.loc[("add", "70%"), "mean lag (epochs)"] - 590 / 3) < 1e-9
    assert ot.loc[("sub", "70%"), "generalised"] == "2/3" and ot.loc[("sub", "70%"), "gradient leads"] == "1/2"
    assert ot.loc[("sub", "70%"), "generalised 95% CI"] == "[0.09, 0.99]"


def test_lag_range_judges_the_primary_sweep_and_every_generalised_run():
    s = summary({0.7: [192, 800, 226], 0.9: [12, 69, 5]})  # seed 0 (the primary) inside; 800 and 5 outside
    row = _row(claims_table(s), "lag 12-699")
    assert row["verdict"] == PARTLY
    assert "primary: 12–192 over 2 generalised runs" in row["ours"] and "4 inside" in row["ours"]
    assert row["reason"].startswith("2/2 primary lags and 4/6")
    assert row["ci"] == "[0.22, 0.96] (share inside, exact 95%)"
    reg = _row(claims_table(s), "the regression control")
    assert reg["verdict"] == PARTLY and reg["ci"].startswith("[0.00, 0.84]")  # 0/2: 1 - 0.025 ** (1/2)
    assert "2 run(s) are too few to show it for most runs (the share's exact 95% CI reaches down to 0.16)" in reg["reason"]


def test_pearson_on_runs_shorter_than_the_papers_is_not_comparable():
    short = summary({0.7: [190, 180]}, r=-0.3, epochs=1200)
    row = _row(claims_table(short), "Pearson r strongly negative")
    assert row["verdict"] == UNTESTABLE and "no run of the paper's 3000 epochs" in row["reason"]
    assert "(runs of 1200 epochs)" in row["ours"]
    full = summary({0.7: [190, 180]}, r=-0.8, epochs=3000)
    row = _row(claims_table(pd.concat([short, full])), "Pearson r strongly negative")  # judged on 3000 only
    assert row["verdict"] == PARTLY and "2/2 ≤ −0.5 (runs of 3000 epochs)" in row["ours"]  # every run, but 2
    assert "2 run(s) are too few" in row["reason"]


def test_a_control_lag_set_by_the_skip_window_says_so():
    s = summary({0.7: [190, 180, 220]})
    assert "skipped early epochs" not in _row(claims_table(s), "the regression control")["reason"]
    s["gnorm_search_start_epoch"] = 12  # the controls' peak (12) is the first epoch the search sees
    reg = _row(claims_table(s), "the regression control")
    assert reg["verdict"] == UNTESTABLE and "set by the skipped early epochs, not measured" in reg["reason"]
    s.loc[s["run"] == "r0.7", "lag"] = 30  # a control that leads is a finding whatever the window
    assert _row(claims_table(s), "the regression control")["verdict"] == FAILS
    s.loc[s["run"] == "r0.7", "lag"] = -12
    s.loc[s["run"] == "r0.7", "gnorm_search_start_epoch"] = 6  # its peak (12) is past the search start, but
    reg = _row(claims_table(s), "the regression control")  # every metric transition (0) precedes the search
    assert reg["verdict"] == UNTESTABLE and reg["reason"].startswith("every control's metric transition comes "
                                                                     "before the first epoch the peak search sees")
    s.loc[s["run"] == "r0.7", "metric_transition_epoch"] = 8  # this control could have shown a lead: measured
    assert "skipped early epochs" not in _row(claims_table(s), "the regression control")["reason"]


def test_spearman_ci_covers_the_population_value():
    """Bivariate normal with r = 0.5: Spearman's population rho is (6/pi) asin(r/2) (Pearson 1907)."""
    from scipy import stats
    rng = np.random.default_rng(3)
    truth, n, cover = 6 / np.pi * np.arcsin(0.25), 30, 0
    cov = [[1.0, 0.5], [0.5, 1.0]]
    for _ in range(1000):
        x = rng.multivariate_normal([0, 0], cov, n)
        lo, hi = spearman_ci(stats.spearmanr(x[:, 0], x[:, 1])[0], n)
        cover += lo < truth < hi
    assert 0.93 <= cover / 1000 <= 0.97
    assert all(np.isnan(spearman_ci(-0.8, 3))) and all(np.isnan(spearman_ci(-1.0, 20)))
    lo, hi = spearman_ci(-0.77, 4)  # four points: the interval spans 0, as the p-value of 0.23 says
    assert lo < -0.9 and hi > 0.5


def test_median_ci_from_order_statistics():
    x = np.arange(20.0)[::-1]  # ranks 6 and 15 of 20 cover the median with 95.9% (binomial tables)
    lo, hi, cover = median_ci(x)
    assert (lo, hi) == (5.0, 14.0) and abs(cover - 0.9586) < 1e-4
    lo, hi, cover = median_ci(np.array([-0.66, -0.93, -0.82]))  # three points: the range, 75% only
    assert (lo, hi, cover) == (-0.93, -0.66, 0.75)
    assert all(np.isnan(median_ci(np.array([1.0]))))
    rng = np.random.default_rng(4)  # any continuous distribution: an exponential here
    hits = np.mean([(lambda c: c[0] < np.log(2) < c[1])(median_ci(rng.exponential(1.0, 15))) for _ in range(2000)])
    assert abs(hits - median_ci(np.arange(15.0))[2]) < 0.02


def test_spearman_p_is_exact_for_a_handful_of_points():
    """Up to 8 points the p-value is the exact permutation one (scipy's enumeration agrees); the t
    approximation, which reads 0.058 for five points on two tied fractions, would overstate them."""
    from scipy import stats
    x, y = np.array([0.7, 0.7, 0.9, 0.9, 0.9]), np.array([500.0, 300.0, 40.0, 60.0, 20.0])
    rho, p, how = spearman_test(x, y)
    tied = stats.permutation_test((x,), lambda u: stats.spearmanr(u, y)[0], permutation_type="pairings",
                                  n_resamples=np.inf).pvalue
    assert rho == pytest.approx(-0.866, abs=1e-3) and p == pytest.approx(tied) == 0.2
    assert how == "exact, 120 pairings, smallest attainable p 0.2"  # two tied fractions: 0.05 is out of reach
    assert stats.spearmanr(x, y)[1] < 0.06  # what the approximation said
    r0, p0, h0 = spearman_test(np.ones(5), y)
    assert np.isnan(r0) and np.isnan(p0) and h0 == "undefined"
    assert spearman_test(x, np.array([1.0, np.nan, 2.0, 3.0, 4.0]))[2] == "undefined"
    flat = _row(claims_table(summary({0.7: [100, 100], 0.9: [100, 100]})), "lag decreases")
    assert flat["verdict"] == UNTESTABLE and "no rank correlation" in flat["reason"]
    rng = np.random.default_rng(0)
    for n in (4, 6):
        a, b = rng.normal(size=n), rng.normal(size=n)
        exact = stats.permutation_test((a,), lambda u: stats.spearmanr(u, b)[0], permutation_type="pairings",
                                       n_resamples=np.inf).pvalue  # every order of a against b: n! pairings
        assert spearman_test(a, b)[1] == pytest.approx(exact, abs=1e-12)
    a, b = rng.normal(size=20), rng.normal(size=20)
    assert spearman_test(a, a + b)[1:] == (stats.spearmanr(a, a + b)[1], "t approximation")


def test_mean_positive_names_every_gap():
    """No run generalised at one fraction and an interval across 0 at another: both reasons."""
    s = summary({0.5: [5, 6], 0.7: [300, -200, 250], 0.9: [40, 50, 45]}, gen={0.5: [False] * 2, 0.7: [True] * 3,
                                                                               0.9: [True] * 3})
    row = _row(claims_table(s), "the mean lag is positive")
    assert row["verdict"] == PARTLY
    assert "no run generalised at 50%" in row["reason"] and "the CI includes 0 (or n < 2) at 70%" in row["reason"]
    assert "90%" not in row["reason"]


def test_one_control_lag_is_not_printed_as_a_range():
    row = _row(claims_table(summary({0.7: [190, 180, 220]}, reg_lags=(-24,))), "the regression control")
    assert row["ours"].startswith("lag -24; 0/1 positive")


def test_the_papers_figures_come_from_published(monkeypatch):
    """The 'paper' column quotes phaselib.published: the abstract's figures, and any change there."""
    from phaselib import claims, published
    assert claims.PAPER == {"precede": "all runs (3 primary + 9 seed runs)", "mean": "54–642 (3 seeds)",
                            "monotone": "642 > 199 > 54", "regression": "−60 (all 3)", "pearson": "−0.93 to −0.66",
                            "half_lag": "699 (seed 42); mean 642 (3 seeds)"}
    t2 = published.TABLE2.copy()
    t2.loc[t2["frac"] == 0.7, "mean"] = 250.0
    monkeypatch.setattr(published, "TABLE2", t2)
    assert claims._paper_figures()["monotone"] == "642 > 250 > 54"
