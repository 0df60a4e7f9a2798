"""Where a sweep's runs execute: ``local`` (this process), ``processes`` (a local process
pool) or ``dask`` (a Dask cluster: one given by ``scheduler``, or a loopback LocalCluster).

Work is split into batches of runs of one shape (:func:`batches`), so the batched engine
steps each batch together inside one task, and a pool's batches are cut so that its workers
share the large groups. Every executor trains each batch with :func:`train_batch`, and a
batched record does not depend on its batch mates, so every executor computes bit-identical
records, however many workers it has.

Who writes the store
--------------------
Workers never touch the run store: a task returns its batch's records (tables packed with
:func:`~phaselib.record.table_to_bytes`, the store's own lossless encoding, so a batch
crosses the network compressed) and the driver stores them, one transaction per run, as
each batch's future completes (``as_completed``) and before it waits for the next one.
Why not let workers write into the SQLite file (WAL makes that safe on one host)?

- It only works where every worker sees the store file: a process pool or a LocalCluster.
  On a multi-host cluster it needs a shared filesystem, and SQLite's locking over NFS is
  unreliable, so a store could be corrupted exactly when the sweep is largest.
- With one writer, a worker that dies can leave nothing in the store, partial or whole;
  what it had computed is simply lost and its batch is run again.
- A stopped sweep loses at most the batches in flight; everything the driver received is
  stored. Resuming is the store's job (:meth:`RunStore.missing`), the same for every executor.

The cost is that records travel to the driver; a packed run is tens of kB, small next to
the seconds to minutes of training it took.

Worker death
------------
``dask``: the scheduler reruns the tasks of a worker that died, up to its
``distributed.scheduler.allowed-failures`` (default 3); then the task fails with
``KilledWorker``. ``processes``: a worker that dies breaks the whole
``ProcessPoolExecutor`` (``BrokenProcessPool``), failing every batch in flight, guilty or
not. The driver then starts a new pool and runs the batches that were in flight again, each
alone, so that a second death is charged to the batch that caused it; a batch is given up
after ``retries`` deaths charged to it. Under either executor a batch that fails (given up,
or raised an exception, which is not retried: training is deterministic) is logged, the
sweep goes on with the other batches, and at the end :class:`SweepIncomplete` names the
failed runs. They are not stored, so running the sweep again retries just them.

Threads
-------
Each task runs torch with :data:`TASK_THREADS` (1) threads, or the config's ``threads`` when it
is set, under every executor, local included. The thread count changes float reductions: the
reference loop at p=11, width 16 gives gradient norms differing in the last bits (4.8e-7)
between 1 and 2 threads, and the batched engine on one p=23 run differs between 1 and 4
threads. So one fixed count is what makes records identical across executors. The price: under
``local`` the batched engine runs on one thread (it splits a batch between threads only when
given more) unless ``threads`` is set; ``processes`` uses more cores without changing a number.

Test hook
---------
``PHASELIB_TEST_KILL_ONCE=<path>`` in the driver's environment: the ``processes`` and
``dask`` executors hand the path to every task, and the first task to find ``<path>`` absent
creates it and kills its own worker process (``os._exit``) after training its batch and
before returning it: the worst moment for a partial write. Only the tests set it. (It is read
by the driver, not the workers, because pool and cluster workers keep the environment they
started with.)
"""
from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import threading
import time
import uuid
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Iterator, Sequence

import torch

from .config import RunConfig
from .data import REGRESSION_N
from .progress import bar
from .record import RunRecord, table_from_bytes, table_to_bytes
from .store import RunStore

if TYPE_CHECKING:  # optional dependency (the dask executor); for the annotation only
    import distributed

log = logging.getLogger(__name__)

#: Most runs stepped together in one batch (bounds memory: R x p^2 x p logits).
MAX_BATCH = 32

#: Executors :func:`run` dispatches to.
EXECUTORS: tuple[str, ...] = ("local", "processes", "dask")

#: Torch threads per task when the config leaves ``threads`` at 0 (one per worker process).
TASK_THREADS = 1

