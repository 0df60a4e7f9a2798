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
# # 03 · Beyond gradient norms: curvature, gradient noise and representations
#
# **Question.** Two articles (PROTOCOL.md §4) claim that curvature, gradient noise and
# representation signals announce phase transitions: λ_min of the Hessian drops tenfold or
# crosses zero before a transition; the gradient noise scale drops at the onset of feature
# learning; the effective rank of the hidden representation jumps. Do they, on grokking?
#
# **Method.** Probing runs (the primary tasks at the probe fractions) record, on top of the
# usual signals: every epoch, the effective rank (Roy & Vetterli), active-neuron fraction and
# activation entropy of the hidden layer on a fixed probe set of 512 examples; every
# `probe_cka_every` epochs, linear CKA to the previous probe; every `probe_noise_every` epochs
# the exact per-example gradient noise scale B_simple = tr(Σ)/|G|²; every `probe_hessian_every`
# epochs λ_max and λ_min by warm-started Lanczos on Hessian-vector products of the train loss
# (with residuals and convergence flags) and the Hutchinson trace with its standard error. For
# this ReLU MLP the trace is also known exactly (each parameter enters the output linearly along
# its own axis, so the Hessian's diagonal is the Gauss-Newton one: `exact_block_traces`), which
# checks Hutchinson's error bars at every probe. Each claim is then judged by a detector against
# the run's generalisation event.

# %% tags=["parameters"]
modulus = 97
width = 64
lr = 1e-3
weight_decay = 0.1
engine = "batched"
primary_tasks = ["modular", "regression"]
primary_operations = ["add"]
probe_fracs = [0.9]
probe_seeds = [42]
probe_epochs = 1200
probe_hessian_every = 100
probe_noise_every = 50
probe_cka_every = 10
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
from phaselib.signal_claims import (alarm_table, course, course_summary, estimate_quality, fall_summary, fall_table,
                                   quality_totals, trace_check, verdicts)
from phaselib.sweep import analyse_record, settings_of

P = params.from_namespace(globals())
S = settings_of(P)
store, configs = ensure(P, "probing")
records = list(store.records(configs))
analyses = [analyse_record(r, S) for r in records]
alarms = alarm_table(records, P.threshold)

# %% [markdown]
# ## Are the estimates trustworthy?
# Before reading trajectories: did the eigensolves converge, how large are the trace's
# standard errors relative to the trace, and are they honest? If they are, the exact trace lies
# within one standard error of Hutchinson's estimate at about two thirds of the probes and within
# two at about 95% (a t distribution with one degree of freedom fewer than the probe vectors).

# %% tags=["nbval-check-output"]
show(estimate_quality(records))
q = quality_totals(records)
say(f"Over all probed runs: λ_max converged in {q['lmax']} of {q['probes']} eigensolves and λ_min in {q['lmin']}; "
    f"{trace_check(q)}.")

# %% [markdown]
# ## Trajectories
# Each probed signal against epoch, with the gradient-norm peak, the steepest test-metric rise
# and the generalisation event; red triangles mark the claim detectors' alarms.

# %%
for rec, a in zip(records, analyses):
    fig = plots.signal_panels(rec, a, alarms)
    plots.save(fig, P.out_dir, f"03_signals_{rec.config.task}_{rec.config.frac:.2f}_s{rec.config.seed}")
    plt.show()

# %% [markdown]
# ## Alarms per run

# %% tags=["nbval-check-output"]
show(alarms.drop(columns=["task"]), name="signal_alarms", out_dir=P.out_dir)

# %% [markdown]
# ## The verdicts
# A run supports a claim when its detector fires in the predicted direction before its
# generalisation event. The detectors: for λ_min, the claim's own rule (a persistent tenfold drop
# or a zero crossing); for the two claims about the shape of a signal (B_simple drops, the
# effective rank jumps), principled change-point detection: the first PELT change point past the
# start-up transient (left out of the segmentation) whose step goes the claim's way, on log
# B_simple and on the effective rank. The article's own early-warning recipe, a 3σ departure
# from the baseline of the run's first 10%, is judged on B_simple as a claim of its own: a
# signal can move as claimed while the recipe misses it. (The change-point reading of B_simple
# was added after the recipe was seen to stay silent through a fall the trajectories show; both
# readings stay in the table, and the last section measures the fall itself.) Runs without a
# transition (the regression control, a task without delayed generalisation, whose R² passing
# the threshold is a fit, not a transition; and modular runs that never generalised) show whether
# an alarm is specific: one there, in the predicted direction, is a false alarm, and a claim whose
# detector fires so on half of either kind holds at most partly.
# A claim about every run holds only when there are enough runs to show it for most of them: the
# exact 95% CI of the supporting share must lie above 1/2 (6 of 6 runs do; 5 of 5 leave 0.48).

# %% tags=["nbval-check-output"]
v = verdicts(alarms)
show(v, name="signal_verdicts", out_dir=P.out_dir)

# %% tags=["nbval-check-output"]
n_mod = sum(r.config.task == "modular" for r in records)
say(f"Judged on {n_mod} probed modular run(s) and {len(records) - n_mod} control run(s): "
    + "; ".join(f"*{r.claim}* — **{r.verdict}** ({r.reason})" for r in v.itertuples())
    + f". With this few runs a verdict is a first look, not a test (and the Hessian is probed every "
    f"{P.probe_hessian_every} epochs, so λ_min alarms come on that grid): `params/paper.yaml` probes every fraction.")

# %% [markdown]
# ## How far B_simple falls
# The verdicts judge steps and alarms; a signal can also fall gradually, which neither reports.
# Per run: the largest fall of B_simple from a probe to a later one, as a factor (the maximum
# drawdown), after the start-up transient that the change points also leave out, and before the
# generalisation event of a modular run (over the rest of the run for runs without a transition).

# %% tags=["nbval-check-output"]
falls = fall_table(records, "b_simple", P.threshold)
show(falls.drop(columns=["task"]), name="b_simple_falls", out_dir=P.out_dir)
say(f"B_simple: {fall_summary(falls)}.")

# %% [markdown]
# ## What λ_min does
# The claim's rule fires on a tenfold drop or a zero crossing. From a negative start, a series
# that decays towards zero does neither, however far it moves. Per run: λ_min at the first and
# the last probe, how many times its magnitude shrinks between them, and whether it changes sign.

# %% tags=["nbval-check-output"]
lmin_course = course(records, "hessian_lmin", P.threshold)
show(lmin_course.drop(columns=["task"]), name="lmin_course", out_dir=P.out_dir)
say(f"{course_summary(lmin_course)}.")
