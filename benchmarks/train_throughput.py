"""Training throughput: the reference loop against the batched engine, side by side, in one process.

    python benchmarks/train_throughput.py --json results/bench_train.json

Workload: a fixed-epoch slice of the paper's 15-run study (params/paper.yaml): every run of the
study, grouped into the batches the sweep forms for it (3 primary modular runs, 3 regression runs,
9 seed-variance runs), each trained for the first ``--epochs`` epochs instead of 3000/2000. The
per-epoch work does not change over training (every operation is dense), so the slice has the
study's mix of runs at a fraction of its time.

Timing: the steady-state loop. Progress hooks timestamp the end of epoch ``--warmup`` and the end
of the last epoch; setup (datasets, models) and record assembly fall outside. ``--repeats``
repetitions rotate the order of the contenders (reference, batched, and batched on torch ops
when the kernels run); each reports its own ratios, and the JSON summarises them as described
below (the machine may be shared, so absolute times are noisy, ratios less so).

FLOPs counted (useful arithmetic of the model; a multiply-add is 2, an add 1; elementwise work --
bias, ReLU, softmax, loss, optimiser -- is not counted). Per run-epoch, with N rows in the table,
n train rows, width H, P outputs:

- modular: output layer forward over the table 2*N*H*P, backward over the train rows (dW2 and
  dh) 4*n*H*P; hidden layer: the two-column gather-sum N*H, its scatter-add gradient 2*n*H.
  At p = 97, 70%: 0.117 + 0.164 + 0.0006 + 0.0008 = 0.282 GFLOP.
- regression (1 input, 1 output): forward 2*N*H (first layer) + 2*N*H (output layer); backward
  2*n*H (dW2) + 2*n*H (dh) + 2*n*H (dW1).

``achieved_gflops`` = counted FLOPs of the batched engine's timed epochs / their time.
``sgemm_gflops`` = float32 torch.mm throughput at the output layer's forward shape of one run
((p*p, H) @ (H, p) = (9409, 64) @ (64, 97)) on the same number of cores, measured in each
repetition in this process over half a second of calls, the better of two ways of using the
cores: one call at a time on all torch threads (``sgemm_intra_op_gflops``), or one
single-threaded stream of calls per core (``sgemm_streams_gflops``, how the engine's workers
run).
``roofline_fraction`` = achieved_gflops / sgemm_gflops. A 2048^3 sgemm is measured alongside
(``sgemm_square_gflops``) for context.

The cores' own ceiling, for context: ``fma_peak_gflops`` is their peak float32 multiply-add rate
(fma_peak.py: all cores at once, best of three; the best repeat's in the summary), which no
matmul passes. ``peak_fraction`` = achieved_gflops / fma_peak_gflops, and
``speedup_at_fma_peak`` = reference ms per run-epoch / (counted FLOPs per run-epoch at that rate):
the speedup of an engine whose every counted FLOP ran at the peak and whose softmax, gather,
scatter and optimiser cost nothing (= speedup x fma_peak_gflops / achieved_gflops; in the summary,
of the medians and the best peak). A target speedup S needs peak_fraction >= S /
speedup_at_fma_peak over the whole step.

Summary across repeats: times, speedups and ``achieved_gflops`` are medians; ``sgemm_gflops`` (and
the square one) is the *best* repeat's, and the summary ``roofline_fraction`` = median achieved /
best sgemm. sgemm is timed after the engines, so on a shared machine one of its measurements can
fall in a slow spell the engines did not see (compare ``per_repeat[*].sgemm_gflops``), and a
per-repeat fraction can then read far too high; against the machine's best sustained sgemm of the
run it cannot. Each repeat's own figures stay in ``per_repeat``.

``per_batch`` breaks the slice down by the sweep's batches (task, runs, both engines' ms per
run-epoch, speedup, achieved GFLOP/s; medians over repeats): the study's ratio is a mix of a
small modular batch (3 runs on 2 workers: with the C kernels, six row segments shared by the
workers, see ``phaselib.engine._Modular``), the regression control (tiny tensors,
overhead-bound) and the 9-run batch, which comes closest to the GEMM floor.

The batched engine runs with the fused C kernels of ``phaselib/kernels.c`` when they build
(``kernels`` in the JSON says which path ran). When they do, the same engine on plain torch
operations (``PHASELIB_KERNELS=torch``) is timed in the same repetitions as a third contender:
``batched_torch_ops_ms_per_run_epoch`` and ``kernel_speedup`` (= its time / the native time).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fma_peak import fma_peak_gflops  # noqa: E402
from phaselib import kernels  # noqa: E402
from phaselib.config import RunConfig  # noqa: E402
from phaselib.engine import train_batched  # noqa: E402
from phaselib.executors import batches  # noqa: E402
from phaselib.params import load  # noqa: E402
from phaselib.sweep import all_configs, study_groups  # noqa: E402
from phaselib.train import make_dataset, recorded_epochs, train_reference  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run_epoch_flops(cfg: RunConfig, record: bool = True) -> float:
    """Counted FLOPs of one epoch of one run (see the module docstring for the formula)."""
    d = make_dataset(cfg)
    N, n, H, P = d.n_total, len(d.train_idx), cfg.width, d.out_dim
    rows = N if record else n
    if cfg.task == "regression":
        return 2 * rows * H + 2 * rows * H * P + 6 * n * H
    return 2 * rows * H * P + 4 * n * H * P + rows * H + 2 * n * H


def study_flops(cfg: RunConfig, first: int, last: int) -> float:
    """Counted FLOPs of epochs ``first..last-1`` of a run (recorded epochs do the full-table forward)."""
    rec = set(recorded_epochs(cfg).tolist())
    full, part = run_epoch_flops(cfg, True), run_epoch_flops(cfg, False)
    return float(sum(full if e in rec else part for e in range(first, last)))


class Stamps:
    """A progress hook that timestamps when the loop passes ``start`` epochs and when it ends."""

    def __init__(self, start: int) -> None:
        self.start, self.done, self.t_start, self.t_end = start, 0, None, None

    def __call__(self, k: int) -> None:
        self.done += k
        now = time.perf_counter()
        if self.t_start is None and self.done >= self.start:
            self.t_start, self.start = now, self.done
        self.t_end = now

    @property
    def seconds(self) -> float:
        return self.t_end - self.t_start


def time_reference(cfgs: Sequence[RunConfig], warmup: int) -> dict:
    """The reference loop run by run; ``run_loop_s``/``run_run_epochs``: each run's timed seconds
    and timed epochs, in order."""
    t0 = time.perf_counter()
    recs, run_loop_s, run_epochs = [], [], []
    for c in cfgs:
        st = Stamps(warmup)
        recs.append(train_reference(c, progress=st))
        run_loop_s.append(st.seconds)
        run_epochs.append(c.epochs - st.start)
    return {"loop_s": sum(run_loop_s), "run_epochs": sum(run_epochs), "wall_s": time.perf_counter() - t0,
            "records": recs, "run_loop_s": run_loop_s, "run_run_epochs": run_epochs}


def time_batched(groups: Sequence[Sequence[RunConfig]], warmup: int) -> dict:
    """The batched engine batch by batch; ``batch_loop_s``/``batch_run_epochs``/``batch_flops``:
    each batch's timed seconds, timed run-epochs and counted FLOPs, in order."""
    t0 = time.perf_counter()
    recs, batch_loop_s, batch_run_epochs, batch_flops = [], [], [], []
    for g in groups:
        st = Stamps(warmup)
        recs.extend(train_batched(g, chunk=warmup, progress=st))
        batch_loop_s.append(st.seconds)
        batch_run_epochs.append(len(g) * (g[0].epochs - st.start))
        batch_flops.append(sum(study_flops(c, st.start, c.epochs) for c in g))
    return {"loop_s": sum(batch_loop_s), "run_epochs": sum(batch_run_epochs), "flops": sum(batch_flops),
            "wall_s": time.perf_counter() - t0, "records": recs, "batch_loop_s": batch_loop_s,
            "batch_run_epochs": batch_run_epochs, "batch_flops": batch_flops}


