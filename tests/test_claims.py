import numpy as np
import pandas as pd

from phaselib.claims import FAILS, HOLDS, PARTLY, UNTESTABLE, claims_table, clopper_pearson, per_frac_lags
from phaselib.tables import bootstrap_ci, table1, table2


def summary(lags: dict, gen: dict | None = None, reg_lags=(-12, -12, -12), r=-0.8) -> pd.DataFrame:
    """A synthetic summary: lags[frac] = list over seeds; gen[frac] = list of bools."""
    rows = []
    for frac, ls in lags.items():
        for seed, lag in enumerate(ls):
            g = True if gen is None else gen[frac][seed]
            for group in (["primary", "variance"] if seed == 0 else ["variance"]):
                rows.append(dict(group=group, run=f"m{frac}{seed}", task="modular", operation="add", frac=frac, seed=seed,
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
    v = claims_table(s).set_index("claim")["verdict"]
    assert (v == HOLDS).sum() >= 5, v
    assert v.iloc[3] in (HOLDS, PARTLY)  # monotone with 9 points


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


def test_bootstrap_ci_covers_and_degenerates():
    x = np.random.default_rng(0).normal(10, 1, 200)
    lo, hi = bootstrap_ci(x)
    assert lo < 10 < hi and hi - lo < 0.5
    assert all(np.isnan(bootstrap_ci(np.array([3.0]))))


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
