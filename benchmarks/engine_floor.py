"""The batched engine's floor: what its unavoidable matmuls cost, next to the reference loop.

    python benchmarks/engine_floor.py --json results/bench/engine_floor.json

Per run-epoch the batched engine must do three float32 GEMMs of the output layer (p = 97,
width 64, logits padded to 104 classes, the output bias as a 65th hidden unit):

- forward over the whole table (test metrics are recorded every epoch): (N, 65) @ (65, 104);
- dW2 over the train rows: (n, 65)^T @ (n, 97);
- dh over the train rows: (n, 97) @ (97, 64).

This script times those three calls, with the engine's layouts, for a run at ``--frac``, on all
torch threads and as one single-threaded stream per core (the better of the two is the floor),
and, in the same process, the reference loop on the same run. ``max_speedup`` =
reference ms per run-epoch / GEMM floor ms per run-epoch: the speedup an engine with these
layouts would reach on this run if everything but these GEMMs (softmax, gather, scatter,
optimiser) were free. It is per run at one fraction, not the study's mix (train_throughput.py).

Next to both, the batched engine itself trains one copy of the run per thread (seeds 42, 43, ...:
the same shapes, one run per worker, as the streams above) for the same epochs:
``batched_ms_per_run_epoch``, ``speedup`` (= reference / batched) and ``gemm_share`` (= floor /
batched: the part of the engine's time that these GEMMs alone would take; 1 - gemm_share is
what removing every other cost could still save). The floor is torch's own matmuls (MKL in the
x86 wheels); the C kernels do these products with register tiles of their own, which can be
faster than MKL on these shapes, so ``gemm_share`` can come near 1 or pass it.

The hard ceiling, measured rather than taken from MKL: ``fma_peak_gflops`` is the cores' peak
float32 multiply-add rate (fma_peak.py: every core at once, best of three). ``peak_ms`` = the
model's useful FLOPs per run-epoch (train_throughput.py's count: no padding, no bias unit) at that
rate, and ``max_speedup_at_fma_peak`` = reference / peak_ms: what an engine would reach whose only
cost were these FLOPs at the peak, which no real matmul reaches (it also loads its operands) and
which leaves the softmax, gather, scatter and optimiser free. How near the C kernels come:
``fused_step_ms`` is one run's whole fused step (``modular_rows`` over every row) on one core, and
``fused_peak_fraction`` = the FLOPs its matmuls do (``kernel_gflop_per_run_epoch``: the p classes
unpadded, with the bias unit as a 65th hidden unit in the logits and dW2) at one core's peak /
fused_step_ms: the share of the step that is matmul at full speed.

Where the rest of the step goes: ``phase_ms`` times each phase of that step (hidden layer, logits,
softmax, dW2, dh, scatter-add) in a build of kernels.c with ``-DKERNEL_PHASE_TIMING`` (the same
code, a clock read around each phase of each block; ``timed_step_ms`` is that whole call), and
``phase_peak_fraction`` gives each matmul's share of one core's peak. ``step_floor_ms`` = the
matmuls' FLOPs at that peak + the elementwise phases as measured (``elementwise_ms``): the step
with its matmuls at the peak and its elementwise work as it is. ``max_speedup_at_step_floor``
= reference / (step_floor_ms / threads): the speedup if the cores split that step evenly and
nothing outside it (optimiser, norms, hand-offs between threads) cost anything.

JSON: medians over ``--repeats`` of ``reference_ms_per_run_epoch``, ``floor_ms``, ``max_speedup``,
``batched_ms_per_run_epoch``, ``speedup``, ``gemm_share``, ``fma_peak_gflops``, ``peak_ms``,
``max_speedup_at_fma_peak``, ``fused_step_ms``, ``fused_peak_fraction``, ``phase_ms``,
``phase_peak_fraction``, ``elementwise_ms``, ``step_floor_ms``, ``max_speedup_at_step_floor``
and ``gemm_gflops`` (= ``gemm_gflop_per_run_epoch`` / floor); ``gemm_gflop_per_run_epoch`` counts the FLOPs of the
padded shapes above (the engine's real work; train_throughput.py counts the unpadded model's,
64 x 97, so its GFLOP/s are about 3% lower for the same time); each repeat's figures, with
``per_gemm_ms_all_threads`` (each GEMM alone on all threads), in ``per_repeat``.
"""
from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fma_peak import fma_peak_gflops  # noqa: E402
from phaselib import kernels  # noqa: E402
from phaselib.config import RunConfig  # noqa: E402
from phaselib.engine import EXP_FLOOR, padded_classes  # noqa: E402
from phaselib.executors import torch_threads  # noqa: E402
from phaselib.train import make_dataset, train_reference  # noqa: E402
from train_throughput import (intra_and_streams, medians, ms_per_pass, run_epoch_flops, time_batched,  # noqa: E402
                              time_reference, write_json)


