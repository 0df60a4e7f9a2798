"""The machine's peak float32 multiply-add rate, measured: the ceiling no matmul can pass.

    python benchmarks/fma_peak.py [--threads N] [--seconds S]

``sgemm_gflops`` in train_throughput.py is what torch's BLAS reaches on the engine's shape; this
is what the cores can do at all. ``fma_chains`` (fma_peak.c, built with the same compiler and
flags as phaselib's kernels) keeps 12 independent vector FMA chains busy, which no real matmul
beats (a matmul also loads its operands). Timed alone on one core and as one call per core
concurrently (``all_cores``, summed), each call about ``--seconds`` long, the best of three.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from phaselib import kernels  # noqa: E402

SOURCE = Path(__file__).with_name("fma_peak.c")
_START = (ctypes.c_float * 12)(*[0.5 + 0.01 * c for c in range(12)])  # distinct chain starts (fma_peak.c)


@lru_cache(maxsize=None)
def _library() -> ctypes.CDLL:
    """fma_peak.c compiled into a temporary directory, removed once the library is loaded (the
    process keeps its mapping, so nothing is left in the temporary directory after the run)."""
    with tempfile.TemporaryDirectory(prefix="phaselib_fma_") as tmp:
        out = Path(tmp) / "fma_peak.so"
        cc = kernels._compiler()
        proc = subprocess.run([cc, *kernels.FLAGS, "-o", str(out), str(SOURCE)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{cc} failed on {SOURCE}:\n{proc.stderr.strip()}")
        lib = ctypes.CDLL(str(out))
    lib.fma_chains.argtypes = (ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_float,
                               ctypes.c_void_p)
    lib.fma_chains.restype = ctypes.c_double
    return lib


def _rate(iters: int, start: threading.Barrier | None = None) -> tuple[float, float]:
    """GFLOP/s of one fma_chains call of ``iters`` steps on the calling thread (ctypes drops the
    GIL), and its seconds; the clock starts when every thread has reached ``start``."""
    lib, out = _library(), (ctypes.c_float * 16)()
    if start is not None:
        start.wait()
    t0 = time.perf_counter()
    flop = lib.fma_chains(iters, _START, len(_START), 0.999, 1e-3, out)
    spent = time.perf_counter() - t0
    return flop / spent / 1e9, spent


def fma_peak_gflops(threads: int, seconds: float = 0.5, rounds: int = 3) -> dict[str, float | list[float]]:
    """Peak multiply-add GFLOP/s: ``one_core`` alone, and ``all_cores`` = the sum of ``threads``
    calls started together (``per_core``: per logical CPU), each the best of ``rounds`` (on a shared
    machine interference only lowers a reading, and this is a ceiling). Calls are sized to about
    ``seconds`` from an untimed warm-up and a probe."""
    probe = 1_000_000
    _rate(probe)  # builds the library and warms the core's clock
    _, spent = _rate(probe)
    iters = max(probe, int(probe * seconds / spent))
    one = max(_rate(iters)[0] for _ in range(rounds))
    best: list[float] = []
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(rounds):
            barrier = threading.Barrier(threads)
            per = [r for r, _ in pool.map(lambda _: _rate(iters, barrier), range(threads))]
            best = max(best, per, key=sum)
    return {"one_core": one, "all_cores": sum(best), "per_core": best}


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--seconds", type=float, default=0.5)
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    if args.threads < 1 or args.seconds <= 0:
        ap.error("--threads must be >= 1 and --seconds > 0")
    r = fma_peak_gflops(args.threads, args.seconds)
    print(f"peak float32 FMA: {r['one_core']:.1f} GFLOP/s on one core, {r['all_cores']:.1f} on {args.threads} "
          f"({', '.join(f'{x:.1f}' for x in r['per_core'])})")
    from train_throughput import write_json  # here, not at the top: train_throughput imports this module
    write_json(args.json, {"threads": args.threads, "seconds_per_call": args.seconds, **r})
    return r


if __name__ == "__main__":
    main()
