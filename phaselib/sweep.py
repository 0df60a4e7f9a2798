"""A study's runs: expand parameters into run configs, train what is missing, summarise.

The run store makes every sweep resumable: a run is trained only if its config hash is not
stored, and each finished run is stored at once, atomically.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from .config import RunConfig
from .detect.offline import Analysis, Settings, analyse
from .models import LAYERS
from .params import StudyParams
from .record import RunRecord, concat_tables
from .store import RunStore
from .train import BASE_COLUMNS

GROUPS: tuple[str, ...] = ("primary", "variance", "long", "probing")


def study_groups(p: StudyParams) -> dict[str, list[RunConfig]]:
    """The runs of each sweep of a study, in a stable order (task, operation, frac, seed)."""
    groups: dict[str, list[RunConfig]] = {}
    def grid(tasks, ops, fracs, seeds, epochs, **extra) -> list[RunConfig]:
        out = []
        for task in tasks:
            for op in (ops if task == "modular" else ("add",)):
                for frac in fracs:
                    for seed in seeds:
                        out.append(p.run_config(task=task, operation=op, frac=frac, seed=seed, epochs=epochs, **extra))
        return out
    groups["primary"] = grid(p.primary_tasks, p.primary_operations, p.primary_fracs, p.primary_seeds, p.primary_epochs)
    groups["variance"] = grid(p.variance_tasks, p.variance_operations, p.variance_fracs, p.variance_seeds,
                              p.variance_epochs)
    groups["long"] = (grid(("modular",), p.primary_operations, p.long_fracs, p.long_seeds, p.long_epochs)
                      if p.long_epochs else [])
    groups["probing"] = grid(p.primary_tasks, p.primary_operations, p.probe_fracs, p.probe_seeds, p.probe_epochs,
                             probes=tuple(p.probes().items())) if p.probe_fracs and p.probe_seeds else []
    return groups


def all_configs(groups: dict[str, list[RunConfig]]) -> list[RunConfig]:
    """Every distinct config of a study, in group order (a run shared by two groups once)."""
    seen: dict[str, RunConfig] = {}
    for cfgs in groups.values():
        for c in cfgs:
            seen.setdefault(c.key, c)
    return list(seen.values())


def settings_of(p: StudyParams) -> Settings:
    return Settings(window=p.sg_window, order=p.sg_order, skip_frac=p.skip_frac, threshold=p.threshold,
                    max_lag=p.xcorr_max_lag)


def analyse_record(record: RunRecord, settings: Settings = Settings()) -> Analysis:
    """The paper's analysis of one stored run."""
    metric = record.series("test_metric")
    grads = {l: record.series("grad_norm", l).to_numpy() for l in LAYERS}
    return analyse(metric.index.to_numpy(), grads, metric.to_numpy(), settings)


def late_rise(metric: np.ndarray, tail: float = 0.1) -> float:
    """What the test metric gained over the last ``tail`` of the run: its last value minus its value
    at 90% of the run (a run still climbing at its end has not settled, whatever its level)."""
    if len(metric) < 2:
        return float("nan")
    return float(metric[-1] - metric[int((1 - tail) * (len(metric) - 1))])


def summary_row(record: RunRecord, settings: Settings = Settings(), group: str = "") -> dict:
    """One row of ``summary.csv``: the run's identity, the paper's numbers and the verdict."""
    c = record.config
    a = analyse_record(record, settings)
    row = {
        "group": group, "run": c.key, "task": c.task, "operation": c.operation or "", "modulus": c.modulus,
        "frac": c.frac, "seed": c.seed, "epochs": c.epochs,
        "gnorm_peak_epoch": a.gnorm_peak_epoch, "gnorm_search_start_epoch": a.gnorm_search_start_epoch,
        "metric_transition_epoch": a.metric_transition_epoch,
        "lag": a.lag, "generalised": a.generalised, "verdict": a.verdict,
        "generalisation_epoch": a.generalisation_epoch,
        "final_train_metric": float(record.series("train_metric").iloc[-1]),
        "final_test_metric": float(record.series("test_metric").iloc[-1]),
        "late_test_rise": late_rise(record.series("test_metric").to_numpy()),
        "pearson_r": a.pearson_r, "pearson_p": a.pearson_p, "xcorr_lag": a.xcorr_lag,
    }
    for l in LAYERS:
        row[f"{l}_peak_epoch"] = a.layer_peak_epochs[l]
        row[f"{l}_lag"] = a.layer_lags[l]
    row["wall_time_s"] = float(record.meta.get("wall_time_s", np.nan))
    row["engine"] = record.meta.get("engine", "")
    return row


