"""Where a sweep's runs execute. ``local``: in this process, batch by batch.

Work is split into batches of runs of one shape (:func:`batches`), so the batched engine
can step each batch together; every finished run goes to the store at once.
"""
from __future__ import annotations

import time
from typing import Sequence

from .config import RunConfig
from .progress import bar
from .record import RunRecord
from .store import RunStore

#: Most runs stepped together in one batch (bounds memory: R x p^2 x p logits).
MAX_BATCH = 32


def batch_key(c: RunConfig) -> tuple:
    """Runs with equal batch keys can be stacked: same shapes, same step count and optimiser."""
    return (c.engine, c.shape, c.epochs, c.lr, c.weight_decay, c.record_every, c.probes, c.device)


def batches(configs: Sequence[RunConfig], max_batch: int = MAX_BATCH) -> list[list[RunConfig]]:
    """Deterministic split into batches of one batch key, at most ``max_batch`` runs each.

    Reference-engine runs go one per batch. The split depends only on the list of configs,
    so every executor forms the same batches and so computes bit-identical records.
    """
    groups: dict[tuple, list[RunConfig]] = {}
    for c in configs:
        groups.setdefault(batch_key(c), []).append(c)
    out: list[list[RunConfig]] = []
    for key, cs in groups.items():
        size = 1 if key[0] == "reference" else max_batch
        out.extend(cs[i:i + size] for i in range(0, len(cs), size))
    return out


def train_batch(configs: Sequence[RunConfig]) -> list[RunRecord]:
    """Train one batch with its engine (the reference loop runs its configs one by one)."""
    if configs[0].engine == "batched":
        from .engine import train_batched
        return train_batched(configs)
    from .train import train_reference
    return [train_reference(c) for c in configs]


class Progress:
    """Runs done / to do with an ETA, whatever executes them."""

    def __init__(self, todo: int, enabled: bool = True, desc: str = "runs") -> None:
        self.bar = bar(todo, desc, enabled=enabled, unit="run", leave=True)
        self.t0 = time.perf_counter()

    def done(self, n: int) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def run_local(todo: Sequence[RunConfig], store: RunStore, progress: bool = True) -> list[str]:
    """Train ``todo`` batch by batch in this process, storing each run as soon as it is done."""
    trained: list[str] = []
    prog = Progress(len(todo), progress)
    try:
        for batch in batches(todo):
            for rec in train_batch(batch):
                store.put(rec)
                trained.append(rec.key)
            prog.done(len(batch))
    finally:
        prog.close()
    return trained


def run(executor: str, todo: Sequence[RunConfig], store: RunStore, progress: bool = True,
        scheduler: str | None = None, workers: int = 2) -> list[str]:
    """Dispatch to an executor by name."""
    if executor == "local":
        return run_local(todo, store, progress=progress)
    raise ValueError(f"executor: {executor!r} is invalid; allowed: one of ['local']")