#: Deaths charged to one batch before the ``processes`` executor gives it up.
RETRIES = 2

#: Environment variable of the test-only worker-death hook (see the module docstring).
KILL_ONCE_ENV = "PHASELIB_TEST_KILL_ONCE"

#: A run in transit from a worker: its config, metadata and packed table.
Packed = tuple[RunConfig, dict, bytes]


def batch_key(c: RunConfig) -> tuple:
    """Runs with equal batch keys can be stacked: same shapes, step count, optimiser, threads."""
    return (c.engine, c.shape, c.epochs, c.lr, c.weight_decay, c.record_every, c.probes, c.device, c.threads)


def check_workers(workers: int) -> None:
    """Refuse a worker count that is not an integer >= 1, naming the key."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers: {workers!r} is invalid; allowed: an integer >= 1")


def batches(configs: Sequence[RunConfig], max_batch: int = MAX_BATCH, workers: int = 1) -> list[list[RunConfig]]:
    """Deterministic split into batches of one batch key, at most ``max_batch`` runs each.

    Reference-engine runs go one per batch, and so do probed runs: their probes run per run at
    every recorded epoch and cost far more than the stacked step (a batch of three probed mod-97
    runs was the study's longest task, with the other worker idle). For a pool of ``workers``,
    each batch key's runs are split evenly into at least ``min(runs, workers)`` batches, so that
    one large group does not run on one worker while the others idle (as one batch, the paper's 9
    variance runs were the sweep's critical path on 2 workers, the other worker idle after the
    primary runs); :func:`longest_first` then orders the pieces. A batched record does not depend
    on its batch mates (tests/test_engine.py; tests/test_executors.py checks every pool's records
    against the one-process run), so the split changes the wall time, never a number. It depends
    only on the configs and ``workers``.
    """
    check_workers(workers)
    groups: dict[tuple, list[RunConfig]] = {}
    for c in configs:
        groups.setdefault(batch_key(c), []).append(c)
    out: list[list[RunConfig]] = []
    for cs in groups.values():
        n = len(cs)
        alone = cs[0].engine == "reference" or bool(cs[0].probes)
        k = n if alone else max(-(-n // max_batch), min(n, workers))  # number of batches, sizes within one
        bounds = [-(-i * n // k) for i in range(k + 1)]
        out.extend(cs[lo:hi] for lo, hi in zip(bounds, bounds[1:]))
    return out


def run_cost(c: RunConfig) -> int:
    """A run's relative training work: epochs x the output layer's multiply-adds per epoch
    (rows x width x outputs: p^2 x width x p for modular arithmetic, ``REGRESSION_N`` x width x 1
    for the regression control). Only its order matters, in :func:`longest_first`."""
    rows, outputs = (c.modulus ** 2, c.modulus) if c.task == "modular" else (REGRESSION_N, 1)
    return c.epochs * rows * c.width * outputs


def longest_first(work: Sequence[Sequence[RunConfig]]) -> list[int]:
    """Batch indices in submission order: probing batches, then by :func:`run_cost`, largest first.

    Longest-processing-time-first keeps a pool's workers busy to the end instead of leaving one
    long batch (10k-epoch runs, Hessian probes) to run alone at the tail, and leaves the cheap
    regression batches to fill the gaps; ties keep list order, so the order is deterministic.
    Only the order changes, never a batch's content or results.
    """
    def cost(i: int) -> tuple[bool, int]:
        return bool(work[i][0].probes), sum(run_cost(c) for c in work[i])
    return sorted(range(len(work)), key=cost, reverse=True)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, then restore the previous count."""
    prev = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def train_batch(configs: Sequence[RunConfig]) -> list[RunRecord]:
    """Train one batch with its engine (the reference loop runs its configs one by one).

    Torch runs with :data:`TASK_THREADS` threads unless the configs set ``threads``, so the
    numbers do not depend on which executor or machine ran the batch.
    """
    with torch_threads(configs[0].threads or TASK_THREADS):
        if configs[0].engine == "batched":
            from .engine import train_batched
            from .train import make_prober
            probers = [make_prober(c) for c in configs]
            return train_batched(configs, probers=probers if any(probers) else None)
        from .train import train_reference
        return [train_reference(c) for c in configs]


def pack(record: RunRecord) -> Packed:
    """A record in the compact, lossless form a task returns to the driver."""
    return record.config, dict(record.meta), table_to_bytes(record.table)


def unpack(packed: Packed) -> RunRecord:
    """Inverse of :func:`pack`."""
    config, meta, blob = packed
    return RunRecord(config, table_from_bytes(blob), meta)


def _kill_once(marker: str | None) -> None:
    """The test hook: kill this process if ``marker`` is set and this call creates the file."""
    if not marker:
        return
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    os._exit(1)


def train_task(configs: Sequence[RunConfig], kill_once: str | None = None) -> list[Packed]:
    """The task a worker runs: train one batch, return its packed records (it never stores).

    ``kill_once`` is the test hook's marker path (see the module docstring), None otherwise.
    """
    records = train_batch(configs)
    _kill_once(kill_once)
    return [pack(r) for r in records]


class Progress:
    """Runs done / to do with an ETA, whatever executes them."""

    def __init__(self, todo: int, enabled: bool = True, desc: str = "runs") -> None:
        self.bar = bar(todo, desc, enabled=enabled, unit="run", leave=True)
        self.t0 = time.perf_counter()
        self.n_failed = 0

    def done(self, n: int) -> None:
        self.bar.update(n)

    def failed(self, n: int) -> None:
        """Count ``n`` runs that will not be stored by this sweep (shown next to the bar)."""
        self.n_failed += n
        self.bar.set_postfix(failed=self.n_failed)

    def close(self) -> None:
        self.bar.close()


@dataclass(frozen=True)
class BatchFailure:
    """A batch that was not stored: its run keys and why."""

    keys: tuple[str, ...]
    error: BaseException

    def __str__(self) -> str:
        return f"runs {', '.join(self.keys)}: {type(self.error).__name__}: {self.error}"


class SweepIncomplete(RuntimeError):
    """Raised after every other batch is stored, naming the batches that failed."""

    def __init__(self, failures: Sequence[BatchFailure], trained: Sequence[str]) -> None:
        self.failures = list(failures)
        self.trained = list(trained)
        runs = sum(len(f.keys) for f in self.failures)
        lines = "\n".join(f"  {f}" for f in self.failures)
        super().__init__(f"{len(self.failures)} batch(es), {runs} run(s), failed and were not stored; "
                         f"the {len(self.trained)} other run(s) trained are stored. Run the sweep again "
                         f"to retry the failed ones:\n{lines}")


class _Sink:
    """The driver's side of every executor: store each finished batch, count progress, collect failures."""

    def __init__(self, store: RunStore, todo: int, progress: bool) -> None:
        self.store = store
        self.progress = Progress(todo, progress)
        self.trained: list[str] = []
        self.failures: list[BatchFailure] = []

    def stored(self, records: Sequence[RunRecord]) -> None:
        for rec in records:
            self.store.put(rec)
            self.trained.append(rec.key)
        self.progress.done(len(records))

    def failed(self, batch: Sequence[RunConfig], error: BaseException) -> None:
        failure = BatchFailure(tuple(c.key for c in batch), error)
        log.warning("phaselib: batch failed, sweep goes on: %s", failure)
        self.failures.append(failure)
        self.progress.failed(len(batch))

    def finish(self) -> list[str]:
        """The keys trained; raises :class:`SweepIncomplete` if any batch failed."""
        self.progress.close()
        if self.failures:
            raise SweepIncomplete(self.failures, self.trained) from self.failures[0].error
        return self.trained


def run_local(todo: Sequence[RunConfig], store: RunStore, progress: bool = True) -> list[str]:
    """Train ``todo`` batch by batch in this process, storing each run as soon as it is done.

    An exception stops the sweep at once with its own traceback (there is no worker to lose);
    the runs stored before it stay stored.
    """
    sink = _Sink(store, len(todo), progress)
    try:
        for batch in batches(todo):
            sink.stored(train_batch(batch))
    finally:
        sink.progress.close()
    return sink.finish()


# ---------------------------------------------------------------- processes


#: Modules the fork server imports once, so that each pool worker starts in milliseconds.
_PRELOAD = ["phaselib.executors", "phaselib.train", "phaselib.engine", "scipy"]


#: This process's end (write) and the workers' end (read) of a pipe that only the driver
#: writes to: a worker sees EOF on it exactly when the driver is gone, however it died.
_LIFELINE: tuple[int, Connection, Connection] | None = None


def _lifeline() -> Connection:
    """The read end of this driver's lifeline pipe, to hand to pool workers."""
    global _LIFELINE
    if _LIFELINE is None or _LIFELINE[0] != os.getpid():
        _LIFELINE = (os.getpid(), *multiprocessing.Pipe(duplex=False))
    return _LIFELINE[1]


def _exit_with_driver(lifeline: Connection) -> None:
    """Block until the driver is gone (EOF on its lifeline), then kill this worker at once.

    A killed driver must not leave trainers behind. Watching the parent pid is not enough:
    under a fork server the parent is the server, which outlives the driver.
    """
    with contextlib.suppress(EOFError, OSError):
        while True:
            lifeline.recv()
    os._exit(1)


def _init_worker(lifeline: Connection) -> None:
    """Pool worker start-up: die with the driver; one torch thread unless a task says otherwise."""
    torch.set_num_threads(TASK_THREADS)
    threading.Thread(target=_exit_with_driver, args=(lifeline,), daemon=True,
                     name="phaselib-exit-with-driver").start()


def _mp_context() -> multiprocessing.context.BaseContext:
    """A fork server where there is one (POSIX), else spawn; never plain fork.

    Forking a process whose torch thread pools are running can deadlock; the fork server
    has imported torch but never run it, and it keeps a rebuilt pool cheap to start.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)  # missing modules are skipped; no effect once the server runs
    return ctx


def _new_pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=workers, mp_context=_mp_context(), initializer=_init_worker,
                               initargs=(_lifeline(),))


def _kill_pool(pool: ProcessPoolExecutor) -> None:
    """Stop a pool now: cancel what is queued and terminate its workers mid-batch."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # no public API before 3.14
    pool.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        with contextlib.suppress(Exception):
            p.terminate()


def run_processes(todo: Sequence[RunConfig], store: RunStore, progress: bool = True, workers: int = 2,
                  retries: int = RETRIES) -> list[str]:
    """Train ``todo`` on a pool of ``workers`` local processes; the driver stores each batch.

    At most ``workers`` batches are in flight, so a stopped sweep loses at most that many.
    When a worker dies the pool is rebuilt and the batches in flight run again, each alone;
    a batch charged with more than ``retries`` deaths is given up (see the module docstring).
    """
    work = batches(todo, workers=workers)  # validates workers before any process starts
    pending: deque[int] = deque(longest_first(work))  # batch indices still to submit, in order
    suspects: set[int] = set()  # in flight when a pool broke: rerun alone
    deaths = [0] * len(work)
    running: dict[Future, int] = {}
    kill_once = os.environ.get(KILL_ONCE_ENV)
    sink = _Sink(store, len(todo), progress)
    pool = _new_pool(workers)
    idle_breaks = 0  # consecutive pool breaks with no batch in flight (an idle worker died)
    try:
        while pending or running:
            broken = False
            while pending and len(running) < workers and not suspects.intersection(running.values()):
                if pending[0] in suspects and running:
                    break
                try:
                    fut = pool.submit(train_task, work[pending[0]], kill_once)
                except BrokenProcessPool:  # a worker died since the last wait
                    broken = True
                    break
                running[fut] = pending.popleft()
            done: set[Future] = set()
            if running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                if broken or any(isinstance(f.exception(), BrokenProcessPool) for f in done):
                    done, _ = wait(running)  # a broken pool fails every future still in flight
            victims: list[int] = []
            for fut in done:
                i = running.pop(fut)
                exc = fut.exception()
                if exc is None:
                    sink.stored([unpack(p) for p in fut.result()])
                    suspects.discard(i)
                elif isinstance(exc, BrokenProcessPool):
                    victims.append(i)
                else:
                    sink.failed(work[i], exc)
            if not (victims or broken):
                continue
            idle_breaks = 0 if victims else idle_breaks + 1
            if idle_breaks > RETRIES:
                raise RuntimeError(f"the process pool broke {idle_breaks} times in a row with no batch running")
            _kill_pool(pool)
            pool = _new_pool(workers)
            if len(victims) == 1:  # it ran alone or outlived the others: the death is its own
                deaths[victims[0]] += 1
            for i in sorted(victims, reverse=True):
                if deaths[i] > retries:
                    suspects.discard(i)
                    sink.failed(work[i], RuntimeError(f"its worker died {deaths[i]} time(s); retries={retries}"))
                else:
                    suspects.add(i)
                    pending.appendleft(i)
    except BaseException:
        _kill_pool(pool)
        sink.progress.close()
        raise
    pool.shutdown(wait=True)
    return sink.finish()


# ---------------------------------------------------------------- dask


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, workers: int = 2) -> Iterator["distributed.Client"]:
    """A client of the cluster at ``scheduler``, or of a LocalCluster of ``workers`` processes
    (one thread each, loopback only, no dashboard) that lives as long as the block."""
    from distributed import Client, LocalCluster

    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        yield client


