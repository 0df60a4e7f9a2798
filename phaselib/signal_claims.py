"""The articles' claims about curvature, noise and representation signals, judged per run.

Each claim names a signal, a detector and the direction the article predicts; a run supports
it when the detector's first alarm in that direction comes *before* the run's generalisation
event (the first epoch from which the test metric stays >= threshold).

Runs without a transition are the null runs: the regression control (no delayed transition)
and modular runs that never generalised within their horizon (a run may generalise later, as
long 50% runs do; an alarm that early would still be no warning of it). An alarm there in the
predicted direction is a false alarm (a move the other way is not what the claim predicts). A
claim whose detector fires so on half the controls or more, or on half the never-generalised
runs or more, holds at most partly: its alarm is not specific to grokking. The two kinds are
judged apart, so that the other task's controls cannot dilute a false alarm on the same task.

- lambda_min (seed 003): "drops tenfold or crosses zero before a transition":
  :func:`phaselib.detect.curvature.detect` (persistent tenfold drop / zero crossing).
- B_simple (seed 002): "the noise scale drops at the onset of feature learning", and
- effective rank (seed 002): "jumps at the onset of feature learning": claims about the shape of
  a signal, judged alike by principled change-point detection (:func:`first_step`: PELT with its
  default penalty, :mod:`phaselib.detect.changepoint`, on the series after its start-up transient;
  the first change point whose step, the mean of the segment it opens against the segment it
  closes, goes the claim's way), on log B_simple (it spans decades; a probe every
  ``probe_noise_every`` epochs) and on the every-epoch erank.
- seed 002's own early-warning recipe on B_simple: "a 3-sigma departure from the baseline of the
  first 10% of the run flags the drop": the online k-sigma detector (:mod:`phaselib.detect.online`)
  on log B_simple, direction down, window and persistence scaled to the sparse series (3 probes).
  Judged as a claim of its own: a signal can move as claimed while the recipe misses it, or the
  other way round.

A claim about every run holds only when the runs show it for most runs at least: k of n with the
exact 95% CI of the share above 1/2 (:func:`phaselib.claims.every_run`); fewer runs make it
hold partly, with the reason saying so.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from .claims import clopper_pearson, every_run, too_few_against
from .detect import changepoint, curvature, online
from .detect.offline import generalisation_epoch
from .evaluate import fires_too_often
from .probes import ProbeSchedule
from .record import RunRecord

HOLDS, PARTLY, FAILS, UNTESTABLE = "holds", "holds partly", "does not hold", "not testable"


@dataclass(frozen=True)
class SignalAlarm:
    epoch: int | None
    direction: str | None


def _lmin(values: np.ndarray) -> tuple[int | None, str | None]:
    """The first persistent drop (the claim's direction), else the first alarm of any kind."""
    a = curvature.detect(values, direction="down") or curvature.detect(values)
    return (a.index, a.direction) if a else (None, None)


def _noise(values: np.ndarray) -> tuple[int | None, str | None]:
    v = _log(values)
    alarms = online.replay(v, baseline=max(3, online.baseline_len(len(v))), window=3, persistence=3,
                           direction="down")
    return (alarms[0].index, alarms[0].direction) if alarms else (None, None)


def first_step(values: np.ndarray, direction: str) -> tuple[int | None, str | None]:
    """The first PELT change point of the series after its start-up transient (the first
    ``changepoint.TRANSIENT_FRAC`` of the samples, left out of the segmentation, so that the
    start-up is never the level a step is measured from) that steps in ``direction`` ("up": the
    segment it opens has the larger mean than the one it closes), else the first one, with its
    step's direction; indices into ``values``; (None, None) without one."""
    start = changepoint.transient_len(len(values))
    rest = values[start:]
    cp = changepoint.detect(rest, transient=0)
    if not cp.indices:
        return None, None
    bounds = [0, *cp.indices, len(rest)]
    steps = [(start + i, "up" if rest[i:bounds[j + 1]].mean() > rest[bounds[j - 1]:i].mean() else "down")
             for j, i in enumerate(cp.indices, 1)]
    return next((s for s in steps if s[1] == direction), steps[0])


def _log(values: np.ndarray) -> np.ndarray:
    """B_simple spans decades: it is judged on a log scale."""
    return np.log(np.clip(values, 1e-30, None))


def _noise_step(values: np.ndarray) -> tuple[int | None, str | None]:
    return first_step(_log(values), "down")


def _erank(values: np.ndarray) -> tuple[int | None, str | None]:
    return first_step(values, "up")


@dataclass(frozen=True)
class SignalClaim:
    claim: str
    signal: str
    direction: str
    detect: Callable[[np.ndarray], tuple[int | None, str | None]]


CLAIMS: tuple[SignalClaim, ...] = (
    SignalClaim("lambda_min drops tenfold or crosses zero before a transition", "hessian_lmin", "down", _lmin),
    SignalClaim("the noise scale B_simple drops at the onset of feature learning", "b_simple", "down", _noise_step),
    SignalClaim("the 3σ rule on a 10% baseline flags the drop of B_simple", "b_simple", "down", _noise),
    SignalClaim("the effective rank jumps at the onset of feature learning", "erank", "up", _erank),
)


ALARM_COLUMNS = ["run", "task", "claim", "signal", "alarm_epoch", "direction", "event_epoch", "lead", "supports"]


def _event(rec: RunRecord, threshold: float) -> int | None:
    """The run's generalisation event: the epoch from which its test metric stays at or above ``threshold``."""
    metric = rec.series("test_metric")
    gi = generalisation_epoch(metric.to_numpy(), threshold)
    return None if gi is None else int(metric.index[gi])


def _finite(rec: RunRecord, signal: str) -> pd.Series:
    """A probed signal's finite values (a probe can give inf: B_simple at a zero gradient)."""
    s = rec.series(signal)
    return s[np.isfinite(s.to_numpy())]


def alarm_table(records: Sequence[RunRecord], threshold: float = 0.5) -> pd.DataFrame:
    """One row per (run, claim): the alarm epoch and direction, the event epoch and the lead."""
    rows = []
    for rec in records:
        event = _event(rec, threshold)
        for c in CLAIMS:
            s = _finite(rec, c.signal)
            idx, direction = c.detect(s.to_numpy()) if len(s) > 3 else (None, None)
            epoch = None if idx is None else int(s.index[idx])
            lead = (event - epoch) if (event is not None and epoch is not None) else None
            rows.append({"run": rec.config.label, "task": rec.config.task, "claim": c.claim, "signal": c.signal,
                         "alarm_epoch": epoch, "direction": direction, "event_epoch": event, "lead": lead,
                         "supports": bool(rec.config.task == "modular" and lead is not None and lead > 0
                                          and direction == c.direction)})
    return pd.DataFrame(rows, columns=ALARM_COLUMNS)


def verdicts(alarms: pd.DataFrame) -> pd.DataFrame:
    """Per claim: supporting runs among generalised modular runs (with the exact 95% CI of the
    share), false alarms on the controls and on never-generalised modular runs (module
    docstring), verdict."""
    rows = []
    for c in CLAIMS:
        a = alarms[alarms["claim"] == c.claim]
        mod = a[(a["task"] == "modular") & a["event_epoch"].notna()]
        k, n = int(mod["supports"].sum()), len(mod)
        null = {"control": a[a["task"] == "regression"],
                "never-generalised": a[(a["task"] == "modular") & a["event_epoch"].isna()]}
        fired = {kind: g["alarm_epoch"].notna() for kind, g in null.items()}
        fa = {kind: int((fired[kind] & (g["direction"] == c.direction)).sum()) for kind, g in null.items()}
        other = sum(int(f.sum()) for f in fired.values()) - sum(fa.values())
        loud = [kind for kind, g in null.items() if fires_too_often(fa[kind], len(g))]
        holds, few = every_run(k, n)
        verdict = UNTESTABLE if n == 0 else HOLDS if holds and not loud else PARTLY if k else FAILS
        if verdict == FAILS:
            few = too_few_against(k, n)
        # (every run, but too few runs; or it fires as often without a transition: not specific)
        counts = ", ".join(f"{kind} {fa[kind]}/{len(g)}" for kind, g in null.items() if len(g))
        leads = mod.loc[mod["supports"], "lead"]
        lo, hi = clopper_pearson(k, n)
        rows.append({"claim": c.claim, "supporting runs": f"{k}/{n}",
                     "share 95% CI": "–" if n == 0 else f"[{lo:.2f}, {hi:.2f}]",
                     "median lead (epochs)": float(leads.median()) if len(leads) else np.nan,
                     "control alarms": f"{fa['control']}/{len(null['control'])}",
                     "never-generalised alarms": f"{fa['never-generalised']}/{len(null['never-generalised'])}",
                     "verdict": verdict,
                     "reason": ("no probed modular run generalised" if n == 0 else
                                f"{k} of {n} generalised runs alarm {c.direction} before the event" + few
                                + (f"; but runs without a transition alarm too ({counts}), so it is not specific "
                                   "to grokking" if loud else f"; runs without a transition alarm too ({counts})"
                                   if sum(fa.values()) else "")
                                + (f"; {other} alarm(s) in the other direction on runs without a transition, "
                                   "not counted" if other else ""))})
    return pd.DataFrame(rows)


def largest_fall(values: np.ndarray) -> tuple[float, int | None, int | None]:
    """The largest fall of a positive series from a sample to a later one, as a factor
    ``values[peak] / values[trough]`` (>= 1; 1 for a series that never falls), with the indices of
    that peak and trough (None, None when it never falls): the maximum drawdown, parameter-free,
    so it sees a gradual fall that no step detector reports."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return 1.0, None, None
    running = np.maximum.accumulate(v)
    ratio = running / v
    trough = int(np.argmax(ratio))
    if not ratio[trough] > 1.0:
        return 1.0, None, None
    peak = int(np.argmax(v[:trough + 1]))
    return float(ratio[trough]), peak, trough


def fall_table(records: Sequence[RunRecord], signal: str = "b_simple", threshold: float = 0.5) -> pd.DataFrame:
    """Per run: the largest fall of ``signal`` (:func:`largest_fall`) after the start-up transient
    (``changepoint.transient_len``, as :func:`first_step` leaves out) and before the generalisation
    event of a modular run that generalised; over the rest of the run for runs without a transition
    (the regression control is one: its task has no delayed generalisation, so its event, when its R²
    passes the threshold, is no cut-off); its peak and trough epochs, and the event."""
    rows = []
    for rec in records:
        event = _event(rec, threshold)
        s = _finite(rec, signal)
        s = s.iloc[changepoint.transient_len(len(s)):]
        before = s[s.index < event] if event is not None and rec.config.task == "modular" else s
        factor, peak, trough = largest_fall(before.to_numpy())
        rows.append({"run": rec.config.label, "task": rec.config.task, "event_epoch": event,
                     "largest fall (x)": factor,
                     "from epoch": None if peak is None else int(before.index[peak]),
                     "to epoch": None if trough is None else int(before.index[trough])})
    return pd.DataFrame(rows, columns=["run", "task", "event_epoch", "largest fall (x)", "from epoch", "to epoch"])


def fall_summary(falls: pd.DataFrame) -> str:
    """One sentence on a :func:`fall_table`: the largest falls in generalised modular runs against
    those in runs without a transition (median and range of the factors)."""
    gen = falls["event_epoch"].notna() & (falls["task"] == "modular")

    def spread(f: pd.Series) -> str:
        return (f"median x{f.median():.1f} (x{f.min():.1f} to x{f.max():.1f})" if len(f) > 1 else
                f"x{f.iloc[0]:.1f}" if len(f) else "no run")
    return (f"largest fall after the start-up, before the event, in the {int(gen.sum())} generalised run(s): "
            f"{spread(falls.loc[gen, 'largest fall (x)'])}; after the start-up, over the rest of the run, in the "
            f"{int((~gen).sum())} run(s) without a transition: {spread(falls.loc[~gen, 'largest fall (x)'])}")


def course(records: Sequence[RunRecord], signal: str = "hessian_lmin", threshold: float = 0.5) -> pd.DataFrame:
    """Per run: a probed signal's first and last finite values, how many times its magnitude shrinks
    between them (``|first| / |last|``) and whether it changes sign. What a detector of drops and
    zero crossings cannot see: a series that starts negative and decays towards zero."""
    rows = []
    for rec in records:
        v = _finite(rec, signal).to_numpy()
        if len(v) < 2:
            continue
        rows.append({"run": rec.config.label, "task": rec.config.task,
                     "generalised": bool(rec.config.task == "modular" and _event(rec, threshold) is not None),
                     "first": float(v[0]), "last": float(v[-1]),
                     "magnitude shrinks (x)": abs(v[0]) / abs(v[-1]) if v[-1] != 0 else np.inf,
                     "changes sign": bool(np.sign(v[0]) != np.sign(v[-1]))})
    return pd.DataFrame(rows, columns=["run", "task", "generalised", "first", "last", "magnitude shrinks (x)",
                                       "changes sign"])


def course_summary(table: pd.DataFrame, name: str = "λ_min") -> str:
    """One computed sentence on :func:`course`: the sign at the first probe, and how far the
    magnitude shrinks by the last, in generalised runs against runs without a transition."""
    if not len(table):
        return f"{name}: no run with two probes"

    def spread(f: pd.Series) -> str:
        return (f"a median x{f.median():.1f} (x{f.min():.1f} to x{f.max():.1f})" if len(f) > 1 else
                f"x{f.iloc[0]:.1f}" if len(f) else "– (no run)")
    gen = table["generalised"]
    return (f"{name} is negative at the first probe in {int((table['first'] < 0).sum())} of {len(table)} runs; from "
            f"the first probe to the last its magnitude shrinks by {spread(table.loc[gen, 'magnitude shrinks (x)'])} "
            f"in the {int(gen.sum())} generalised run(s) and by {spread(table.loc[~gen, 'magnitude shrinks (x)'])} in "
            f"the {int((~gen).sum())} run(s) without a transition; it changes sign in "
            f"{int(table['changes sign'].sum())} of {len(table)}")


def _trace_z(t: pd.DataFrame) -> np.ndarray:
    """(Hutchinson trace - exact trace) / its standard error, at every probe that recorded both."""
    est = t[t["signal"] == "hessian_trace"].set_index("epoch")
    exact = t[t["signal"] == "hessian_trace_exact"].set_index("epoch")["value"]
    both = est.join(exact.rename("exact"), how="inner")
    both = both[both["stderr"] > 0]  # a zero s.e. (all probe vectors agree) has no z to check
    return ((both["value"] - both["exact"]) / both["stderr"]).to_numpy()


def _quality(rec: RunRecord) -> dict:
    """One run's Hessian probes, converged eigensolves (λ_max, λ_min), median relative s.e. of the
    trace, and how many of Hutchinson's whole-model estimates lie within 1 and 2 s.e. of the exact trace."""
    t = rec.table[rec.table["layer"] == "all"]
    conv = {w: t[t["signal"] == f"hessian_{w}_converged"]["value"] for w in ("lmax", "lmin")}
    tr = t[t["signal"] == "hessian_trace"]
    z = np.abs(_trace_z(t))
    return {"probes": len(conv["lmax"]), "lmax": int(conv["lmax"].sum()), "lmin": int(conv["lmin"].sum()),
            "trace_rse": float((tr["stderr"] / tr["value"].abs()).median()) if len(tr) else np.nan,
            "trace_n": len(z), "trace_in1": int((z <= 1).sum()), "trace_in2": int((z <= 2).sum())}


def _share(k: int, n: int) -> str:
    return f"{k}/{n}" if n else "not recorded"


def estimate_quality(records: Sequence[RunRecord]) -> pd.DataFrame:
    """Per run: Hessian probes, how many eigensolves converged, median relative s.e. of the trace,
    and the Hutchinson estimates within 1 and 2 s.e. of the exact trace (about 68% and 95% if
    the error bars are honest; "not recorded" for runs without ``hessian_trace_exact``)."""
    rows = []
    for rec in records:
        q = _quality(rec)
        rows.append({"run": rec.config.label, "Hessian probes": q["probes"],
                     "λ_max converged": f"{q['lmax']}/{q['probes']}", "λ_min converged": f"{q['lmin']}/{q['probes']}",
                     "median trace rel. s.e.": q["trace_rse"],
                     "trace within 1 s.e. of exact": _share(q["trace_in1"], q["trace_n"]),
                     "within 2 s.e.": _share(q["trace_in2"], q["trace_n"])})
    return pd.DataFrame(rows)


def quality_totals(records: Sequence[RunRecord]) -> dict:
    """Over all runs: Hessian probes, converged λ_max and λ_min eigensolves, the median over runs of
    each run's median relative s.e. of the trace, and the probes with an exact trace (``trace_n``)
    whose Hutchinson estimate lies within 1 and 2 s.e. of it (``trace_in1``, ``trace_in2``, with
    the exact 95% CIs of those shares)."""
    qs = [_quality(r) for r in records]
    rse = [q["trace_rse"] for q in qs]
    totals = {k: sum(q[k] for q in qs) for k in ("probes", "lmax", "lmin", "trace_n", "trace_in1", "trace_in2")}
    return totals | {"trace_rse": float(np.nanmedian(rse)) if np.isfinite(rse).any() else np.nan,
                     "trace_in1_ci": clopper_pearson(totals["trace_in1"], totals["trace_n"]),
                     "trace_in2_ci": clopper_pearson(totals["trace_in2"], totals["trace_n"])}


def honest_shares(n_probes: int) -> tuple[float, float]:
    """The shares of probes whose Hutchinson estimate lies within 1 and 2 s.e. of the true trace
    when the s.e. is right: the studentised mean of ``n_probes`` samples is t with n_probes - 1
    degrees of freedom (for normal samples; the 30-vector default gives 67% and 95%)."""
    t = stats.t(n_probes - 1)
    return float(t.cdf(1) - t.cdf(-1)), float(t.cdf(2) - t.cdf(-2))


def trace_check(q: dict, n_probes: int = ProbeSchedule().hutchinson_probes) -> str:
    """The sentence the notebooks print for :func:`quality_totals`' check of the trace's error bars."""
    if not q["trace_n"]:
        return "no exact trace was recorded, so the trace's error bars are not checked"
    e1, e2 = honest_shares(n_probes)
    n, (lo1, hi1), (lo2, hi2) = q["trace_n"], q["trace_in1_ci"], q["trace_in2_ci"]
    return (f"the exact trace lies within one s.e. of Hutchinson's estimate at {q['trace_in1']}/{n} probes "
            f"({q['trace_in1'] / n:.0%}, 95% CI {lo1:.0%}–{hi1:.0%}) and within two at {q['trace_in2']}/{n} "
            f"({q['trace_in2'] / n:.0%}, {lo2:.0%}–{hi2:.0%}); honest error bars give {e1:.0%} and {e2:.0%}")
