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
          layers: Sequence[str]) -> tuple[pd.DataFrame, dict]:
    """Alarms and generalisation events of ``configs``, read one run at a time from the store."""
    store = RunStore(store_path)
    alarms, events = [], {}
    for c in configs:
        table = store.table([c])
        table = table[table["layer"].isin(list(layers))]
        events.update(ev.event_epochs(table, threshold=threshold))
        alarms += [ev.alarms_for(table, d, SIGNALS) for d in detectors]
        alarms.append(ev.alarms_for(table, CURVATURE, ["hessian_lmin"]))
    alarms = [a for a in alarms if len(a)]
    return (pd.concat(alarms, ignore_index=True) if alarms else pd.DataFrame()), events


def evaluate_detectors(store: RunStore, configs: Sequence[RunConfig], threshold: float = 0.5,
                       detectors: Sequence[ev.DetectorSpec] = DEFAULT_DETECTORS,
                       layers: Sequence[str] = ("all", "fc1", "fc2"), workers: int | None = None) -> pd.DataFrame:
    """The full evaluation table (one row per signal, layer and detector) over ``configs``.

    Each run counts once: a run without probes whose probed twin is also in ``configs`` is left
    out, since the twin's base signals are its record bit for bit (:func:`phaselib.sweep.probe_twins`).

    Runs are read and scanned one at a time (only their alarms are kept), so memory does not grow
    with the sweep. With ``workers`` > 1 the runs are split into that many contiguous chunks
    scanned by local processes (PELT in ruptures is pure Python: about 1 s per run of 2000
    epochs); the result does not depend on ``workers``. ``None``: one process below
    :data:`PARALLEL_FROM` runs (starting processes costs seconds), else one per core.
    """
    configs = list({c.key: c for c in configs}.values())
    twins = probe_twins(configs, configs)  # a plain run whose probed twin is here: the same base signals
    configs = [c for c in configs if c.key not in twins]
    if workers is None:
        workers = 1 if len(configs) < PARALLEL_FROM else os.cpu_count() or 1
    check_workers(workers)
    chunks = [list(c) for c in np.array_split(np.array(configs, dtype=object), min(workers, max(1, len(configs))))]
    chunks = [c for c in chunks if c]
    args = [(str(store.path), c, threshold, tuple(detectors), tuple(layers)) for c in chunks]
    if len(chunks) == 1:
        parts = [_scan(*args[0])]
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(len(chunks), mp_context=ctx) as pool:
            parts = list(pool.map(_scan, *zip(*args)))
    alarms = pd.concat([p[0] for p in parts if len(p[0])], ignore_index=True)
    events = {k: v for p in parts for k, v in p[1].items()}
    return ev.evaluate(alarms, runs_table(configs, events))