def per_batch(groups: Sequence[Sequence[RunConfig]], ref: dict, bat: dict) -> list[dict]:
    """Each batch's own figures: where the study's ratio comes from (batch size and task matter).
    ``ref`` holds the reference's runs in the batches' order."""
    out, i = [], 0
    for g, b_s, b_epochs, b_flops in zip(groups, bat["batch_loop_s"], bat["batch_run_epochs"], bat["batch_flops"]):
        ref_ms = sum(ref["run_loop_s"][i:i + len(g)]) / sum(ref["run_run_epochs"][i:i + len(g)]) * 1e3
        bat_ms = b_s / b_epochs * 1e3
        i += len(g)
        out.append({"task": g[0].task, "runs": len(g), "reference_ms_per_run_epoch": ref_ms,
                    "batched_ms_per_run_epoch": bat_ms, "speedup": ref_ms / bat_ms,
                    "achieved_gflops": b_flops / b_s / 1e9})
    return out


@contextmanager
def kernel_mode(mode: str):
    """Run the batched engine with ``PHASELIB_KERNELS=mode`` inside the block."""
    before = os.environ.get("PHASELIB_KERNELS")
    os.environ["PHASELIB_KERNELS"] = mode
    try:
        yield
    finally:
        if before is None:
            del os.environ["PHASELIB_KERNELS"]
        else:
            os.environ["PHASELIB_KERNELS"] = before


