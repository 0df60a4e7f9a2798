"""Writing a sweep's outputs: per-run exports, ``summary.csv``/``.json`` and ``tables.md``."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .config import RunConfig
from .store import RunStore
from .tables import tables_markdown

SUMMARY_COLUMNS = ["task", "operation", "modulus", "frac", "seed", "epochs", "gnorm_peak_epoch",
                   "metric_transition_epoch", "lag", "generalised", "final_train_metric", "final_test_metric",
                   "pearson_r", "xcorr_lag"]


def store_path(out_dir: str | Path) -> Path:
    """Where a study keeps its run store."""
    return Path(out_dir) / "runs" / "store.sqlite"


def export_runs(store: RunStore, configs: list[RunConfig], out_dir: Path) -> None:
    """``runs/<key>.csv.gz`` (tidy table) and ``runs/<key>.json`` (config and metadata) per run."""
    d = out_dir / "runs"
    d.mkdir(parents=True, exist_ok=True)
    for c in configs:
        csv, meta = d / f"{c.key}.csv.gz", d / f"{c.key}.json"
        if csv.exists() and meta.exists():
            continue
        rec = store.get(c)
        tmp = csv.with_suffix(".tmp.gz")
        rec.table.to_csv(tmp, index=False, compression={"method": "gzip", "compresslevel": 1})  # 5x faster than 9
        tmp.replace(csv)
        meta.write_text(json.dumps({"label": c.label, "config": c.hashed_dict(), "meta": dict(rec.meta)},
                                   indent=1, default=str))


def write_summary(summary: pd.DataFrame, out_dir: Path) -> None:
    """``summary.csv``, ``summary.json`` and ``tables.md``; the required columns come first."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cols = ["group", "run"] + SUMMARY_COLUMNS + [c for c in summary.columns if c not in SUMMARY_COLUMNS + ["group", "run"]]
    summary = summary[cols]
    summary.to_csv(out_dir / "summary.csv", index=False)
    (out_dir / "summary.json").write_text(summary.to_json(orient="records", indent=1))
    (out_dir / "tables.md").write_text(tables_markdown(summary))
