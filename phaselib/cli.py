"""Command line: ``phaselib sweep`` trains and tabulates; ``phaselib study`` runs the notebooks."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .config import ConfigError
from .executors import SweepIncomplete

DEFAULT_PARAMS = "params/paper.yaml"


def _load(params_file: str, out: str | None):
    from . import params as P
    p = P.load(params_file)
    if out:
        p = P.from_mapping({**p.to_dict(), "out_dir": out})
    return p


def cmd_sweep(args: argparse.Namespace) -> int:
    from .outputs import export_runs, store_path, write_summary
    from .store import RunStore
    from .sweep import all_configs, probe_twins, run_missing, settings_of, study_groups, summarise
    from .tables import table1, table2

    p = _load(args.params, args.out)
    groups = study_groups(p)
    configs = all_configs(groups)
    out = Path(p.out_dir)
    store = RunStore(store_path(out))
    t0 = time.perf_counter()
    todo = store.missing(configs)
    twins = probe_twins(todo, configs)
    print(f"phaselib sweep: {len(configs)} distinct runs ({sum(map(len, groups.values()))} table rows), "
          f"{len(configs) - len(todo)} already stored, {len(todo) - len(twins)} to train, "
          f"{len(twins)} read off their probed twins -> {out}", flush=True)
    trained = run_missing(configs, store, executor=args.executor, scheduler=args.scheduler, workers=args.workers)
    wall = time.perf_counter() - t0
    summary = summarise(store, groups, settings_of(p))
    export_runs(store, configs, out)
    write_summary(summary, out)
    print(f"stored {len(trained)} runs in {wall:.1f} s wall time")
    print("\nTable 1\n" + table1(summary).to_string(index=False))
    print("\nTable 2\n" + table2(summary).to_string(index=False))
    print(f"\nwrote {out}/summary.csv, summary.json, tables.md, runs/")
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from .study import run_study
    p = _load(args.params, args.out)
    return run_study(p, params_file=args.params, executor=args.executor, scheduler=args.scheduler,
                     workers=args.workers)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="phaselib", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    for name, fn, help_ in (("sweep", cmd_sweep, "train a parameter file's sweep and write its tables"),
                            ("study", cmd_study, "run every numbered notebook in order through papermill")):
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("--params", default=DEFAULT_PARAMS, help=f"YAML parameter file (default {DEFAULT_PARAMS})")
        sp.add_argument("--out", default=None, help="output folder (default: the file's out_dir)")
        sp.add_argument("--executor", default="local", choices=("local", "processes", "dask"),
                        help="where runs execute (default local)")
        sp.add_argument("--scheduler", default=None, help="dask scheduler address (default: a LocalCluster)")
        sp.add_argument("--workers", type=int, default=2, help="processes or LocalCluster workers (default 2)")
        sp.set_defaults(fn=fn)
    args = ap.parse_args(argv)
    try:
        return args.fn(args)
    except ConfigError as exc:
        print(f"phaselib {args.command}: invalid parameters: {exc}", file=sys.stderr)
        return 2
    except SweepIncomplete as exc:
        print(f"phaselib {args.command}: {exc}\nRun the same command again to retry just those runs.", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
