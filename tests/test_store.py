import os
import signal
import sqlite3
import subprocess
import sys
import time

import pandas as pd
import pytest

from phaselib.config import RunConfig
from phaselib.outputs import store_path
from phaselib.record import table_from_bytes, table_to_bytes
from phaselib.store import RunStore
from phaselib.train import train_reference


def test_table_bytes_roundtrip(tiny):
    rec = train_reference(tiny)
    back = table_from_bytes(table_to_bytes(rec.table))
    pd.testing.assert_frame_equal(back, rec.table, check_categorical=False)


def test_put_get_exactly_once(tmp_path, tiny):
    store = RunStore(tmp_path / "s.sqlite")
    rec = train_reference(tiny)
    assert tiny not in store and store.missing([tiny, tiny]) == [tiny]
    assert store.put(rec) is True
    assert store.put(rec) is False and len(store) == 1
    got = store.get(tiny)
    assert got.config == tiny and got.meta["config_hash"] == tiny.key
    assert (got.table["value"].to_numpy() == rec.table["value"].to_numpy()).all()
    assert store.missing([tiny]) == []
    with pytest.raises(KeyError):
        store.get(tiny.replace(seed=99))


def test_store_uses_wal(tmp_path):
    RunStore(tmp_path / "s.sqlite")
    con = sqlite3.connect(tmp_path / "s.sqlite")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


SWEEP = """
modulus: 11
width: 16
engine: reference
primary_tasks: [modular]
primary_fracs: [0.5, 0.6, 0.7]
primary_seeds: [1, 2]
primary_epochs: 200
variance_fracs: [0.5]
variance_seeds: [1]
variance_epochs: 200
probe_fracs: []
"""


def sweep(params, out, **kw):
    return subprocess.Popen([sys.executable, "-m", "phaselib.cli", "sweep", "--params", str(params), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PHASELIB_QUIET": "1"}, **kw)


def test_killed_sweep_resumes_without_retraining(tmp_path):
    params = tmp_path / "p.yaml"
    params.write_text(SWEEP)
    out = tmp_path / "killed"
    proc = sweep(params, out)
    path = store_path(out)
    deadline = time.time() + 240
    while time.time() < deadline:
        if path.exists() and len(RunStore(path)) >= 2:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = RunStore(path)
    before = store.created()
    assert 2 <= len(before) < 6, "the kill must land mid-sweep"
    assert sweep(params, out).wait(timeout=300) == 0
    after = store.created()
    assert len(after) == 6
    assert all(after[k] == t for k, t in before.items()), "a finished run was retrained"
    # the same results as an uninterrupted sweep
    clean = tmp_path / "clean"
    assert sweep(params, clean).wait(timeout=300) == 0
    a = pd.read_csv(out / "summary.csv").drop(columns=["wall_time_s"])
    b = pd.read_csv(clean / "summary.csv").drop(columns=["wall_time_s"])
    pd.testing.assert_frame_equal(a, b)
    for cfg_key in after:
        assert RunStore(path).get(cfg_key).table.equals(RunStore(store_path(clean)).get(cfg_key).table)
