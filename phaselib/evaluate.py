"""Score transition detectors against the generalisation event over a sweep of runs.

Inputs are pandas tables: the tidy signal table (``run, epoch, signal, layer, value, stderr``,
see :mod:`phaselib.record`) and a runs table (``run, task, operation, frac, seed, epochs,
event_epoch``; ``event_epoch`` NaN = did not generalise, task ``"regression"`` = the control).

Definitions (per signal, layer and detector)
- event: the run's generalisation epoch (:func:`event_epochs`, i.e.
  :func:`phaselib.detect.offline.generalisation_epoch` of the test metric).
- generalised run: a non-control run with an event. Only its *first* alarm counts.
- lead = event epoch - first alarm epoch (positive: the alarm came first). Defined for
  generalised runs with at least one alarm; negative leads (late alarms) stay in the
  distribution, so the median lead is not flattered by dropping them.
- hit: a generalised run whose first alarm is strictly before the event (lead > 0).
  hit_rate = hits / generalised runs that have the signal (runs without any alarm are misses).
- false alarm: every alarm on a null run, i.e. a control run (any event there is ignored: the
  control has no delayed transition) or a run that never generalised; the rate is per 1000
  epochs of such runs (the runs table's ``epochs``), pooled and split by kind.
  null_runs_alarmed counts the null runs with at least one alarm, of n_null_runs (pooled, and
  with the suffixes _control and _never_generalised by kind): a detector
  that reports at most one alarm per run (a first change point) stays under one per 1000
  epochs on runs of 1000 epochs or more even when it fires on every null run, so the rate alone
  does not show that it is not specific to generalisation.
- p_value: one-sided exact sign test (binomial, p = 1/2) of "leads are positive" against the
  null of no lead (median lead 0); zero leads are dropped. A sign test, not a permutation test,
  because with a handful of runs it needs no exchangeability assumption about event epochs.
- lead CI: the distribution-free order-statistic interval of the median lead
  (:func:`phaselib.tables.median_ci`) with its exact coverage (``lead_ci_coverage``: 95% or a
  little more from 6 leads on; below that the range, with the less it covers); NaN for < 2 leads.
  A bootstrap of a handful of leads would print the range as a 95% interval.

Offline detectors (change points) see the whole run, so their "leads" say that the signal
changed before the event, not that one could have known it at the time; the online and
curvature detectors are causal.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from .detect import changepoint, curvature, online
from .detect.offline import generalisation_epoch
from .tables import median_ci

DETECTORS: tuple[str, ...] = ("online", "changepoint", "curvature")
#: Detector families that know an alarm at the sample it falls on (module docstring).
CAUSAL: frozenset[str] = frozenset({"online", "curvature"})
CONTROL_TASK = "regression"
KEYS = ["signal", "layer", "detector"]


@dataclass(frozen=True)
class DetectorSpec:
    """A detector family and its knobs, hashable, so a sweep is a list of specs.

    ``online`` knobs: those of :func:`phaselib.detect.online.replay` plus ``baseline_frac``
    (default 0.1) used when ``baseline`` is not given; ``changepoint``: those of
    :func:`phaselib.detect.changepoint.detect` (its transition is the alarm); ``curvature``:
    those of :func:`phaselib.detect.curvature.detect`.
    """

    name: str
    params: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.name not in DETECTORS:
            raise ValueError(f"name must be one of {DETECTORS}, got {self.name!r}")
        object.__setattr__(self, "params", tuple(sorted(dict(self.params).items())))

    @property
    def label(self) -> str:
        """``name(k=v, ...)``: the ``detector`` column of alarm and evaluation tables."""
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in self.params)})"

    def alarm_indices(self, values: np.ndarray) -> list[int]:
        """Indices (into ``values``) at which this detector raises alarms, in order."""
        p = dict(self.params)
        if self.name == "online":
            frac = p.pop("baseline_frac", 0.1)
            if p.get("baseline") is None:
                p["baseline"] = online.baseline_len(len(values), frac)
            return [a.index for a in online.replay(values, **p)]
        if self.name == "changepoint":
            t = changepoint.detect(values, **p).transition
            return [] if t is None else [t]
        a = curvature.detect(values, **p)
        return [] if a is None else [a.index]


def spec(name: str, **params: Any) -> DetectorSpec:
    """``spec("online", k=3, persistence=10)``."""
    return DetectorSpec(name, tuple(params.items()))


def sweep(name: str, **grid: Sequence[Any]) -> list[DetectorSpec]:
    """Cartesian product of knob values: ``sweep("online", k=[2, 3], persistence=[5, 10])``."""
    keys = list(grid)
    return [spec(name, **dict(zip(keys, vals))) for vals in itertools.product(*grid.values())]


def _series_groups(table: pd.DataFrame, signals: Iterable[str] | None):
    t = table if signals is None else table[table["signal"].isin(list(signals))]
    t = t[np.isfinite(t["value"].to_numpy(dtype=float))]
    for (run, signal, layer), g in t.groupby(["run", "signal", "layer"], sort=True,
                                            observed=True, dropna=False):
        g = g.sort_values("epoch")
        yield run, signal, layer, g["epoch"].to_numpy(), g["value"].to_numpy(dtype=float)


def alarms_for(table: pd.DataFrame, detector: DetectorSpec,
               signals: Iterable[str] | None = None) -> pd.DataFrame:
    """Run one detector on every (run, signal, layer) series of the tidy table.

    Series are taken in epoch order with non-finite values dropped (detectors work in index
    space; alarm indices are mapped back to epochs here). One row per alarm, plus one row with
    ``alarm_epoch`` NaN for a series without alarms, so that misses are counted.
    """
    rows = []
    for run, signal, layer, epochs, values in _series_groups(table, signals):
        idx = detector.alarm_indices(values)
        for i in idx or [None]:
            rows.append((run, signal, layer, detector.label,
                         float(epochs[i]) if i is not None else math.nan))
    return pd.DataFrame(rows, columns=["run", "signal", "layer", "detector", "alarm_epoch"])


def event_epochs(table: pd.DataFrame, metric_signal: str = "test_metric",
                 threshold: float = 0.9, layer: str = "all") -> pd.Series:
    """Generalisation epoch per run (NaN if none): first epoch from which the test metric stays
    at or above ``threshold`` (:func:`phaselib.detect.offline.generalisation_epoch`)."""
    sel = table[(table["signal"] == metric_signal) & (table["layer"] == layer)]
    out = {}
    for run, g in sel.groupby("run", sort=True, observed=True):
        g = g.sort_values("epoch")
        i = generalisation_epoch(g["value"].to_numpy(dtype=float), threshold)
        out[run] = math.nan if i is None else float(g["epoch"].iloc[i])
    return pd.Series(out, name="event_epoch", dtype=float)


def sign_test(leads: np.ndarray) -> float:
    """One-sided exact sign test p-value for "leads > 0" (zeros dropped; NaN if none left)."""
    v = np.asarray(leads, dtype=float)
    pos, neg = int((v > 0).sum()), int((v < 0).sum())
    return math.nan if pos + neg == 0 else float(binomtest(pos, pos + neg, 0.5,
                                                             alternative="greater").pvalue)


def _check_runs(alarms: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    need = {"run", "task", "epochs", "event_epoch"}
    if missing := need - set(runs.columns):
        raise ValueError(f"runs table lacks columns {sorted(missing)}")
    if runs["run"].duplicated().any():
        raise ValueError("runs table has duplicate runs")
    if unknown := set(alarms["run"]) - set(runs["run"]):
        raise ValueError(f"alarms for runs missing from the runs table: {sorted(unknown)[:5]}")
    r = runs[["run", "task", "epochs", "event_epoch"]].copy()
    r["event_epoch"] = pd.to_numeric(r["event_epoch"], errors="coerce").astype(float)
    r["control"] = r["task"] == CONTROL_TASK
    r["generalised"] = ~r["control"] & r["event_epoch"].notna()
    return r


def _first_alarms(g: pd.DataFrame) -> pd.DataFrame:
    """Per generalised run of one alarm group: its first alarm, event and lead."""
    gen = g[g["generalised"]]
    first = gen.groupby("run", sort=True).agg(alarm_epoch=("alarm_epoch", "min"),
                                              event_epoch=("event_epoch", "first"))
    first["lead"] = first["event_epoch"] - first["alarm_epoch"]
    return first.reset_index()


def _groups(alarms: pd.DataFrame, runs: pd.DataFrame):
    a = alarms.merge(_check_runs(alarms, runs), on="run")
    return a.groupby(KEYS, sort=True, observed=True, dropna=False)


def leads(alarms: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """The lead-time distribution: per (signal, layer, detector) and generalised run, the first
    alarm, the event and the lead (NaN when the run had no alarm)."""
    parts = [_first_alarms(g).assign(**dict(zip(KEYS, key))) for key, g in _groups(alarms, runs)]
    cols = KEYS + ["run", "alarm_epoch", "event_epoch", "lead"]
    return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)


def evaluate(alarms: pd.DataFrame, runs: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """One row per (signal, layer, detector): hits, hit rate, median lead with its CI,
    false alarms per 1000 epochs (pooled, control, never-generalised) and the sign-test p-value.
    Definitions in the module docstring."""
    rows = []
    for key, g in _groups(alarms, runs):
        first = _first_alarms(g)
        lv = first["lead"].dropna().to_numpy()
        n_gen = len(first)
        hits = int((lv > 0).sum())
        lo, hi, cover = median_ci(lv, level)
        row = dict(zip(KEYS, key), n_runs_generalised=n_gen, n_leads=len(lv), hits=hits,
                   hit_rate=hits / n_gen if n_gen else math.nan,
                   median_lead=float(np.median(lv)) if len(lv) else math.nan,
                   lead_ci_low=lo, lead_ci_high=hi, lead_ci_coverage=cover)
        for name, mask in (("", ~g["generalised"]), ("_control", g["control"]),
                           ("_never_generalised", ~g["generalised"] & ~g["control"])):
            null = g[mask]
            epochs = float(null.drop_duplicates("run")["epochs"].sum())
            n_alarms = int(null["alarm_epoch"].notna().sum())
            row[f"n_null_runs{name}"] = int(null["run"].nunique())
            row[f"null_runs_alarmed{name}"] = int(null.loc[null["alarm_epoch"].notna(), "run"].nunique())
            if name == "":
                row["false_alarms"] = n_alarms
            row[f"false_alarms_per_1000_epochs{name}"] = (1000 * n_alarms / epochs if epochs > 0
                                                          else math.nan)
        row["p_value"] = sign_test(lv)
        rows.append(row)
    return pd.DataFrame(rows)


#: A detector firing on this share of the null runs of one kind (or more) is not specific.
NULL_SHARE = 0.5


def fires_too_often(alarmed, n, share: float = NULL_SHARE):
    """Whether ``alarmed`` of ``n`` null runs of one kind is at least ``share`` of them (False when
    there are none); elementwise on Series. The one rule of :func:`specific` and of
    :func:`phaselib.signal_claims.verdicts`."""
    return (n > 0) & (alarmed >= share * n)


def specific(table: pd.DataFrame, share: float = NULL_SHARE) -> pd.Series:
    """Per row of :func:`evaluate` or :func:`detector_table`: whether the detector alarms on fewer
    than ``share`` of the controls and fewer than ``share`` of the never-generalised runs, judged
    apart (a kind without runs does not count against it). A detector that fires on most runs
    without a transition says that the signal moves early in any run, not that a transition comes."""
    loud = pd.Series(False, index=table.index)
    for kind in ("control", "never_generalised"):
        loud |= fires_too_often(table[f"null_runs_alarmed_{kind}"], table[f"n_null_runs_{kind}"], share)
    return ~loud


def detector_table(evaluation: pd.DataFrame, max_false_alarm_rate: float = 1.0,
                   min_hit_rate: float = 0.0, best_per_family: bool = True) -> pd.DataFrame:
    """Signals and detectors ranked by median lead at a fixed false-alarm rate.

    Keeps rows with ``false_alarms_per_1000_epochs <= max_false_alarm_rate`` (rows whose rate
    is unknown, i.e. without null runs, are dropped) and ``hit_rate >= min_hit_rate``. With
    ``best_per_family`` only the best knob setting of each detector family per (signal, layer)
    stays (largest median lead, then hit rate, then fewest false alarms): this selects on the
    same runs it reports, so its leads are optimistic; :func:`phaselib.detector_study.held_out`
    scores the rows chosen on half the seeds on the other half.
    """
    e = evaluation.copy()
    fa = e["false_alarms_per_1000_epochs"]
    e = e[fa.notna() & (fa <= max_false_alarm_rate) & (e["hit_rate"] >= min_hit_rate)
          & e["median_lead"].notna()]
    e["family"] = e["detector"].str.split("(", n=1).str[0]
    order = ["median_lead", "hit_rate", "false_alarms_per_1000_epochs"]
    e = e.sort_values(order, ascending=[False, False, True], kind="mergesort")
    if best_per_family:
        e = e.drop_duplicates(["signal", "layer", "family"], keep="first")
    e = e.reset_index(drop=True)
    e.insert(0, "rank", np.arange(1, len(e) + 1))
    cols = ["rank", "signal", "layer", "detector", "median_lead", "lead_ci_low", "lead_ci_high", "lead_ci_coverage",
            "hits", "n_runs_generalised", "hit_rate", "false_alarms_per_1000_epochs", "null_runs_alarmed",
            "n_null_runs", "p_value"] + [f"{c}_{kind}" for kind in ("control", "never_generalised")
                                         for c in ("null_runs_alarmed", "n_null_runs")]
    return e[cols]
