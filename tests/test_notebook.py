"""The notebooks' table helper: long tables are cut for display, never in the saved files."""
from __future__ import annotations

import pandas as pd
import pytest

from phaselib import notebook


def shown(monkeypatch) -> list[str]:
    out: list[str] = []
    monkeypatch.setattr(notebook, "display", lambda m: out.append(m.data))
    return out


def test_long_table_is_cut_for_display_but_saved_whole(tmp_path, monkeypatch):
    out = shown(monkeypatch)
    df = pd.DataFrame({"run": range(50), "lag": [float(i) for i in range(50)]})
    notebook.show(df, name="runs", out_dir=str(tmp_path), max_rows=10)
    body = out[0]
    rows = [ln for ln in body.splitlines() if ln.startswith("|")]
    assert len(rows) == 2 + 10  # header, rule, the first 10 rows
    assert [int(r.split("|")[1]) for r in rows[2:]] == list(range(10))
    assert "First 10 of 50 rows; all rows in `runs.csv`" in body
    assert len(pd.read_csv(tmp_path / "tables" / "runs.csv")) == 50
    assert len([ln for ln in (tmp_path / "tables" / "runs.md").read_text().splitlines() if ln.startswith("|")]) == 52


def test_short_table_is_shown_whole(monkeypatch):
    out = shown(monkeypatch)
    notebook.show(pd.DataFrame({"x": [1, 2, 3]}), max_rows=3)
    assert "First" not in out[0] and len([ln for ln in out[0].splitlines() if ln.startswith("|")]) == 5


def test_max_rows_must_be_positive():
    with pytest.raises(ValueError, match="max_rows"):
        notebook.show(pd.DataFrame({"x": [1]}), max_rows=0)
