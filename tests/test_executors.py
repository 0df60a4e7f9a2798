"""Executors: every one stores the same records, resumes a killed sweep, survives dead workers.

One loopback LocalCluster (2 worker processes, 1 thread each, no dashboard) serves every
Dask test. Worker deaths come from the test-only hook ``PHASELIB_TEST_KILL_ONCE`` (see
:mod:`phaselib.executors`): set in the driver's environment to an absent marker path, it kills
the first worker to finish a batch, after training and before the batch is handed back.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import fields

import numpy as np
import pytest

from phaselib import executors as E
from phaselib.config import RunConfig
from phaselib.store import RunStore

distributed = pytest.importorskip("distributed")

#: Tiny runs (p = 11, 40 epochs): four reference runs, one batch each, then four batched-engine
#: runs of two shapes, stacked two to a batch: six tasks.
CONFIGS = ([RunConfig(modulus=11, width=16, epochs=40, frac=f, seed=s) for f in (0.5, 0.7) for s in (1, 2)]
           + [RunConfig(modulus=11, width=w, epochs=40, frac=0.6, seed=s, engine="batched")
              for w in (16, 8) for s in (4, 5)])

LOOPBACK = "tcp://127.0.0.1:"


def assert_same_records(a: RunStore, b: RunStore, configs=CONFIGS) -> None:
    """Both stores hold exactly ``configs``, with equal tables and bit-identical values."""
    keys = {c.key for c in configs}
    assert a.keys() == keys and b.keys() == keys
    ta, tb = a.table(configs), b.table(configs)
    assert ta.equals(tb)
    for col in ("value", "stderr"):
        assert np.array_equal(ta[col].to_numpy().view(np.uint64), tb[col].to_numpy().view(np.uint64))


@pytest.fixture(scope="module")
def local_store(tmp_path_factory) -> RunStore:
    """The oracle: CONFIGS trained by the local executor."""
    store = RunStore(tmp_path_factory.mktemp("local") / "store.sqlite")
    assert sorted(E.run("local", CONFIGS, store, progress=False)) == sorted(c.key for c in CONFIGS)
    return store


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster on loopback only: 2 worker processes, 1 thread each, no dashboard."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as c:
        yield c


def test_run_rejects_an_unknown_executor(tmp_path):
    with pytest.raises(ValueError, match=r"executor: 'slurm' is invalid; allowed: .*'local', 'processes', 'dask'"):
        E.run("slurm", CONFIGS, RunStore(tmp_path / "s.sqlite"))
    with pytest.raises(ValueError, match="workers: 0 is invalid"):
        E.run("processes", CONFIGS, RunStore(tmp_path / "s.sqlite"), workers=0)


def test_batches_stack_runs_of_one_shape_in_a_fixed_order():
    def mk(**kw) -> RunConfig:
        return RunConfig(**{"modulus": 11, "width": 16, "epochs": 40, "engine": "batched", **kw})

    configs = [mk(seed=s) for s in range(5)] + [mk(seed=0, operation="div")] + [mk(seed=9, width=8)]
    got = E.batches(configs, max_batch=2)
    assert [[c.seed for c in b] for b in got] == [[0, 1], [2, 3], [4], [0], [9]]
    assert all(len({E.batch_key(c) for c in b}) == 1 for b in got)
    assert E.batches(list(configs), max_batch=2) == got
    assert [len(b) for b in E.batches(CONFIGS)] == [1, 1, 1, 1, 2, 2]  # reference: one run per task
    probed = [mk(seed=s, probes={"hessian_every": 10}) for s in range(3)]
    assert [[c.seed for c in b] for b in E.batches(probed)] == [[0], [1], [2]]  # probed: one run per task
    assert [len(b) for b in E.batches([mk(seed=s) for s in range(70)])] == [24, 23, 23]  # even, <= MAX_BATCH


def test_batches_for_a_pool_share_each_group_between_the_workers():
    """With W workers each group is cut evenly into min(runs, W) batches or more (the paper's 9
    variance runs: 5 + 4 on 2 workers), in list order; reference and probed runs stay one per batch."""
    def mk(**kw) -> RunConfig:
        return RunConfig(**{"modulus": 11, "width": 16, "epochs": 40, "engine": "batched", **kw})

    nine = [mk(seed=s) for s in range(9)] + [mk(seed=s, epochs=60) for s in range(3)]
    assert [[c.seed for c in b] for b in E.batches(nine, workers=2)] == [[0, 1, 2, 3, 4], [5, 6, 7, 8], [0, 1], [2]]
    assert [len(b) for b in E.batches(nine, workers=4)] == [3, 2, 2, 2, 1, 1, 1]
    assert [len(b) for b in E.batches(nine, workers=20)] == [1] * 12
    assert [len(b) for b in E.batches(nine, max_batch=2, workers=2)] == [2, 2, 2, 2, 1, 2, 1]
    assert E.batches(nine, workers=1) == [nine[:9], nine[9:]]
    assert [len(b) for b in E.batches(CONFIGS, workers=2)] == [1] * 8
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=f"workers: {bad!r} is invalid; allowed: an integer >= 1"):
            E.batches(nine, workers=bad)


def test_longest_first_submits_probing_then_the_most_work():
    def mk(**kw) -> RunConfig:
        return RunConfig(**{"modulus": 11, "width": 16, "epochs": 40, "engine": "batched", **kw})

    work = [[mk(seed=0)], [mk(seed=1, epochs=400), mk(seed=2, epochs=400)], [mk(seed=3, epochs=1000)],
            [mk(seed=4, probes=(("hessian_every", 10),))], [mk(seed=5)]]
    assert E.longest_first(work) == [3, 2, 1, 0, 4]  # probes first; ties (0 and 4) keep list order
    cheap = [RunConfig(task="regression", epochs=3000, frac=0.5)]  # 3000 epochs, but far less work per epoch
    big = [RunConfig(modulus=97, epochs=2000, engine="batched")]
    assert E.longest_first([cheap, big, [mk(seed=6, epochs=2000)]]) == [1, 0, 2]
    assert E.run_cost(big[0]) == 2000 * 97 ** 2 * 64 * 97 and E.run_cost(cheap[0]) == 3000 * 2000 * 64


def test_dask_local_cluster_gives_the_local_records(cluster, local_store, tmp_path, monkeypatch):
    with distributed.Client(cluster) as client:
        client_workers = client.scheduler_info()["workers"]
    assert cluster.scheduler_address.startswith(LOOPBACK)
    assert len(client_workers) == 2 and all(w.startswith(LOOPBACK) for w in client_workers)
    seen: list[tuple[int, int]] = []

    class Recording(E.Progress):
        def __init__(self, todo: int, enabled: bool = True, desc: str = "runs") -> None:
            super().__init__(todo, enabled, desc)
            seen.append((todo, 0))

        def done(self, n: int) -> None:
            super().done(n)
            seen.append((seen[-1][0], seen[-1][1] + n))

    monkeypatch.setattr(E, "Progress", Recording)
    submitted: list[tuple[int, tuple[str, ...]]] = []  # (priority, the batch's run keys)
    submit = distributed.Client.submit

    def recording_submit(self, fn, *args, **kwargs):
        submitted.append((kwargs["priority"], tuple(c.key for c in args[0])))
        return submit(self, fn, *args, **kwargs)

    monkeypatch.setattr(distributed.Client, "submit", recording_submit)
    store = RunStore(tmp_path / "store.sqlite")
    trained = E.run("dask", CONFIGS, store, progress=False, scheduler=cluster.scheduler_address)
    assert sorted(trained) == sorted(c.key for c in CONFIGS)
    assert_same_records(store, local_store)
    assert seen[0] == (8, 0) and seen[-1] == (8, 8) and len(seen) == 9  # one update per finished batch (2 workers: 8)
    work = E.batches(CONFIGS, workers=2)  # the cluster's two workers: each group cut in two
    assert [keys for _, keys in sorted(submitted, reverse=True)] == [tuple(c.key for c in work[i])
                                                                     for i in E.longest_first(work)]


def test_dask_worker_death_leaves_no_partial_run_and_is_retried(cluster, local_store, tmp_path, monkeypatch):
    marker = tmp_path / "killed"
    monkeypatch.setenv(E.KILL_ONCE_ENV, str(marker))
    store = RunStore(tmp_path / "store.sqlite")
    E.run_dask(CONFIGS, store, progress=False, scheduler=cluster.scheduler_address)
    assert marker.exists(), "no worker died"
    assert_same_records(store, local_store)


def test_dask_failed_batch_is_reported_and_the_sweep_goes_on(cluster, local_store, tmp_path):
    bad = RunConfig(modulus=11, width=16, epochs=40, seed=99, device="no-such-device")
    store = RunStore(tmp_path / "store.sqlite")
    with pytest.raises(E.SweepIncomplete, match="1 batch") as info:
        E.run_dask([bad, *CONFIGS], store, progress=False, scheduler=cluster.scheduler_address)
    assert [f.keys for f in info.value.failures] == [(bad.key,)]
    assert bad.key in str(info.value)
    assert_same_records(store, local_store)


def test_processes_worker_death_leaves_no_partial_run_and_is_retried(local_store, tmp_path, monkeypatch):
    marker = tmp_path / "killed"
    monkeypatch.setenv(E.KILL_ONCE_ENV, str(marker))
    store = RunStore(tmp_path / "store.sqlite")
    trained = E.run("processes", CONFIGS, store, progress=False, workers=2)
    assert marker.exists(), "no worker died"
    assert sorted(trained) == sorted(c.key for c in CONFIGS)
    assert_same_records(store, local_store)


def test_processes_batch_over_its_retry_cap_is_reported_and_the_sweep_goes_on(local_store, tmp_path, monkeypatch):
    monkeypatch.setenv(E.KILL_ONCE_ENV, str(tmp_path / "killed"))
    store = RunStore(tmp_path / "store.sqlite")
    with pytest.raises(E.SweepIncomplete, match=r"worker died 1 time\(s\); retries=0") as info:
        E.run_processes(CONFIGS, store, progress=False, workers=1, retries=0)  # one worker: the death is the first batch's
    work = E.batches(CONFIGS)
    first = tuple(c.key for c in work[E.longest_first(work)[0]])  # submitted first: the most work
    assert [f.keys for f in info.value.failures] == [first]
    assert store.keys() == {c.key for c in CONFIGS} - set(first)
    assert sorted(E.run("local", store.missing(CONFIGS), store, progress=False)) == sorted(first)
    assert_same_records(store, local_store)


PARAMS = """\
modulus: 11
width: 16
engine: reference
primary_tasks: [modular]
primary_fracs: [0.5, 0.6, 0.7]
primary_seeds: [1, 2]
primary_epochs: 80
variance_tasks: [modular]
variance_fracs: [0.5]
variance_seeds: [1]
variance_epochs: 80
"""


def _group_alive(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    import psutil

    out = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except (ProcessLookupError, psutil.Error):
            pass
    return out


@pytest.mark.parametrize("executor", ["processes", "dask"])
def test_sweep_killed_midway_resumes_with_every_run_stored_once(executor, cluster, tmp_path):
    from phaselib import params as P
    from phaselib.sweep import all_configs, study_groups

    # other run groups (long, probing, ...) are switched off by giving them no seeds
    others = [f.name for f in fields(P.StudyParams) if f.name.endswith("_seeds")
              and f.name not in ("primary_seeds", "variance_seeds")]
    (tmp_path / "p.yaml").write_text(PARAMS + "".join(f"{k}: []\n" for k in others))
    expected = {c.key for c in all_configs(study_groups(P.load(tmp_path / "p.yaml")))}
    assert len(expected) == 6
    out, db = tmp_path / "out", tmp_path / "out" / "runs" / "store.sqlite"
    cmd = [sys.executable, "-m", "phaselib.cli", "sweep", "--params", str(tmp_path / "p.yaml"), "--out", str(out),
           "--executor", executor, "--workers", "2"]
    if executor == "dask":  # the driver dies, the (loopback) cluster lives on, as on a real one
        cmd += ["--scheduler", cluster.scheduler_address]
    env = {k: v for k, v in os.environ.items() if k != E.KILL_ONCE_ENV} | {"CI": "true"}

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (db.exists() and len(RunStore(db)) >= 1):
            assert proc.poll() is None, "the sweep ended before it could be killed"
            assert time.monotonic() < deadline, "no run stored in time"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        before = RunStore(db).created()
        assert 1 <= len(before) < len(expected), "kill came too late to test resuming"
        deadline = time.monotonic() + 20  # no worker outlives its driver and trains on
        while _group_alive(proc.pid):
            assert time.monotonic() < deadline, f"orphaned workers {_group_alive(proc.pid)}"
            time.sleep(0.2)
        assert RunStore(db).created() == before
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    left = len(expected) - len(before)
    assert f"{len(before)} already stored, {left} to train, 0 read off their probed twins" in res.stdout
    assert f"stored {left} runs" in res.stdout  # no finished run retrained
    after = RunStore(db).created()
    assert set(after) == expected  # every run stored, and once: the key is the table's primary key
    assert {k: after[k] for k in before} == before