def run_dask(todo: Sequence[RunConfig], store: RunStore, progress: bool = True, scheduler: str | None = None,
             workers: int = 2) -> list[str]:
    """Train ``todo`` on a Dask cluster, one task per batch; the driver stores each batch as it completes.

    ``scheduler`` is an address such as ``tcp://10.0.0.5:8786``; without one a LocalCluster of
    ``workers`` processes is started on 127.0.0.1 for the sweep. Workers need phaselib installed.
    A worker's death is retried by the scheduler (``allowed-failures``); a batch that still
    fails is reported and the sweep goes on (see the module docstring).
    """
    from distributed import as_completed

    if not scheduler:  # the size of the LocalCluster to start
        check_workers(workers)
    sink = _Sink(store, len(todo), progress)
    kill_once = os.environ.get(KILL_ONCE_ENV)
    token = uuid.uuid4().hex[:8]  # fresh task keys: never adopt a dead driver's task on a shared cluster
    try:
        with dask_client(scheduler, workers) as client:
            # batches for the cluster's workers as it is now (a cluster that grows later only idles less)
            work = batches(todo, workers=max(1, len(client.scheduler_info()["workers"])))
            rank = {i: r for r, i in enumerate(longest_first(work))}  # the scheduler starts higher priorities first
            futures = {client.submit(train_task, batch, kill_once, key=f"phaselib-train-{batch[0].key}x{len(batch)}-{token}",
                                     priority=len(work) - rank[i]): i
                       for i, batch in enumerate(work)}
            for fut in as_completed(futures):
                i = futures.pop(fut)
                try:
                    packed = fut.result()  # the task's exception, KilledWorker, or CancelledError
                except Exception as exc:
                    sink.failed(work[i], exc)
                else:
                    sink.stored([unpack(p) for p in packed])
                fut.release()  # let the cluster forget the result
    except BaseException:
        sink.progress.close()
        raise
    return sink.finish()


def run(executor: str, todo: Sequence[RunConfig], store: RunStore, progress: bool = True,
        scheduler: str | None = None, workers: int = 2) -> list[str]:
    """Dispatch to an executor by name; every one stores each batch as it finishes."""
    if executor == "local":
        return run_local(todo, store, progress=progress)
    if executor == "processes":
        return run_processes(todo, store, progress=progress, workers=workers)
    if executor == "dask":
        return run_dask(todo, store, progress=progress, scheduler=scheduler, workers=workers)
    raise ValueError(f"executor: {executor!r} is invalid; allowed: one of {list(EXECUTORS)}")
