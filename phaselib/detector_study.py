"""Which signal, with which detector, announces generalisation, and how often does it cry wolf?

Runs the default detector set over a sweep's stored runs and scores it with
:mod:`phaselib.evaluate` against each run's generalisation event. The default set covers the
three families at their documented defaults: the online k-sigma protocol (k = 3, window 50,
persistence 10, seed 002), PELT change points with the l2 and normal costs, and the curvature
detector on lambda_min (seed 003).
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Sequence

import numpy as np
import pandas as pd

from . import evaluate as ev
from .config import RunConfig
from .executors import check_workers
from .store import RunStore
from .sweep import probe_twins

#: Signals scored by the generic detectors (the probed ones only exist in probing runs).
SIGNALS: tuple[str, ...] = ("grad_norm", "weight_norm", "train_loss", "erank", "active_frac", "b_simple",
                            "hessian_lmax", "hessian_trace")
DEFAULT_DETECTORS: tuple[ev.DetectorSpec, ...] = (
    ev.spec("online", k=3.0, window=50, persistence=10),
    ev.spec("changepoint", method="pelt", cost="l2"),
    ev.spec("changepoint", method="pelt", cost="normal"),
)
CURVATURE = ev.spec("curvature", drop_factor=10.0, persistence=3)  # curvature.detect's defaults, named in its label
#: Sweeps of at least this many runs are scanned by one process per core by default.
PARALLEL_FROM = 64


def runs_table(configs: Sequence[RunConfig], events: dict[str, float]) -> pd.DataFrame:
    """The runs table :func:`phaselib.evaluate.evaluate` expects (``events``: run key -> event epoch)."""
    return pd.DataFrame([{"run": c.key, "task": c.task, "operation": c.operation or "", "frac": c.frac,
                          "seed": c.seed, "epochs": c.epochs, "event_epoch": events.get(c.key, float("nan"))}
                         for c in configs])


def _scan(store_path: str, configs: Sequence[RunConfig], threshold: float, detectors: Sequence[ev.DetectorSpec],
          layers: Sequence[str], signals: Sequence[str] = SIGNALS,
          curvature: bool = True) -> tuple[pd.DataFrame, dict]:
    """Alarms and generalisation events of ``configs``, read one run at a time from the store."""
    store = RunStore(store_path)
    alarms, events = [], {}
    for c in configs:
        table = store.table([c])
        table = table[table["layer"].isin(list(layers))]
        events.update(ev.event_epochs(table, threshold=threshold))
        alarms += [ev.alarms_for(table, d, list(signals)) for d in detectors]
        if curvature:
            alarms.append(ev.alarms_for(table, CURVATURE, ["hessian_lmin"]))
    alarms = [a for a in alarms if len(a)]
    return (pd.concat(alarms, ignore_index=True) if alarms else pd.DataFrame()), events


def scan_detectors(store: RunStore, configs: Sequence[RunConfig], threshold: float = 0.5,
                   detectors: Sequence[ev.DetectorSpec] = DEFAULT_DETECTORS,
                   layers: Sequence[str] = ("all", "fc1", "fc2"), workers: int | None = None,
                   signals: Sequence[str] = SIGNALS, curvature: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every detector's alarms on ``configs`` and the runs table (events, seeds): what
    :func:`phaselib.evaluate.evaluate` scores, and what :func:`held_out` splits.

    Each run counts once: a run without probes whose probed twin is also in ``configs`` is left
    out, since the twin's base signals are its record bit for bit (:func:`phaselib.sweep.probe_twins`).

    Runs are read and scanned one at a time (only their alarms are kept), so memory does not grow
    with the sweep. With ``workers`` > 1 the runs are split into that many contiguous chunks
    scanned by local processes (PELT in ruptures is pure Python: about 1 s per run of 2000
    epochs); the result does not depend on ``workers``. ``None``: one process below
    :data:`PARALLEL_FROM` runs (starting processes costs seconds), else one per core. ``signals``
    and ``curvature`` (the curvature detector on lambda_min) narrow the scan.
    """
    configs = list({c.key: c for c in configs}.values())
    twins = probe_twins(configs, configs)  # a plain run whose probed twin is here: the same base signals
    configs = [c for c in configs if c.key not in twins]
    if workers is None:
        workers = 1 if len(configs) < PARALLEL_FROM else os.cpu_count() or 1
    check_workers(workers)
    chunks = [list(c) for c in np.array_split(np.array(configs, dtype=object), min(workers, max(1, len(configs))))]
    chunks = [c for c in chunks if c]
    args = [(str(store.path), c, threshold, tuple(detectors), tuple(layers), tuple(signals), curvature)
            for c in chunks]
    if len(chunks) == 1:
        parts = [_scan(*args[0])]
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(len(chunks), mp_context=ctx) as pool:
            parts = list(pool.map(_scan, *zip(*args)))
    alarms = pd.concat([p[0] for p in parts if len(p[0])], ignore_index=True)
    events = {k: v for p in parts for k, v in p[1].items()}
    return alarms, runs_table(configs, events)


