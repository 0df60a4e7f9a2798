"""The run record: one tidy long table (run, epoch, signal, layer, value, stderr) plus metadata.

Every notebook, plot, detector and the store read this one format. ``layer`` is ``"all"``
for whole-model values and a layer name (``fc1``, ``fc2``) for per-layer ones; ``stderr``
is the value's standard error where an estimator has one, NaN otherwise.
"""
from __future__ import annotations

import io
import json
import platform
import sys
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from .config import RunConfig

COLUMNS: tuple[str, ...] = ("run", "epoch", "signal", "layer", "value", "stderr")


@dataclass(frozen=True)
class RunRecord:
    """A finished run: its config, its tidy signal table and its metadata."""

    config: RunConfig
    table: pd.DataFrame
    meta: Mapping = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.config.key

    def series(self, signal: str, layer: str = "all") -> pd.Series:
        """One signal as a float Series indexed by epoch (empty if never recorded)."""
        t = self.table
        sel = t[(t["signal"] == signal) & (t["layer"] == layer)]
        return pd.Series(sel["value"].to_numpy(dtype=float), index=sel["epoch"].to_numpy(), name=signal)

    def signals(self) -> list[tuple[str, str]]:
        """The (signal, layer) pairs this record holds."""
        pairs = self.table[["signal", "layer"]].drop_duplicates()
        return [tuple(r) for r in pairs.itertuples(index=False)]

    def wide(self, layer: str = "all") -> pd.DataFrame:
        """Epoch x signal view of one layer's values (for quick looks, not storage)."""
        t = self.table[self.table["layer"] == layer]
        return t.pivot_table(index="epoch", columns="signal", values="value", observed=True)


def tidy(run: str, epochs: np.ndarray, columns: Mapping[tuple[str, str], np.ndarray],
         stderr: Mapping[tuple[str, str], np.ndarray] | None = None) -> pd.DataFrame:
    """Long table from per-(signal, layer) value arrays aligned with ``epochs``."""
    stderr = stderr or {}
    parts = []
    epochs = np.asarray(epochs)
    for (signal, layer), values in columns.items():
        values = np.asarray(values, dtype=float)
        se = np.asarray(stderr.get((signal, layer), np.full(len(values), np.nan)), dtype=float)
        parts.append(pd.DataFrame({"run": run, "epoch": epochs[: len(values)], "signal": signal,
                                   "layer": layer, "value": values, "stderr": se}))
    return concat_tables(parts)


def rows_table(run: str, rows: Iterable[Mapping]) -> pd.DataFrame:
    """Long table from row dicts with keys epoch, signal, layer, value and optional stderr."""
    df = pd.DataFrame(list(rows), columns=["epoch", "signal", "layer", "value", "stderr"])
    df.insert(0, "run", run)
    return concat_tables([df])


def concat_tables(parts: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate tidy tables and normalise dtypes (categorical names, float values)."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=float if c in ("value", "stderr") else object) for c in COLUMNS})
    df = pd.concat(parts, ignore_index=True)[list(COLUMNS)]
    df["epoch"] = df["epoch"].astype(np.int64)
    df["value"] = df["value"].astype(float)
    df["stderr"] = df["stderr"].astype(float)
    for c in ("run", "signal", "layer"):
        df[c] = df[c].astype(str).astype("category")
    return df


def environment() -> dict:
    """Versions and platform, for the record's metadata."""
    import scipy
    import torch

    from . import __version__
    return {"python": sys.version.split()[0], "platform": platform.platform(), "machine": platform.machine(),
            "torch": torch.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
            "pandas": pd.__version__, "phaselib": __version__}


def table_to_bytes(table: pd.DataFrame) -> bytes:
    """Compact, lossless serialisation of a tidy table (npz of coded columns)."""
    buf = io.BytesIO()
    sig = table["signal"].astype("category")
    lay = table["layer"].astype("category")
    np.savez_compressed(
        buf, epoch=table["epoch"].to_numpy(np.int64), signal=sig.cat.codes.to_numpy(np.int16),
        layer=lay.cat.codes.to_numpy(np.int16), value=table["value"].to_numpy(np.float64),
        stderr=table["stderr"].to_numpy(np.float64),
        names=np.frombuffer(json.dumps({"signal": list(map(str, sig.cat.categories)),
                                        "layer": list(map(str, lay.cat.categories)),
                                        "run": str(table["run"].iloc[0]) if len(table) else ""}).encode(), dtype=np.uint8),
    )
    return buf.getvalue()


def table_from_bytes(blob: bytes) -> pd.DataFrame:
    """Inverse of :func:`table_to_bytes`."""
    z = np.load(io.BytesIO(blob))
    names = json.loads(z["names"].tobytes().decode())
    df = pd.DataFrame({
        "run": names["run"], "epoch": z["epoch"],
        "signal": pd.Categorical.from_codes(z["signal"], names["signal"]),
        "layer": pd.Categorical.from_codes(z["layer"], names["layer"]),
        "value": z["value"], "stderr": z["stderr"],
    })
    df["run"] = df["run"].astype("category")
    return df[list(COLUMNS)]