def gemms(N: int, n: int, H: int, p: int) -> dict[str, Callable[[], object]]:
    """The engine's three output-layer GEMMs on random data, as zero-argument calls."""
    P8 = padded_classes(p)
    h, W2T, z = torch.randn(N, H + 1).relu_(), torch.randn(H + 1, P8), torch.empty(N, P8)
    dz, dW2 = torch.randn(n, p), torch.empty(H + 1, p)
    W2, dh = torch.randn(p, H), torch.empty(n, H)
    return {"forward": lambda: torch.mm(h, W2T, out=z),
            "dW2": lambda: torch.mm(h[:n].T, dz, out=dW2),
            "dh": lambda: torch.mm(dz, W2, out=dh)}


def floor_ms(N: int, n: int, H: int, p: int, threads: int, seconds: float) -> dict:
    """GEMM ms per run-epoch: all threads on one run, or one single-threaded run per core."""
    one_each = {k: ms_per_pass(lambda k=k: [gemms(N, n, H, p)[k]], seconds / 3) for k in ("forward", "dW2", "dh")}
    intra, streams = intra_and_streams(lambda: list(gemms(N, n, H, p).values()), threads, seconds)
    streams_ms = statistics.mean(streams) / threads  # run-epochs complete `threads` at a time
    return {"intra_op_ms": intra, "streams_ms": streams_ms, "floor_ms": min(intra, streams_ms),
            "per_gemm_ms_all_threads": one_each}


def fused_step_call(cfg: RunConfig, lib: ctypes.CDLL | None = None) -> list[Callable[[], object]]:
    """One run's whole fused modular step (``kernels.modular_rows`` over every row of the table, in
    one call on the calling thread) on random weights. This is the tested Python wrapper, which
    also checks the indices, pads W2 and allocates its scratch on every call (the engine keeps
    its buffers and calls the C function directly), so the time is a little above the engine's.
    ``lib``: the build to call (default: the engine's)."""
    d = make_dataset(cfg)
    N, n, H, p = d.n_total, len(d.train_idx), cfg.width, d.out_dim
    g = torch.Generator().manual_seed(0)
    a, b = torch.arange(N) // p, torch.arange(N) % p
    E = torch.randn(2 * p, H + 1, generator=g)
    E[:, H] = 0.5
    W2T = torch.full((H + 1, padded_classes(p)), -torch.inf)
    W2T[:, :p] = torch.randn(H + 1, p, generator=g)
    out = torch.empty(H + 1, p), torch.empty(2 * p, H), torch.empty(H), torch.empty(N), torch.empty(N, dtype=torch.bool)
    return [lambda: kernels.modular_rows(E, W2T, a, b + p, (a + b) % p, 0, N, n, EXP_FLOOR, *out, lib=lib)]


PHASES = ("hidden layer", "logits", "softmax", "dW2", "dh", "scatter-add")
"""The phases of ``modular_rows``' block loop, in kernels.c's ``PHASE`` order."""


def phase_flops(N: int, n: int, H: int, p: int) -> dict[str, int]:
    """FLOPs per step of the phases that are matmuls (the kernel's: p classes, the bias as unit H + 1)."""
    return {"logits": 2 * N * (H + 1) * p, "dW2": 2 * n * (H + 1) * p, "dh": 2 * n * p * H}


@lru_cache(maxsize=None)
def timing_kernels() -> ctypes.CDLL:
    """kernels.c built with ``-DKERNEL_PHASE_TIMING``: ``modular_rows`` adds each phase's seconds
    to ``kernel_phase_s``. Built in a temporary directory, removed once the library is loaded."""
    with tempfile.TemporaryDirectory(prefix="phaselib_phases_") as tmp:
        return kernels._load(str(kernels.build(Path(tmp), ("-DKERNEL_PHASE_TIMING",))))