def time_torch_ops(groups: Sequence[Sequence[RunConfig]], warmup: int) -> dict:
    """The batched engine on plain torch operations (the fused kernels switched off)."""
    with kernel_mode("torch"):
        return time_batched(groups, warmup)


def ms_per_pass(make_calls: Callable[[], Sequence[Callable[[], object]]], seconds: float) -> float:
    """Mean ms of one pass over the calls ``make_calls()`` builds (its own operands), looped for
    ``seconds`` after a warm-up pass. Total (not best-pass) time: on a shared machine every
    measurement sees the same interference."""
    calls = make_calls()
    for c in calls:
        c()
    k, t0 = 0, time.perf_counter()
    while (spent := time.perf_counter() - t0) < seconds:
        for c in calls:
            c()
        k += 1
    return spent / k * 1e3


def intra_and_streams(make_calls: Callable[[], Sequence[Callable[[], object]]], threads: int,
                      seconds: float) -> tuple[float, list[float]]:
    """ms per pass on all ``threads`` torch threads, and per pass of each of ``threads`` concurrent
    single-threaded streams (how the batched engine's workers use the cores), each with its own operands."""
    intra = ms_per_pass(make_calls, seconds)
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(threads) as pool:
            streams = list(pool.map(lambda _: ms_per_pass(make_calls, seconds), range(threads)))
    finally:
        torch.set_num_threads(threads)
    return intra, streams


def _mm(m: int, k: int, n: int) -> list[Callable[[], object]]:
    a, b, out = torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)
    return [lambda: torch.mm(a, b, out=out)]


def sgemm_gflops(m: int, k: int, n: int, threads: int, seconds: float = 0.5) -> dict:
    """Float32 torch.mm throughput (GFLOP/s) of (m, k) @ (k, n) with ``threads`` cores, two ways.

    ``intra_op``: one stream of calls on ``threads`` torch threads; ``streams``: ``threads``
    concurrent single-threaded streams, summed; ``best``: the larger, the roofline's denominator.
    """
    flop = 2.0 * m * k * n
    intra_ms, streams_ms = intra_and_streams(lambda: _mm(m, k, n), threads, seconds)
    intra, streams = flop / intra_ms / 1e6, sum(flop / ms / 1e6 for ms in streams_ms)
    return {"intra_op": intra, "streams": streams, "best": max(intra, streams)}


def agreement(ref: Sequence, bat: Sequence) -> float:
    """Largest relative difference of the combined gradient norm between the engines (runs in the same order)."""
    worst = 0.0
    for r, b in zip(ref, bat):
        x, y = b.series("grad_norm").to_numpy(), r.series("grad_norm").to_numpy()
        worst = max(worst, float(np.max(np.abs(x - y) / np.abs(y))))
    return worst


def medians(reps: Sequence[dict], keys: Sequence[str] | None = None) -> dict:
    """Median over repeats of each of ``keys`` (default: every key of the first repeat)."""
    return {k: statistics.median(r[k] for r in reps) for k in (reps[0] if keys is None else keys)}


