"""Which signal, with which detector, announces generalisation, and how often does it cry wolf?

Runs the default detector set over a sweep's stored runs and scores it with
:mod:`phaselib.evaluate` against each run's generalisation event. The default set covers the
three families at their documented defaults: the online k-sigma protocol (k = 3, window 50,
persistence 10, seed 002), PELT change points with the l2 and normal costs, and the curvature
detector on lambda_min (seed 003).
"""
from __future__ import annotations

from typing import Sequence

import pandas as pd

from . import evaluate as ev
from .config import RunConfig
from .store import RunStore

#: Signals scored by the generic detectors (the probed ones only exist in probing runs).
SIGNALS: tuple[str, ...] = ("grad_norm", "weight_norm", "train_loss", "erank", "active_frac", "b_simple",
                            "hessian_lmax", "hessian_trace")
DEFAULT_DETECTORS: tuple[ev.DetectorSpec, ...] = (
    ev.spec("online", k=3.0, window=50, persistence=10),
    ev.spec("changepoint", method="pelt", cost="l2"),
    ev.spec("changepoint", method="pelt", cost="normal"),
)
CURVATURE = ev.spec("curvature")


def runs_table(configs: Sequence[RunConfig], table: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """The runs table :func:`phaselib.evaluate.evaluate` expects, events at ``threshold``."""
    events = ev.event_epochs(table, threshold=threshold)
    return pd.DataFrame([{"run": c.key, "task": c.task, "operation": c.operation or "", "frac": c.frac,
                          "seed": c.seed, "epochs": c.epochs, "event_epoch": events.get(c.key, float("nan"))}
                         for c in configs])


def evaluate_detectors(store: RunStore, configs: Sequence[RunConfig], threshold: float = 0.5,
                       detectors: Sequence[ev.DetectorSpec] = DEFAULT_DETECTORS,
                       layers: Sequence[str] = ("all", "fc1", "fc2")) -> pd.DataFrame:
    """The full evaluation table (one row per signal, layer and detector) over ``configs``."""
    configs = list({c.key: c for c in configs}.values())
    table = store.table(configs)
    table = table[table["layer"].isin(list(layers))]
    runs = runs_table(configs, table, threshold)
    alarms = [ev.alarms_for(table, d, SIGNALS) for d in detectors]
    alarms.append(ev.alarms_for(table, CURVATURE, ["hessian_lmin"]))
    alarms = pd.concat([a for a in alarms if len(a)], ignore_index=True)
    return ev.evaluate(alarms, runs)
