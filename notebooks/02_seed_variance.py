# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · Seed variance (the paper's Table 2)
#
# **Question.** Is the lag a property of the data fraction, or of the seed? The paper answers
# from three seeds; here the seed list is a parameter, and every spread comes with a
# 95% confidence interval of the mean.
#
# **Method.** Modular runs at each fraction and seed; the paper's lag per run; per fraction the
# mean, standard deviation (n − 1), min and max over all seeds as the paper computes them, the
# Student-t 95% CI of the mean (with three seeds a bootstrap interval would be little more than
# the range), and how many runs generalised. A lag is a finding only for a run that generalised,
# so the reading below compares fractions on those runs' mean lags.

# %% tags=["parameters"]
modulus = 97
width = 64
lr = 1e-3
weight_decay = 0.1
engine = "batched"
variance_tasks = ["modular"]
variance_operations = ["add"]
variance_fracs = [0.5, 0.7, 0.9]
variance_seeds = [42, 123, 7]
variance_epochs = 1200
sg_window = 51
sg_order = 3
skip_frac = 0.02
threshold = 0.5
xcorr_max_lag = 500
out_dir = "results/notebook"

# %%
import matplotlib.pyplot as plt

from phaselib import params, plots
from phaselib.notebook import ensure, say, show
from phaselib.sweep import settings_of, summarise
from phaselib.claims import per_frac_lags
from phaselib.tables import adjacent_overlaps, table2

P = params.from_namespace(globals())
S = settings_of(P)
store, configs = ensure(P, "variance")
summary = summarise(store, {"variance": configs}, S)

# %% [markdown]
# ## Result: lag statistics per fraction, beside the paper's Table 2

# %% tags=["nbval-check-output"]
t2 = table2(summary)
show(t2, name="table2", out_dir=P.out_dir)

# %% [markdown]
# ## Every run

# %% tags=["nbval-check-output"]
runs = summary[["operation", "frac", "seed", "gnorm_peak_epoch", "metric_transition_epoch", "lag", "verdict",
                "final_test_metric"]].sort_values(["operation", "frac", "seed"])
show(runs, name="variance_runs", out_dir=P.out_dir)

# %% [markdown]
# ## The lag distribution per fraction
# One dot per seed (hollow: did not generalise), the mean and its t 95% CI.

# %%
for op, g in summary[summary["task"] == "modular"].groupby("operation"):
    fig, ax = plt.subplots(figsize=(6, 3.4))
    plots.lag_distribution(g, ax=ax)
    ax.set_title(f"{op}: " + ax.get_title(), fontsize=10)
    fig.tight_layout()
    plots.save(fig, P.out_dir, f"02_lag_distribution_{op}")
    plt.show()

# %% [markdown]
# ## What it means

# %% tags=["nbval-check-output"]
lines = []
pf = per_frac_lags(summary).set_index(["operation", "frac"])  # intervals over the generalised runs
for r in t2.itertuples():
    ci = f"[{r.ci_low:.0f}, {r.ci_high:.0f}]" if r.n > 1 and r.ci_low == r.ci_low else "n/a"
    g = pf.loc[(r.operation, r.frac)] if (r.operation, r.frac) in pf.index else None
    gci = (f", 95% CI [{g.ci_low:.0f}, {g.ci_high:.0f}]" if g is not None and g.ci_low == g.ci_low else
           ", no interval from one run" if r.n_generalised == 1 else "")
    gen = (f"mean of those {r.mean_generalised:.0f}{gci}" if r.n_generalised else "so no lag here is a finding")
    lines.append(f"- {r.operation} {r.frac:.0%}: mean lag {r.mean:.0f} epochs over all seeds (95% CI {ci}, "
                 f"sd {r.std:.0f}, n = {r.n}); {r.n_generalised} of {r.n} runs generalised, {gen}.")
ov = adjacent_overlaps(per_frac_lags(summary))  # generalised runs only
if len(ov):
    both = [f"{r.operation} {r.frac_a:.0%}/{r.frac_b:.0%}" for r in ov.itertuples() if r.overlap]
    lines.append(f"- Adjacent fractions whose mean-lag CIs over generalised runs (above, and in the figure) "
                 f"overlap (the seeds do not clearly separate them; overlap is a conservative check): {', '.join(both) if both else 'none'} "
                 f"({len(ov)} pair(s) with two or more generalised runs on each side; "
                 f"{len(P.variance_seeds)} seeds per fraction).")
else:
    lines.append("- No two adjacent fractions have two or more generalised runs each: no mean lags to compare.")
say("\n".join(lines))