def write_json(path: Path | None, result: dict) -> None:
    """Write a benchmark's result as indented JSON (nothing without a path)."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")


def slice_args(doc: str, epochs: int, repeats: int, threads: int, threads_help: str,
               argv: Sequence[str] | None) -> argparse.Namespace:
    """The options of a benchmark on a fixed-epoch slice of a study, validated before anything runs."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--params", type=Path, default=ROOT / "params" / "paper.yaml")
    ap.add_argument("--epochs", type=int, default=epochs, help="epochs of each run in the slice")
    ap.add_argument("--warmup", type=int, default=5, help="epochs of each run left out of the timing")
    ap.add_argument("--repeats", type=int, default=repeats)
    ap.add_argument("--threads", type=int, default=threads, help=threads_help)
    args = ap.parse_args(argv)
    if not 0 < args.warmup < args.epochs:
        ap.error("--warmup must be in (0, --epochs)")
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    if args.threads < 0:
        ap.error("--threads must be >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = slice_args(__doc__, 30, 3, 0, "torch threads (0 = torch's default)", argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    load_before = os.getloadavg()

    groups_of = study_groups(load(args.params))
    study = all_configs({g: groups_of[g] for g in ("primary", "variance")})  # the paper's 15 runs
    groups = [[c.replace(epochs=args.epochs, engine="batched", threads=threads) for c in g] for g in batches(study)]
    ref_cfgs = [c.replace(engine="reference") for g in groups for c in g]
    study_run_epochs = sum(c.epochs for c in study)

    # warm every path (allocator, kernels' first calls; builds the native kernels if needed)
    native = kernels.use_native(torch.device(groups[0][0].device))
    train_reference(ref_cfgs[0].replace(epochs=3))
    train_batched([c.replace(epochs=3) for c in groups[-1]])
    if native:
        with kernel_mode("torch"):
            train_batched([c.replace(epochs=3) for c in groups[-1]])

    reps = []
    for i in range(args.repeats):
        runs: dict[str, dict] = {}
        order: list[tuple[str, Callable[[], dict]]] = [("reference", lambda: time_reference(ref_cfgs, args.warmup)),
                                                       ("batched", lambda: time_batched(groups, args.warmup))]
        if native:
            order.append(("torch_ops", lambda: time_torch_ops(groups, args.warmup)))
        order = order[i % len(order):] + order[:i % len(order)]  # each contender goes first in turn
        for name, fn in order:
            runs[name] = fn()
        sgemm = sgemm_gflops(9409, 64, 97, threads)
        square = sgemm_gflops(2048, 2048, 2048, threads)
        fma = fma_peak_gflops(threads, 0.3)["all_cores"]
        sg, sq = sgemm["best"], square["best"]
        ref, bat = runs["reference"], runs["batched"]
        ref_ms = ref["loop_s"] / ref["run_epochs"] * 1e3
        bat_ms = bat["loop_s"] / bat["run_epochs"] * 1e3
        achieved = bat["flops"] / bat["loop_s"] / 1e9
        reps.append({"reference_ms_per_run_epoch": ref_ms, "batched_ms_per_run_epoch": bat_ms,
                     "speedup": ref_ms / bat_ms, "achieved_gflops": achieved, "sgemm_gflops": sg,
                     "roofline_fraction": achieved / sg, "sgemm_square_gflops": sq,
                     "roofline_fraction_square": achieved / sq, "fma_peak_gflops": fma,
                     "peak_fraction": achieved / fma, "speedup_at_fma_peak": ref_ms / bat_ms * fma / achieved,
                     "sgemm_intra_op_gflops": sgemm["intra_op"],
                     "sgemm_streams_gflops": sgemm["streams"],
                     "reference_wall_s": ref["wall_s"], "batched_wall_s": bat["wall_s"],
                     "max_rel_diff_grad_norm": agreement(ref["records"], bat["records"]),
                     "per_batch": per_batch(groups, ref, bat)})
        ops = ""
        if native:
            ops_ms = runs["torch_ops"]["loop_s"] / runs["torch_ops"]["run_epochs"] * 1e3
            reps[-1].update(batched_torch_ops_ms_per_run_epoch=ops_ms, kernel_speedup=ops_ms / bat_ms)
            ops = f"; on torch ops {ops_ms:.2f} (kernels x{ops_ms / bat_ms:.2f})"
        print(f"repeat {i + 1}/{args.repeats}: reference {ref_ms:.2f} ms/run-epoch, batched {bat_ms:.2f} "
              f"(x{ref_ms / bat_ms:.1f}){ops}; {achieved:.1f} GFLOP/s = {achieved / sg:.2f} of sgemm {sg:.1f}",
              flush=True)

    med = medians(reps, [k for k in reps[0] if k != "per_batch"])
    med_batches = [{k: (v if isinstance(v, (str, int)) else statistics.median(r["per_batch"][j][k] for r in reps))
                    for k, v in b.items()} for j, b in enumerate(reps[0]["per_batch"])]
    for peak, frac in (("sgemm_gflops", "roofline_fraction"), ("sgemm_square_gflops", "roofline_fraction_square"),
                       ("fma_peak_gflops", "peak_fraction")):
        med[peak] = max(r[peak] for r in reps)  # the best sustained rate of the run (see the docstring)
        med[frac] = med["achieved_gflops"] / med[peak]
    med["speedup_at_fma_peak"] = med["speedup"] * med["fma_peak_gflops"] / med["achieved_gflops"]
    result = {
        "workload": (f"fixed-epoch slice of the paper's 15-run study ({args.params.name}): all {len(ref_cfgs)} runs, "
                     f"in the sweep's batches of {[len(g) for g in groups]}, {args.epochs} epochs each, the first "
                     f"{args.warmup} untimed"),
        "runs": len(ref_cfgs), "batch_sizes": [len(g) for g in groups], "epochs_per_run": args.epochs,
        "timed_epochs_per_run": args.epochs - args.warmup, "repeats": args.repeats, "threads": threads,
        "kernels": "native" if native else "torch",
        **{k: med[k] for k in ("reference_ms_per_run_epoch", "batched_ms_per_run_epoch", "speedup",
                               "achieved_gflops", "sgemm_gflops", "roofline_fraction", "sgemm_square_gflops",
                               "roofline_fraction_square", "fma_peak_gflops", "peak_fraction",
                               "speedup_at_fma_peak", "max_rel_diff_grad_norm",
                               "batched_torch_ops_ms_per_run_epoch", "kernel_speedup") if k in med},
        "per_batch": med_batches,
        "sgemm_shape": [9409, 64, 97],
        "study_estimate_s": {"reference": med["reference_ms_per_run_epoch"] * study_run_epochs / 1e3,
                             "batched": med["batched_ms_per_run_epoch"] * study_run_epochs / 1e3,
                             "run_epochs": study_run_epochs},
        "flops_formula": ("modular: 2*N*H*P (output fwd, table) + 4*n*H*P (output bwd, train rows) + N*H (gather-sum) "
                          "+ 2*n*H (scatter-add); regression: 4*N*H + 6*n*H; elementwise work not counted"),
        "per_repeat": reps, "load_average_before": list(load_before), "load_average_after": list(os.getloadavg()),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "torch": torch.__version__},
    }
    print(f"\n{result['workload']}\nmedians of {args.repeats} (sgemm: best repeat): "
          f"reference {med['reference_ms_per_run_epoch']:.2f} ms/run-epoch, "
          f"batched {med['batched_ms_per_run_epoch']:.2f}, speedup x{med['speedup']:.1f}; "
          f"batched {med['achieved_gflops']:.1f} GFLOP/s against sgemm {med['sgemm_gflops']:.1f} "
          f"(roofline fraction {med['roofline_fraction']:.2f}; square sgemm {med['sgemm_square_gflops']:.1f}); "
          f"FMA peak {med['fma_peak_gflops']:.1f} (peak fraction {med['peak_fraction']:.2f}; every counted FLOP at "
          f"the peak would be x{med['speedup_at_fma_peak']:.1f}); "
          f"full study estimated {result['study_estimate_s']['reference']:.0f} s -> "
          f"{result['study_estimate_s']['batched']:.0f} s; engines agree to {med['max_rel_diff_grad_norm']:.1e}"
          + (f"; fused kernels x{med['kernel_speedup']:.2f} over torch ops" if native else "; kernels: torch ops"))
    for b in med_batches:
        print(f"  batch of {b['runs']} {b['task']} runs: reference {b['reference_ms_per_run_epoch']:.2f} ms/run-epoch, "
              f"batched {b['batched_ms_per_run_epoch']:.2f} (x{b['speedup']:.1f}), {b['achieved_gflops']:.1f} GFLOP/s")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