def phase_ms(cfg: RunConfig, seconds: float) -> tuple[dict[str, float], float]:
    """Ms per step of each phase of one run's fused step on the calling thread, torch on one thread
    too (the timing build, mean over calls for about ``seconds`` after a warm-up), and of the whole
    timed call (which also holds the wrapper's checks, copies and log, so the phases sum to less)."""
    lib = timing_kernels()
    acc = (ctypes.c_double * len(PHASES)).in_dll(lib, "kernel_phase_s")
    (step,) = fused_step_call(cfg, lib)
    with torch_threads(1):  # the wrapper's torch operations stay on this core as well
        step()
        acc[:] = [0.0] * len(PHASES)
        calls, t0 = 0, time.perf_counter()
        while True:
            step()
            calls += 1
            if (spent := time.perf_counter() - t0) >= seconds:
                break
    return {name: acc[i] / calls * 1e3 for i, name in enumerate(PHASES)}, spent / calls * 1e3


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--frac", type=float, default=0.7)
    ap.add_argument("--epochs", type=int, default=30, help="reference epochs")
    ap.add_argument("--warmup", type=int, default=5, help="reference epochs left out of the timing")
    ap.add_argument("--seconds", type=float, default=2.0, help="time per GEMM measurement")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    if not 0 < args.warmup < args.epochs:
        ap.error("--warmup must be in (0, --epochs)")
    threads = torch.get_num_threads()
    cfg = RunConfig(modulus=97, frac=args.frac, seed=42, epochs=args.epochs, engine="reference", threads=threads)
    d = make_dataset(cfg)
    N, n, H, p = d.n_total, len(d.train_idx), cfg.width, d.out_dim
    flop = 2 * N * (H + 1) * padded_classes(p) + 2 * n * (H + 1) * p + 2 * n * p * H
    useful = run_epoch_flops(cfg)
    mm_flop = phase_flops(N, n, H, p)
    kernel_flop = sum(mm_flop.values())
    native = kernels.library() is not None
    copies = [cfg.replace(seed=42 + k, engine="batched") for k in range(max(1, threads))]
    train_reference(cfg.replace(epochs=3))  # warm both paths (allocator, first kernel calls, C kernels' build)
    time_batched([[c.replace(epochs=3) for c in copies]], 1)
    reps = []
    for i in range(args.repeats):
        ref = time_reference([cfg], args.warmup)
        ref_ms = ref["loop_s"] / ref["run_epochs"] * 1e3
        bat = time_batched([copies], args.warmup)
        bat_ms = bat["loop_s"] / bat["run_epochs"] * 1e3
        f = floor_ms(N, n, H, p, threads, args.seconds)
        fma = fma_peak_gflops(threads, 0.3)
        peak, peak_ms = fma["all_cores"], useful / fma["all_cores"] / 1e6
        with torch_threads(1):  # one core: the wrapper's torch operations too
            fused_ms = ms_per_pass(lambda: fused_step_call(cfg), args.seconds / 2) if native else float("nan")
        phases, timed_ms = phase_ms(cfg, args.seconds / 2) if native else \
            ({k: float("nan") for k in PHASES}, float("nan"))
        mm_at_peak = {k: mm_flop[k] / fma["one_core"] / 1e6 for k in mm_flop}
        elementwise_ms = sum(v for k, v in phases.items() if k not in mm_flop)
        step_floor_ms = sum(mm_at_peak.values()) + elementwise_ms
        reps.append({"phase_ms": phases, "timed_step_ms": timed_ms,
                     "phase_peak_fraction": {k: mm_at_peak[k] / phases[k] for k in mm_flop},
                     "elementwise_ms": elementwise_ms, "step_floor_ms": step_floor_ms,
                     "max_speedup_at_step_floor": ref_ms / (step_floor_ms / threads),
                     "reference_ms_per_run_epoch": ref_ms, "batched_ms_per_run_epoch": bat_ms, **f,
                     "max_speedup": ref_ms / f["floor_ms"], "speedup": ref_ms / bat_ms,
                     "gemm_share": f["floor_ms"] / bat_ms, "gemm_gflops": flop / f["floor_ms"] / 1e6,
                     "fma_peak_gflops": peak, "peak_ms": peak_ms, "max_speedup_at_fma_peak": ref_ms / peak_ms,
                     "fused_step_ms": fused_ms, "fused_peak_fraction": kernel_flop / fma["one_core"] / 1e6 / fused_ms})
        print(f"repeat {i + 1}/{args.repeats}: reference {ref_ms:.2f} ms/run-epoch, batched {bat_ms:.2f}; GEMM floor "
              f"{f['floor_ms']:.2f} ms ({flop / f['floor_ms'] / 1e6:.0f} GFLOP/s) -> max speedup "
              f"x{ref_ms / f['floor_ms']:.1f}, engine x{ref_ms / bat_ms:.1f}, GEMM share of the engine's time "
              f"{f['floor_ms'] / bat_ms:.2f}; FMA peak {peak:.0f} GFLOP/s -> useful FLOPs alone {peak_ms:.2f} ms "
              f"(x{ref_ms / peak_ms:.1f}); fused step on one core {fused_ms:.2f} ms, "
              f"{kernel_flop / fma['one_core'] / 1e6 / fused_ms:.2f} of it matmul at peak", flush=True)
        print("  its phases (timing build, ms; matmuls: share of the core's peak): " + ", ".join(
            f"{k} {v:.3f}" + (f" ({mm_at_peak[k] / v:.2f})" if k in mm_flop else "") for k, v in phases.items())
            + f"; with the matmuls at peak the step would take {step_floor_ms:.2f} ms -> x"
            f"{ref_ms / (step_floor_ms / threads):.1f} on {threads} cores, if nothing outside it cost anything",
            flush=True)
    med = medians(reps, ("reference_ms_per_run_epoch", "batched_ms_per_run_epoch", "floor_ms", "max_speedup",
                         "speedup", "gemm_share", "gemm_gflops", "fma_peak_gflops", "peak_ms",
                         "max_speedup_at_fma_peak", "fused_step_ms", "fused_peak_fraction", "elementwise_ms",
                         "step_floor_ms", "max_speedup_at_step_floor"))
    med["phase_ms"] = medians([r["phase_ms"] for r in reps])
    med["phase_peak_fraction"] = medians([r["phase_peak_fraction"] for r in reps])
    result = {"workload": f"p=97, width {H}, frac {args.frac}: N={N} table rows, n={n} train rows",
              "threads": threads, "gemm_gflop_per_run_epoch": flop / 1e9, "useful_gflop_per_run_epoch": useful / 1e9,
              "kernel_gflop_per_run_epoch": kernel_flop / 1e9,
              "kernels": "native" if native else "torch (fused step not timed: NaN)", **med, "per_repeat": reps}
    print(f"medians of {args.repeats}: reference {med['reference_ms_per_run_epoch']:.2f} ms/run-epoch, GEMM floor "
          f"{med['floor_ms']:.2f} ms ({med['gemm_gflops']:.0f} GFLOP/s on {flop / 1e9:.3f} GFLOP): an engine "
          f"whose only cost were these GEMMs would be x{med['max_speedup']:.1f} the reference; the batched engine "
          f"({med['batched_ms_per_run_epoch']:.2f} ms/run-epoch, {len(copies)} copies of the run) is "
          f"x{med['speedup']:.1f}, and these GEMMs are {med['gemm_share']:.2f} of its time. At the cores' FMA peak "
          f"({med['fma_peak_gflops']:.0f} GFLOP/s) the useful {useful / 1e9:.3f} GFLOP take {med['peak_ms']:.2f} ms "
          f"(x{med['max_speedup_at_fma_peak']:.1f} the reference, if nothing else cost anything); one run's fused step "
          f"takes {med['fused_step_ms']:.2f} ms on one core, {med['fused_peak_fraction']:.2f} of it matmul at peak; "
          f"its elementwise phases take {med['elementwise_ms']:.2f} ms, so with its matmuls at peak it would take "
          f"{med['step_floor_ms']:.2f} ms: x{med['max_speedup_at_step_floor']:.1f} the reference on {threads} cores, "
          "if nothing outside the step (optimiser, norms, hand-offs between threads) cost anything")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
