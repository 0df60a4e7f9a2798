"""The paper's two tables, computed from a sweep's summary, with the published figures beside."""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from . import published


def mean_ci(x: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Student's t interval of the mean, mean -+ t_{(1+level)/2, n-1} s / sqrt(n) (exact for normal
    data); NaN for n < 2. For the few seeds of a lag table a percentile bootstrap of the mean
    collapses to about the sample's range (with n = 3 every bootstrap quantile beyond 1/27 lies
    inside it) and covers far less than ``level``; the t interval keeps it for normal lags and is
    robust to moderate departures from normality."""
    x = np.asarray(x, float)
    x = x[~np.isnan(x)]
    if len(x) < 2:
        return float("nan"), float("nan")
    half = stats.t.ppf((1 + level) / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return float(x.mean() - half), float(x.mean() + half)


def median_ci(x: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Distribution-free CI of the median from order statistics: [x_(k), x_(n+1-k)] covers it with
    probability 1 - 2 P(Bin(n, 1/2) <= k - 1) for any continuous distribution (e.g. Conover,
    Practical Nonparametric Statistics, 3.2). The largest k reaching ``level``; when even the range
    falls short (n < 6 at 95%), the range with the coverage it has. Returns (lo, hi, coverage);
    NaNs for n < 2."""
    x = np.sort(np.asarray(x, float)[~np.isnan(np.asarray(x, float))])
    n = len(x)
    if n < 2:
        return float("nan"), float("nan"), float("nan")
    cover = [1 - 2 * stats.binom.cdf(k - 1, n, 0.5) for k in range(1, n // 2 + 1)]
    k = max([i + 1 for i, c in enumerate(cover) if c >= level], default=1)
    return float(x[k - 1]), float(x[n - k]), float(cover[k - 1])


def table1(summary: pd.DataFrame) -> pd.DataFrame:
    """Table 1 (primary sweep): ours beside the paper's, with the generalisation verdict."""
    s = summary[summary["group"] == "primary"].copy()
    pub = published.TABLE1.rename(columns=lambda c: c if c in ("task", "frac") else f"paper_{c}")
    s["frac_key"] = s["frac"].round(3)
    pub["frac_key"] = pub["frac"].round(3)
    m = s.merge(pub.drop(columns="frac"), on=["task", "frac_key"], how="left")
    m.loc[m["operation"].isin(["sub", "mul", "div"]), [c for c in m.columns if c.startswith("paper_")]] = np.nan
    cols = ["task", "operation", "frac", "seed", "gnorm_peak_epoch", "paper_gnorm_peak_epoch",
            "metric_transition_epoch", "paper_metric_transition_epoch", "lag", "paper_lag",
            "pearson_r", "paper_pearson_r", "final_test_metric", "verdict"]
    return m[cols].reset_index(drop=True)


def lag_stats(lags: np.ndarray) -> dict:
    """Mean, std (ddof=1, as the paper), min, max and the t 95% CI of the mean lag (:func:`mean_ci`)."""
    lags = np.asarray(lags, float)
    lo, hi = mean_ci(lags)
    return {"n": len(lags), "mean": lags.mean() if len(lags) else np.nan,
            "std": lags.std(ddof=1) if len(lags) > 1 else np.nan,
            "min": lags.min() if len(lags) else np.nan, "max": lags.max() if len(lags) else np.nan,
            "ci_low": lo, "ci_high": hi}


def table2(summary: pd.DataFrame, group: str = "variance") -> pd.DataFrame:
    """Table 2 (seed variance, modular runs): lag statistics per operation and fraction.

    ``mean``/``std``/``min``/``max`` use every seed, as the paper does; ``n_generalised`` and
    ``mean_generalised`` keep only the runs whose lag is a finding (they generalised).
    """
    s = summary[(summary["group"] == group) & (summary["task"] == "modular")]
    rows = []
    for (op, frac), g in s.groupby(["operation", "frac"], sort=True):
        st = lag_stats(g["lag"].to_numpy())
        gen = g[g["generalised"].astype(bool)]
        row = {"operation": op, "frac": frac, **st, "n_generalised": len(gen),
               "mean_generalised": gen["lag"].mean() if len(gen) else np.nan}
        pub = published.TABLE2[np.isclose(published.TABLE2["frac"], frac)] if op == "add" else published.TABLE2.iloc[:0]
        for c in ("mean", "std", "min", "max"):
            row[f"paper_{c}"] = float(pub[c].iloc[0]) if len(pub) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(df: pd.DataFrame, floatfmt: str = ".3g") -> str:
    """A Markdown table with stable rounding; whole-number float columns print as integers."""
    df = df.copy()
    for c in df.columns:
        col = df[c]
        if col.dtype.kind == "f" and col.notna().any() and np.all(np.mod(col.dropna(), 1) == 0) \
                and col.abs().max() < 1e15:
            df[c] = col.astype("Int64").astype(object).where(col.notna(), None)
        else:
            df[c] = col.astype(object).where(col.notna(), None)
    return df.to_markdown(index=False, floatfmt=floatfmt, missingval="–")


def _fmt(df: pd.DataFrame) -> str:
    return markdown(df)


def tables_markdown(summary: pd.DataFrame) -> str:
    """``tables.md``: Table 1 and Table 2 with the paper's figures beside ours, and the source."""
    t1 = table1(summary)
    t2 = table2(summary)
    return "\n".join([
        "# Reproduction of the paper's tables", "",
        f"Published figures (`paper_*` columns): {published.SOURCE}.", "",
        "A run *generalised* if its test metric reaches the threshold and stays there to the end; "
        "the lag of a run that did not generalise is reported as the paper computes it but is not a finding.", "",
        "## Table 1: primary sweep", "", _fmt(t1), "",
        "## Table 2: seed variance of the lag (epochs)", "", _fmt(t2), "",
    ])


def adjacent_overlaps(t2: pd.DataFrame) -> pd.DataFrame:
    """For each operation, whether the mean-lag CIs of neighbouring fractions overlap.

    Separate intervals separate the two fractions' mean lags; overlapping ones do not show that
    they are the same (comparing overlap is a conservative test: it needs more than p < 0.05).
    """
    rows = []
    for op, g in t2.groupby("operation"):
        g = g.sort_values("frac")
        for a, b in zip(g.itertuples(), g.iloc[1:].itertuples()):
            if np.isfinite([a.ci_low, a.ci_high, b.ci_low, b.ci_high]).all():
                rows.append({"operation": op, "frac_a": a.frac, "frac_b": b.frac,
                             "overlap": bool(a.ci_low <= b.ci_high and b.ci_low <= a.ci_high)})
    return pd.DataFrame(rows, columns=["operation", "frac_a", "frac_b", "overlap"])
