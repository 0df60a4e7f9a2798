"""A plain run read off its probed twin (sweep.probe_twins / from_twin / run_missing)."""
import pandas as pd
import pytest

from phaselib import executors, sweep
from phaselib.config import RunConfig
from phaselib.executors import SweepIncomplete, train_batch
from phaselib.store import RunStore

PROBES = {"hessian_every": 10, "noise_every": 10, "cka_every": 5, "cheap_signals": 1}


def _regression() -> RunConfig:
    return RunConfig(task="regression", frac=0.5, seed=2, epochs=30, width=16)


@pytest.mark.parametrize("engine", ["reference", "batched", "batched on torch ops"])
@pytest.mark.parametrize("make", ["tiny", "regression"])
def test_the_probed_twin_gives_the_plain_runs_record_bit_for_bit(make, engine, request, monkeypatch):
    """Trained on its own, the plain run has exactly the base signals its probed twin recorded
    (the reference loop hands probers the live model, the batched engine a copy)."""
    if engine == "batched on torch ops":
        monkeypatch.setenv("PHASELIB_KERNELS", "torch")
    plain = (request.getfixturevalue("tiny") if make == "tiny" else _regression()).replace(engine=engine.split()[0])
    twin = plain.replace(probes=PROBES)
    [rec] = train_batch([plain])
    [twin_rec] = train_batch([twin])
    assert set(twin_rec.table["signal"]) > set(rec.table["signal"])  # the twin has probe rows too
    derived = sweep.from_twin(twin_rec, plain)
    pd.testing.assert_frame_equal(derived.table, rec.table, check_exact=True)
    assert derived.key == plain.key and derived.meta["derived_from"] == twin.key
    assert derived.meta["config_hash"] == plain.key and derived.meta["wall_time_s"] == 0.0


def test_probe_twins_pairs_only_configs_that_differ_in_probes(tiny):
    twin = tiny.replace(probes=PROBES)
    other = tiny.replace(seed=4)
    plan = [tiny, twin, other, other.replace(epochs=40, probes=PROBES)]
    assert sweep.probe_twins(plan, plan) == {tiny.key: twin}
    assert sweep.probe_twins([tiny], [tiny, other]) == {}


def _counting_run(monkeypatch, fail: bool = False) -> list:
    """executors.run that records which configs it was given (and can end with a failed batch)."""
    given = []
    real = executors.run

    def run(executor, todo, store, **kw):
        given.extend(todo)
        keys = real(executor, todo, store, **kw)
        if fail:
            raise SweepIncomplete([executors.BatchFailure(("x",), RuntimeError("boom"))], keys)
        return keys
    monkeypatch.setattr(executors, "run", run)
    return given


def test_run_missing_trains_the_twin_only_and_stores_both(tiny, tmp_path, monkeypatch):
    twin, other = tiny.replace(probes=PROBES), tiny.replace(seed=4)
    store = RunStore(tmp_path / "runs.sqlite")
    given = _counting_run(monkeypatch)
    keys = sweep.run_missing([tiny, twin, other], store, progress=False)
    assert {c.key for c in given} == {twin.key, other.key}
    assert set(keys) == {tiny.key, twin.key, other.key} == store.keys()
    [direct] = train_batch([tiny])
    pd.testing.assert_frame_equal(store.get(tiny).table, direct.table, check_exact=True)
    assert store.get(tiny).meta["derived_from"] == twin.key
    assert sweep.run_missing([tiny, twin, other], store, progress=False) == []  # resumed: nothing to do


def test_a_stored_twin_serves_a_later_sweep_and_a_failed_batch_elsewhere(tiny, tmp_path, monkeypatch):
    twin = tiny.replace(probes=PROBES)
    store = RunStore(tmp_path / "runs.sqlite")
    store.put(train_batch([twin])[0])
    given = _counting_run(monkeypatch)
    assert sweep.run_missing([tiny, twin], store, progress=False) == [tiny.key] and given == []
    store2 = RunStore(tmp_path / "other.sqlite")
    _counting_run(monkeypatch, fail=True)
    with pytest.raises(SweepIncomplete):
        sweep.run_missing([tiny, twin, tiny.replace(seed=9)], store2, progress=False)
    assert tiny.key in store2 and store2.get(tiny).meta["derived_from"] == twin.key


def test_a_plain_run_is_trained_when_its_twin_fails(tiny, tmp_path, monkeypatch):
    """The twin's batch fails (a probe-only error, say): the plain run is trained after all, the
    failure is still reported, and the next sweep retries only the twin."""
    twin = tiny.replace(probes=PROBES)
    store = RunStore(tmp_path / "runs.sqlite")
    given: list = []
    real = executors.run

    def run(executor, todo, store, **kw):
        given.append([c.key for c in todo])
        ok = [c for c in todo if c.key != twin.key]
        keys = real(executor, ok, store, **kw) if ok else []
        if len(ok) < len(todo):
            raise SweepIncomplete([executors.BatchFailure((twin.key,), RuntimeError("probe failed"))], keys)
        return keys
    monkeypatch.setattr(executors, "run", run)
    with pytest.raises(SweepIncomplete, match="probe failed") as err:
        sweep.run_missing([tiny, twin], store, progress=False)
    assert given == [[twin.key], [tiny.key]] and err.value.trained == [tiny.key]
    assert tiny.key in store and "derived_from" not in store.get(tiny).meta and twin.key not in store


def test_a_twin_on_the_torch_path_does_not_serve(tiny, tmp_path, monkeypatch):
    """There a run's norms may depend on its batch mates, so the plain run is trained itself."""
    monkeypatch.setenv("PHASELIB_KERNELS", "torch")
    plain = tiny.replace(engine="batched")
    store = RunStore(tmp_path / "runs.sqlite")
    given = _counting_run(monkeypatch)
    assert set(sweep.run_missing([plain, plain.replace(probes=PROBES)], store, progress=False)) == store.keys()
    assert [c.key for c in given] == [plain.replace(probes=PROBES).key, plain.key]
    assert "derived_from" not in store.get(plain).meta
