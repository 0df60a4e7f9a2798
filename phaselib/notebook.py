"""Small conveniences the notebooks call, so that they narrate rather than compute."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from IPython.display import Markdown, display

from .config import RunConfig
from .outputs import store_path
from .params import StudyParams
from .store import RunStore
from .tables import markdown
from .sweep import run_missing, study_groups


def show(df: pd.DataFrame, floatfmt: str = ".3g", name: str | None = None, out_dir: str | None = None,
         max_rows: int = 40) -> None:
    """Render a table as Markdown with stable rounding; optionally save it as CSV and Markdown.

    A table longer than ``max_rows`` shows its first ``max_rows`` rows and says how many more
    there are (and where the saved file holds them all): a 700-run table helps no reader.
    """
    if max_rows < 1:
        raise ValueError(f"max_rows: {max_rows!r} is invalid; allowed: an integer >= 1")
    md = markdown(df, floatfmt)
    saved = None
    if name and out_dir:
        d = Path(out_dir) / "tables"
        d.mkdir(parents=True, exist_ok=True)
        df.to_csv(d / f"{name}.csv", index=False)
        (d / f"{name}.md").write_text(md + "\n")
        saved = d / f"{name}.csv"
    if len(df) > max_rows:
        where = f"; all rows in `{saved.name}`" if saved is not None else ""
        md = markdown(df.head(max_rows), floatfmt) + f"\n\n*First {max_rows} of {len(df)} rows{where}.*"
    display(Markdown(md))


def say(text: str) -> None:
    """Display computed prose (every number in it comes from this run)."""
    display(Markdown(text))


def open_store(p: StudyParams) -> RunStore:
    return RunStore(store_path(p.out_dir))


def ensure(p: StudyParams, group: str, progress: bool = True) -> tuple[RunStore, list[RunConfig]]:
    """The store and the configs of one sweep group, training any run not yet stored."""
    store = open_store(p)
    configs = study_groups(p)[group]
    run_missing(configs, store, progress=progress)
    return store, configs
