"""One batch on the engine's worker threads against the same batch split across worker processes.

    python benchmarks/batch_workers.py --json results/bench/batch_workers.json

The question: would a process-based worker pool inside the batched engine beat its worker
threads? Both contenders train the same runs on the same cores, alternating, in one driver:

- ``threads``: ``train_batched`` on the whole batch in this process with ``--threads`` worker
  threads (how ``benchmarks/train_throughput.py`` runs it).
- ``processes``: the batch dealt longest-first (largest train split first, round-robin) into
  ``--threads`` sub-batches, each trained by ``train_batched`` on one thread in its own process
  (started by phaselib's fork server), all at once. This is the best a process pool could do:
  no per-step synchronisation at all, and each process steps its own optimiser, where the
  threaded engine's main thread steps every run while its workers wait.

Timing: as in train_throughput, from the end of epoch ``--warmup`` to the end of training.
For processes the interval runs from the earliest post-warm-up stamp of any process to the last
process's end (one monotonic clock for all processes), so a process that finishes early counts
as idle time, as an idle worker thread does. ``processes_over_threads`` < 1 means processes win.
The runs' gradient-norm series of the two contenders are compared too: a run's numbers must not
depend on which other runs share its batch (``max_abs_diff_grad_norm``, expected 0).

Workload: the sweep's largest batch of the paper's study (the 9 seed-variance runs), each
trained for ``--epochs`` epochs.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from phaselib.config import RunConfig  # noqa: E402
from phaselib.engine import train_batched  # noqa: E402
from phaselib.executors import _mp_context, batches  # noqa: E402
from phaselib.params import load  # noqa: E402
from phaselib.record import RunRecord  # noqa: E402
from phaselib.sweep import all_configs, study_groups  # noqa: E402
from train_throughput import Stamps, medians, slice_args, write_json  # noqa: E402


def deal(cfgs: Sequence[RunConfig], parts: int) -> list[list[RunConfig]]:
    """Runs dealt round-robin into ``parts`` sub-batches, largest train split first (as the engine's queue)."""
    order = sorted(cfgs, key=lambda c: -c.frac)
    return [order[i::parts] for i in range(parts) if order[i::parts]]


def _train_timed(cfgs: Sequence[RunConfig], warmup: int) -> tuple[float, float, list[RunRecord]]:
    """Train a (sub-)batch; returns the monotonic stamps after warm-up and at the end, and the records."""
    st = Stamps(warmup)  # train_batched runs on cfgs[0].threads torch threads
    recs = train_batched(cfgs, chunk=warmup, progress=st)
    return st.t_start, st.t_end, recs


def time_threads(cfgs: Sequence[RunConfig], warmup: int, threads: int) -> tuple[float, list[RunRecord]]:
    t0, t1, recs = _train_timed([c.replace(threads=threads) for c in cfgs], warmup)
    return t1 - t0, recs


def time_processes(pool, cfgs: Sequence[RunConfig], warmup: int, threads: int) -> tuple[float, list[RunRecord]]:
    parts = deal([c.replace(threads=1) for c in cfgs], threads)
    results = pool.starmap(_train_timed, [(p, warmup) for p in parts])
    seconds = max(r[1] for r in results) - min(r[0] for r in results)
    by_cfg = {rec.config: rec for r in results for rec in r[2]}
    return seconds, [by_cfg[c.replace(threads=1)] for c in cfgs]


def max_abs_diff(a: Sequence[RunRecord], b: Sequence[RunRecord]) -> float:
    return max(float(np.max(np.abs(x.series("grad_norm").to_numpy() - y.series("grad_norm").to_numpy())))
               for x, y in zip(a, b))


def main(argv: Sequence[str] | None = None) -> dict:
    args = slice_args(__doc__, 40, 5, 2, "worker threads, and worker processes (>= 2)", argv)
    if args.threads < 2:
        sys.exit("--threads must be >= 2 (one worker has nothing to compare)")
    groups_of = study_groups(load(args.params))
    study = all_configs({g: groups_of[g] for g in ("primary", "variance")})
    batch = max(batches(study), key=len)
    cfgs = [c.replace(epochs=args.epochs, engine="batched") for c in batch]
    run_epochs = len(cfgs) * (args.epochs - args.warmup)

    ctx = _mp_context()
    with ctx.Pool(args.threads) as pool:
        warm = [([c.replace(epochs=args.warmup + 1, threads=1)], args.warmup) for c in cfgs[:args.threads]]
        pool.starmap(_train_timed, warm)  # every process and path warmed before timing
        time_threads([c.replace(epochs=args.warmup + 1) for c in cfgs[:2]], args.warmup, args.threads)
        reps, diff = [], 0.0
        for i in range(args.repeats):
            order = ["threads", "processes"] if i % 2 == 0 else ["processes", "threads"]
            got = {}
            for name in order:
                got[name] = (time_threads(cfgs, args.warmup, args.threads) if name == "threads"
                             else time_processes(pool, cfgs, args.warmup, args.threads))
            diff = max(diff, max_abs_diff(got["threads"][1], got["processes"][1]))
            t_ms, p_ms = (got[k][0] / run_epochs * 1e3 for k in ("threads", "processes"))
            reps.append({"threads_ms_per_run_epoch": t_ms, "processes_ms_per_run_epoch": p_ms,
                         "processes_over_threads": p_ms / t_ms})
            print(f"repeat {i + 1}/{args.repeats}: threads {t_ms:.2f} ms/run-epoch, processes {p_ms:.2f} "
                  f"(processes/threads {p_ms / t_ms:.2f})", flush=True)
    med = medians(reps)
    result = {"workload": (f"the largest batch of {args.params.name} ({len(cfgs)} runs), {args.epochs} epochs each, "
                           f"the first {args.warmup} untimed, on {args.threads} worker threads / processes"),
              "runs": len(cfgs), "epochs_per_run": args.epochs, "warmup": args.warmup, "workers": args.threads,
              "repeats": args.repeats, **med,
              "processes_over_threads_range": [min(r["processes_over_threads"] for r in reps),
                                               max(r["processes_over_threads"] for r in reps)],
              "max_abs_diff_grad_norm": diff, "per_repeat": reps}
    print(f"\n{result['workload']}\nmedians of {args.repeats}: threads {med['threads_ms_per_run_epoch']:.2f} "
          f"ms/run-epoch, processes {med['processes_ms_per_run_epoch']:.2f}; processes/threads "
          f"{med['processes_over_threads']:.2f} (range {result['processes_over_threads_range'][0]:.2f}-"
          f"{result['processes_over_threads_range'][1]:.2f}); records differ by {diff:.1e}")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
