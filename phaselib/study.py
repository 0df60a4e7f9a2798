"""``phaselib study``: train the study's runs, then execute every numbered notebook in order.

The runs are trained first, in this process (per-run progress, any executor), into the run
store; the notebooks then read them from the store instead of retraining. Each notebook is
executed by papermill with the parameters it declares; the writeup is exported to HTML.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from .outputs import export_runs, store_path, write_summary
from .params import OUT_DIR_ENV, StudyParams
from .progress import quiet
from .store import RunStore
from .sweep import all_configs, probe_twins, run_missing, settings_of, study_groups, summarise

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
WRITEUP = "04_writeup.ipynb"


def notebooks(folder: Path = NOTEBOOK_DIR) -> list[Path]:
    """The numbered notebooks (``NN_name.ipynb``), in order."""
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))


def notebook_parameters(nb: Path, p: StudyParams) -> dict:
    """The study parameters a notebook declares in its ``parameters`` cell, at this study's values."""
    import papermill as pm
    declared = pm.inspect_notebook(str(nb))
    values = {k: v for k, v in p.to_dict().items() if k in declared}
    if "out_dir" in declared:
        values["out_dir"] = str(Path(p.out_dir).resolve())
    return values


def export_html(nb: Path, dest: Path) -> None:
    """HTML export of an executed notebook, inputs shown (the writeup reads like a paper)."""
    import nbformat
    from nbconvert import HTMLExporter
    body, _ = HTMLExporter().from_notebook_node(nbformat.read(nb, as_version=4))
    dest.write_text(body, encoding="utf-8")


def execute(nb: Path, out_nb: Path, parameters: dict) -> None:
    """Run one notebook with the study's parameters; the study's out_dir wins over
    ``$PHASELIB_NOTEBOOK_OUT`` (the kernel inherits this process's environment)."""
    import papermill as pm
    redirect = os.environ.pop(OUT_DIR_ENV, None)
    try:
        pm.execute_notebook(str(nb), str(out_nb), parameters=parameters, kernel_name="python3", cwd=str(nb.parent),
                            progress_bar=not quiet(), log_output=False, request_save_on_cell_execute=False)
    finally:
        if redirect is not None:
            os.environ[OUT_DIR_ENV] = redirect


def run_study(p: StudyParams, params_file: str = "", executor: str = "local", scheduler: str | None = None,
              workers: int = 2, folder: Path = NOTEBOOK_DIR) -> int:
    """Train, execute the notebooks, export; 0 on success, 1 naming the failing notebook and cell."""
    from papermill.exceptions import PapermillExecutionError

    t0 = time.perf_counter()
    out = Path(p.out_dir)
    (out / "notebooks").mkdir(parents=True, exist_ok=True)
    groups = study_groups(p)
    configs = all_configs(groups)
    store = RunStore(store_path(out))
    todo = store.missing(configs)
    twins = probe_twins(todo, configs)
    print(f"phaselib study: {params_file or 'parameters'} -> {out}: {len(configs)} distinct runs, "
          f"{len(configs) - len(todo)} already stored, {len(todo) - len(twins)} to train, "
          f"{len(twins)} read off their probed twins", flush=True)
    run_missing(configs, store, executor=executor, scheduler=scheduler, workers=workers)
    t_train = time.perf_counter() - t0
    summary = summarise(store, groups, settings_of(p))
    export_runs(store, configs, out)
    write_summary(summary, out)
    timings = {"train_s": t_train}
    nbs = notebooks(folder)
    for i, nb in enumerate(nbs, 1):
        t1 = time.perf_counter()
        print(f"[{i}/{len(nbs)}] {nb.name} ...", end=" ", flush=True)
        try:
            execute(nb, out / "notebooks" / nb.name, notebook_parameters(nb, p))
        except PapermillExecutionError as exc:
            print("FAILED", flush=True)
            print(f"phaselib study: notebook {nb.name} failed at cell {exc.exec_count} "
                  f"(index {exc.cell_index}): {exc.ename}: {exc.evalue}\n"
                  f"  executed copy with the traceback: {out / 'notebooks' / nb.name}", file=sys.stderr)
            return 1
        timings[nb.name] = time.perf_counter() - t1
        print(f"done in {timings[nb.name]:.1f} s", flush=True)
    if (out / "notebooks" / WRITEUP).exists():
        export_html(out / "notebooks" / WRITEUP, out / "writeup.html")
    timings["total_s"] = time.perf_counter() - t0
    (out / "timings.json").write_text(json.dumps(timings, indent=1))
    print(f"phaselib study: finished in {timings['total_s']:.1f} s wall time; writeup: {out / 'writeup.html'}")
    return 0