def summarise(store: RunStore, groups: dict[str, list[RunConfig]], settings: Settings = Settings()) -> pd.DataFrame:
    """Summary rows of every run of every group, read from the store."""
    rows = []
    cache: dict[str, RunRecord] = {}
    for g, cfgs in groups.items():
        for c in cfgs:
            rec = cache.get(c.key) or cache.setdefault(c.key, store.get(c))
            rows.append(summary_row(rec, settings, g))
    return pd.DataFrame(rows)


def probe_twins(todo: Sequence[RunConfig], plan: Sequence[RunConfig]) -> dict[str, RunConfig]:
    """The runs of ``todo`` without probes whose twin with probes (the same config otherwise) is
    in ``plan``: plain run's key -> its twin. Probers only read a run's parameters (the batched
    engine hands them a copy, the reference loop the live model, which they do not write) and draw
    from their own generators, so the twin's base signals are the plain run's, bit for bit
    (tests/test_sweep.py), and training the twin gives both. In the paper's study the six primary
    runs are the probing runs without probes: 15% of its training."""
    probed = {c.replace(probes=()).key: c for c in plan if c.probes}
    return {c.key: probed[c.key] for c in todo if not c.probes and c.key in probed}


def from_twin(twin: RunRecord, plain: RunConfig) -> RunRecord:
    """The record of ``plain`` read off its probed twin's: the base signals only, under the plain
    run's key; its metadata says so (``derived_from``) and gives no training time of its own."""
    pairs = pd.MultiIndex.from_tuples(BASE_COLUMNS)
    t = twin.table
    table = t[pd.MultiIndex.from_arrays([t["signal"].astype(str), t["layer"].astype(str)]).isin(pairs)].copy()
    table["run"] = plain.key
    table = concat_tables([table.reset_index(drop=True)])
    skip = {"batch_size", "batch_wall_time_s"}
    meta = {k: v for k, v in twin.meta.items() if k not in skip}
    meta.update(config_hash=plain.key, config=plain.hashed_dict(), wall_time_s=0.0, derived_from=twin.key)
    return RunRecord(plain, table, meta)


def _store_from_twins(twins: dict[str, RunConfig], todo: Sequence[RunConfig],
                      store: RunStore) -> tuple[list[str], list[RunConfig]]:
    """Store the plain runs of ``todo`` whose twins are stored: their keys, and the plain runs left
    to train (twin not stored: its batch failed). A twin trained on the batched engine's torch
    path does not serve: trained alone it steps with multi-threaded matmuls, which are not promised
    to round as its single-threaded share of a batch would (phaselib/engine.py, Threads)."""
    done, left = [], []
    for c in todo:
        if c.key not in twins:
            continue
        twin = store.get(twins[c.key]) if twins[c.key].key in store else None
        if twin is None or twin.meta.get("kernels") == "torch":
            left.append(c)
        elif store.put(from_twin(twin, c)):
            done.append(c.key)
    return done, left


def run_missing(configs: Sequence[RunConfig], store: RunStore, executor: str = "local", progress: bool = True,
                **executor_kw) -> list[str]:
    """Train the configs not yet stored, storing each as it finishes; returns the keys stored.

    A run whose probed twin is in ``configs`` is not trained but read off the twin once that is
    stored (:func:`probe_twins`); if the twin's batch fails, the run is trained after all."""
    from .executors import SweepIncomplete, run

    todo = store.missing(configs)
    if not todo:
        return []
    twins = probe_twins(todo, configs)
    train = [c for c in todo if c.key not in twins]
    failures, trained = [], []

    def train_and_collect(batch: Sequence[RunConfig]) -> None:
        if not batch:
            return
        try:
            trained.extend(run(executor, batch, store, progress=progress, **executor_kw))
        except SweepIncomplete as exc:
            failures.extend(exc.failures)
            trained.extend(exc.trained)

    train_and_collect(train)
    derived, left = _store_from_twins(twins, todo, store)
    trained += derived
    train_and_collect(left)  # plain runs whose twins failed or cannot serve
    if failures:
        raise SweepIncomplete(failures, trained)
    return trained