def evaluate_detectors(store: RunStore, configs: Sequence[RunConfig], threshold: float = 0.5,
                       detectors: Sequence[ev.DetectorSpec] = DEFAULT_DETECTORS,
                       layers: Sequence[str] = ("all", "fc1", "fc2"), workers: int | None = None) -> pd.DataFrame:
    """The full evaluation table (one row per signal, layer and detector) over ``configs``
    (:func:`scan_detectors`, then :func:`phaselib.evaluate.evaluate`)."""
    return ev.evaluate(*scan_detectors(store, configs, threshold, detectors, layers, workers))


HELD_OUT_MIN_SEEDS = 3
"""Seeds each half of :func:`held_out` needs at least (so at least 6 in all)."""


def warning_table(evaluation: pd.DataFrame, max_false_alarm_rate: float = 1.0,
                  min_hit_rate: float = 0.0) -> pd.DataFrame:
    """The warnings: :func:`phaselib.evaluate.detector_table` over the rows that stay quiet on most
    runs without a transition (:func:`phaselib.evaluate.specific`, controls and never-generalised
    runs judged apart). The budget alone counts alarms per 1000 epochs, which a detector firing
    once in every null run passes. Specificity is applied before the best knob per family is
    picked, so a specific setting is not hidden behind a louder one of the same family."""
    return ev.detector_table(evaluation[ev.specific(evaluation)], max_false_alarm_rate, min_hit_rate)


