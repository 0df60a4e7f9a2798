"""``results.json``: the study's computed findings in one machine-readable file."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd


def _clean(x):
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        return None if not np.isfinite(x) else float(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def write_results(out_dir: str | Path, params: dict, tables: dict[str, pd.DataFrame], extra: dict | None = None) -> Path:
    """Write ``out_dir/results.json`` from the study's parameters and tables (records orient)."""
    path = Path(out_dir) / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"params": params, **{k: v.to_dict(orient="records") for k, v in tables.items()}, **(extra or {})}
    path.write_text(json.dumps(_clean(body), indent=1, allow_nan=False))
    return path
