"""The run store: finished runs in one SQLite file, keyed by the config hash.

One run is written in one transaction (its config, metadata and compressed table together),
so a killed process leaves either the whole run or nothing. WAL mode lets several writer
processes (a process pool, Dask workers on one host) share the file; ``INSERT OR IGNORE``
keeps the first copy, so every run is stored exactly once whoever finishes it.
"""
from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Iterable, Iterator

import pandas as pd

from .config import RunConfig
from .record import RunRecord, concat_tables, table_from_bytes, table_to_bytes

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    meta TEXT NOT NULL,
    label TEXT NOT NULL,
    table_blob BLOB NOT NULL,
    created REAL NOT NULL
);
"""


class RunStore:
    """A handle on one store file. Cheap to create; opens a connection per operation."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        con.execute("PRAGMA busy_timeout=60000")
        con.execute("PRAGMA synchronous=NORMAL")
        return con

    def __repr__(self) -> str:
        return f"RunStore({str(self.path)!r}, runs={len(self)})"

    def __len__(self) -> int:
        with closing(self._connect()) as con:
            return con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]

    def __contains__(self, key: str | RunConfig) -> bool:
        key = key.key if isinstance(key, RunConfig) else key
        with closing(self._connect()) as con:
            return con.execute("SELECT 1 FROM runs WHERE key = ?", (key,)).fetchone() is not None

    def keys(self) -> set[str]:
        with closing(self._connect()) as con:
            return {r[0] for r in con.execute("SELECT key FROM runs")}

    def missing(self, configs: Iterable[RunConfig]) -> list[RunConfig]:
        """The configs (deduplicated, in order) whose runs are not stored yet."""
        have = self.keys()
        seen: set[str] = set()
        out = []
        for c in configs:
            if c.key not in have and c.key not in seen:
                seen.add(c.key)
                out.append(c)
        return out

    def put(self, record: RunRecord) -> bool:
        """Store a finished run atomically; False if that key was already stored (kept as is)."""
        blob = table_to_bytes(record.table)
        cfg = json.dumps(record.config.hashed_dict(), sort_keys=True)
        meta = json.dumps(dict(record.meta), sort_keys=True, default=str)
        with closing(self._connect()) as con:
            con.execute("BEGIN IMMEDIATE")
            cur = con.execute(
                "INSERT OR IGNORE INTO runs (key, config, meta, label, table_blob, created) VALUES (?, ?, ?, ?, ?, ?)",
                (record.key, cfg, meta, record.config.label, blob, time.time()))
            con.execute("COMMIT")
            return cur.rowcount == 1

    def get(self, key: str | RunConfig) -> RunRecord:
        """The stored record of a run (KeyError if absent)."""
        cfg_obj = key if isinstance(key, RunConfig) else None
        key = key.key if isinstance(key, RunConfig) else key
        with closing(self._connect()) as con:
            row = con.execute("SELECT config, meta, table_blob FROM runs WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise KeyError(f"run {key} is not in the store {self.path}")
        cfg = cfg_obj or RunConfig.from_dict(json.loads(row[0]))
        return RunRecord(cfg, table_from_bytes(row[2]), json.loads(row[1]))

    def records(self, configs: Iterable[RunConfig]) -> Iterator[RunRecord]:
        for c in configs:
            yield self.get(c)

    def table(self, configs: Iterable[RunConfig]) -> pd.DataFrame:
        """The tidy tables of several runs, concatenated."""
        return concat_tables(r.table for r in self.records(configs))

    def created(self) -> dict[str, float]:
        """When each run was stored (to check that a resumed sweep retrained nothing)."""
        with closing(self._connect()) as con:
            return dict(con.execute("SELECT key, created FROM runs"))