def split_seeds(seeds: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The distinct seeds, sorted and dealt alternately: (seeds to choose on, seeds to report on).
    A sweep runs every fraction and operation at every seed, so both halves see all of them; a
    group with fewer seeds (the probed runs) can fall mostly in one half."""
    s = sorted({int(x) for x in seeds})
    return tuple(s[0::2]), tuple(s[1::2])


def held_out(alarms: pd.DataFrame, runs: pd.DataFrame, max_false_alarm_rate: float = 1.0,
             min_hit_rate: float = 0.0, top: int = 12, warnings_only: bool = False) -> pd.DataFrame | None:
    """How much the detector ranking flatters itself: choose on half the seeds, report on the other.

    :func:`phaselib.evaluate.detector_table` (or, with ``warnings_only``, :func:`warning_table`)
    ranks (signal, layer, detector) rows on the runs of the first half of :func:`split_seeds`,
    exactly as on all runs; its ``top`` rows are then scored on the other half's runs alone
    (controls and never-generalised runs split the same way). ``testable``: the row has leads on
    the held-out half; ``kept``: it is testable and also meets the budget and the hit rate there
    (and, for warnings, stays specific). None when either half has fewer than
    :data:`HELD_OUT_MIN_SEEDS` seeds. (Selecting on the runs that are reported biases leads
    upwards; this measures by how much.)"""
    if "seed" not in runs.columns or runs["seed"].isna().any():
        raise ValueError("runs: a 'seed' for every run is required; allowed: the runs table of scan_detectors")
    choose, report = split_seeds(runs["seed"])
    if min(len(choose), len(report)) < HELD_OUT_MIN_SEEDS:
        return None
    halves = []
    for seeds in (choose, report):
        r = runs[runs["seed"].isin(seeds)]
        halves.append(ev.evaluate(alarms[alarms["run"].isin(r["run"])], r))
    pick = warning_table if warnings_only else ev.detector_table
    picked = pick(halves[0], max_false_alarm_rate, min_hit_rate).head(top)
    cols = ["median_lead", "hit_rate", "false_alarms_per_1000_epochs", "n_runs_generalised"]
    held = halves[1].assign(specific=ev.specific(halves[1])).set_index(ev.KEYS)[
        ["median_lead", "lead_ci_low", "lead_ci_high", "hit_rate", "false_alarms_per_1000_epochs",
         "n_runs_generalised", "specific"]]
    out = picked[["rank"] + ev.KEYS + cols].join(held.add_suffix("_held_out"), on=ev.KEYS)
    out["testable"] = out["median_lead_held_out"].notna()
    fa = out["false_alarms_per_1000_epochs_held_out"]
    out["kept"] = out["testable"] & (fa <= max_false_alarm_rate) & (out["hit_rate_held_out"] >= min_hit_rate)
    if warnings_only:
        out["kept"] &= out["specific_held_out"].eq(True)
    else:
        out = out.drop(columns="specific_held_out")
    out.attrs["seeds"] = {"chosen on": choose, "reported on": report}
    return out.reset_index(drop=True)


def held_out_summary(check: pd.DataFrame | None, n_seeds: int) -> str:
    """One computed sentence on :func:`held_out`'s result (or why there is none). Leads are
    compared over the rows that have leads on both halves."""
    if check is None:
        return (f"The held-out check needs at least {2 * HELD_OUT_MIN_SEEDS} seeds ({HELD_OUT_MIN_SEEDS} to choose on, "
                f"{HELD_OUT_MIN_SEEDS} to report on); these runs have {n_seeds}, so it is not done here.")
    warnings = "specific_held_out" in check.columns
    rows, keep = ("warnings", "the budget, the hit rate and their quiet on runs without a transition") if warnings \
        else ("top rows", "the false-alarm budget and the hit rate")
    if not len(check):
        return f"On the seeds chosen on, no row qualifies among the {rows}: there is nothing to hold out."
    seeds = check.attrs["seeds"]
    both = check[check["testable"]]
    text = (f"Chosen on seeds {', '.join(map(str, seeds['chosen on']))} and scored on seeds "
            f"{', '.join(map(str, seeds['reported on']))}: {int(check['kept'].sum())} of the {len(check)} {rows} "
            f"keep {keep} on the held-out seeds")
    if untestable := len(check) - len(both):
        text += f" ({untestable} without any lead there, so not testable)"
    if len(both):
        lead, held = both["median_lead"], both["median_lead_held_out"]
        text += (f"; over the {len(both)} row(s) with leads on both halves, the median of their median lead is "
                 f"{held.median():.0f} epochs there against {lead.median():.0f} where they were chosen "
                 f"({int((held < lead).sum())} of {len(both)} lead less on the held-out seeds)")
    return text + "."


def warnings_summary(ranked: pd.DataFrame, warnings: pd.DataFrame) -> str:
    """One computed sentence on the warnings (:func:`warning_table`) among the ``ranked`` rows
    (:func:`phaselib.evaluate.detector_table`), with the best warning's figures."""
    if not len(ranked):
        return ("No (signal, detector) pair stays under the false-alarm budget with the required hit rate: "
                "no transition is announced.")
    if not len(warnings):
        return (f"None of the {len(ranked)} rows that pass the budget and the hit rate stays quiet on most runs "
                "without a transition: no signal here warns of generalisation specifically.")
    b = warnings.iloc[0]
    causal = ("causal: it knows an alarm at the epoch it falls on" if b.detector.split("(")[0] in ev.CAUSAL
              else "not causal: it sees the whole run")
    ci = "" if pd.isna(b.lead_ci_low) else \
        f" ({b.lead_ci_coverage:.0%} CI {b.lead_ci_low:.0f} to {b.lead_ci_high:.0f})"
    return (f"{len(warnings)} (signal, detector) row(s) pass the budget and the hit rate and stay quiet on most runs "
            f"without a transition: the warnings. The best, {b.signal} ({b.layer}) under `{b.detector}` ({causal}), "
            f"alarms before the event in {b.hits} of {b.n_runs_generalised} generalised runs, with a median lead of "
            f"{b.median_lead:.0f} epochs{ci}; it alarms on {b.null_runs_alarmed_control} of {b.n_null_runs_control} "
            f"controls and on {b.null_runs_alarmed_never_generalised} of {b.n_null_runs_never_generalised} runs "
            "that never generalised.")


def by_fraction(alarms: pd.DataFrame, runs: pd.DataFrame, signal: str, layer: str, detector: str) -> pd.DataFrame:
    """Where one (signal, layer, detector) fires, per training fraction and run length: the
    generalised modular runs it warns (first alarm before the event, a hit as in
    :func:`phaselib.evaluate.evaluate`), with the median epoch of their first alarm and of their
    event (an alarm that keeps its epoch while the event moves is not tracking the event), and
    the never-generalised runs and controls it alarms on at all. Only runs that carry the signal
    count (probed signals exist in probed runs alone). Run length matters: the online baseline is
    the first 10% of a run."""
    a = alarms[(alarms["signal"] == signal) & (alarms["layer"] == layer) & (alarms["detector"] == detector)]
    first = a.groupby("run")["alarm_epoch"].min()
    r = runs[runs["run"].isin(first.index)].reset_index(drop=True)
    r = r.assign(alarm=r["run"].map(first))
    control = r["task"] == ev.CONTROL_TASK
    gen = ~control & r["event_epoch"].notna()
    never = ~control & ~gen
    rows = []
    for (frac, epochs), g in r.groupby(["frac", "epochs"], sort=True):
        m = (r["frac"] == frac) & (r["epochs"] == epochs)
        rows.append({"frac": frac, "epochs": epochs, "generalised": int((gen & m).sum()),
                     "warned": int((gen & m & (r["alarm"] < r["event_epoch"])).sum()),
                     "median_alarm_epoch": r.loc[gen & m, "alarm"].median(),
                     "median_event_epoch": r.loc[gen & m, "event_epoch"].median(),
                     "never_generalised": int((never & m).sum()),
                     "never_generalised_alarmed": int((never & m & r["alarm"].notna()).sum()),
                     "controls": int((control & m).sum()),
                     "controls_alarmed": int((control & m & r["alarm"].notna()).sum())})
    return pd.DataFrame(rows, columns=["frac", "epochs", "generalised", "warned", "median_alarm_epoch",
                                       "median_event_epoch", "never_generalised", "never_generalised_alarmed",
                                       "controls", "controls_alarmed"])


def loud_fractions(table: pd.DataFrame, share: float = ev.NULL_SHARE) -> pd.DataFrame:
    """The rows of :func:`by_fraction` where the detector alarms on at least ``share`` of the runs
    that never generalised: the rule of :func:`phaselib.evaluate.specific`, applied per fraction
    and run length instead of pooled (pooled, quiet fractions can hide loud ones)."""
    return table[ev.fires_too_often(table["never_generalised_alarmed"], table["never_generalised"], share)]


def by_fraction_summary(table: pd.DataFrame) -> str:
    """Computed sentences on :func:`by_fraction`: the never-generalised runs alarmed per fraction
    and run length, the controls, the fractions where the specificity rule fails, and when the
    first alarm and the event come on the generalised runs."""
    t = table[table["never_generalised"] > 0]
    n_controls = int(table["controls"].sum())
    controls = (f"it alarms on {int(table['controls_alarmed'].sum())} of {n_controls} controls" if n_controls
                else "it sees no controls")
    if not len(t):
        text = f"Every modular run it sees generalised; {controls}."
    else:
        parts = [f"{k}/{n} at {f:.0%} ({e} epochs)" for f, e, k, n in
                 zip(t["frac"], t["epochs"], t["never_generalised_alarmed"], t["never_generalised"])]
        text = "On the runs that never generalised it alarms in " + ", ".join(parts) + f"; {controls}."
        loud = loud_fractions(table)
        if len(loud):
            where = ", ".join(f"{f:.0%} ({e} epochs)" for f, e in zip(loud["frac"], loud["epochs"]))
            text += (f" Judged fraction by fraction, it fires on at least half of the runs without a transition at "
                     f"{where}: there it is not specific to generalisation.")
    g = table[table["generalised"] > 0]
    if len(g):
        times = [f"{f:.0%} ({e} epochs): {'no alarm' if pd.isna(a) else f'{a:.0f}'} (event {v:.0f})" for f, e, a, v in
                 zip(g["frac"], g["epochs"], g["median_alarm_epoch"], g["median_event_epoch"])]
        text += " On the generalised runs, the median epoch of its first alarm, by fraction: " + "; ".join(times) + "."
    return text


def baseline_sensitivity(store: RunStore, configs: Sequence[RunConfig], row: pd.Series,
                         baselines: Sequence[int] = (100, 200, 300), threshold: float = 0.5) -> pd.DataFrame | None:
    """How an online warning's figures depend on its baseline: the detector of ``row`` (a row of
    :func:`warning_table`) run again on ``configs`` with baselines of fixed length (in epochs, the
    same for every run) instead of 10% of each run, beside its own. The 10% rule gives a
    2000-epoch run a 200-epoch baseline and a 3000-epoch run 300. None unless the detector is one
    of :data:`DEFAULT_DETECTORS`' online ones."""
    spec = next((d for d in DEFAULT_DETECTORS if d.label == row["detector"] and d.name == "online"), None)
    if spec is None:
        return None
    specs = [spec] + [ev.spec("online", **dict(spec.params), baseline=int(b)) for b in baselines]
    layers = tuple(dict.fromkeys((row["layer"], "all")))  # "all" holds the test metric, hence the events
    alarms, runs = scan_detectors(store, configs, threshold, specs, layers, signals=(row["signal"],), curvature=False)
    e = ev.evaluate(alarms, runs).set_index(["detector", "layer"])
    out = []
    for b, d in zip(["10% of the run"] + [f"{int(b)} epochs" for b in baselines], specs):
        x = e.loc[(d.label, row["layer"])]
        out.append({"baseline": b, "hits": int(x["hits"]), "n_runs_generalised": int(x["n_runs_generalised"]),
                    "median_lead": x["median_lead"], "lead_ci_low": x["lead_ci_low"], "lead_ci_high": x["lead_ci_high"],
                    "null_runs_alarmed_control": int(x["null_runs_alarmed_control"]),
                    "n_null_runs_control": int(x["n_null_runs_control"]),
                    "null_runs_alarmed_never_generalised": int(x["null_runs_alarmed_never_generalised"]),
                    "n_null_runs_never_generalised": int(x["n_null_runs_never_generalised"])})
    return pd.DataFrame(out)


def baseline_summary(table: pd.DataFrame | None) -> str:
    """One computed sentence on :func:`baseline_sensitivity` (empty for a detector without a baseline)."""
    if table is None or not len(table):
        return ""
    fixed = table.iloc[1:]
    n_gen, n_never = int(table["n_runs_generalised"].iloc[0]), int(table["n_null_runs_never_generalised"].iloc[0])
    varies = table[["hits", "null_runs_alarmed_never_generalised"]].nunique().max() > 1
    return (f"With a baseline of {', '.join(fixed['baseline'].str.replace(' epochs', ''))} epochs for every run "
            f"instead of 10% of each, it warns {', '.join(str(h) for h in fixed['hits'])} of {n_gen} generalised runs "
            f"(median lead {', '.join(f'{v:.0f}' for v in fixed['median_lead'])} epochs) and alarms on "
            f"{', '.join(str(k) for k in fixed['null_runs_alarmed_never_generalised'])} of {n_never} runs that never "
            "generalised" + (": its figures depend on the baseline's length." if varies else
                             ": its figures do not depend on the baseline's length here."))
