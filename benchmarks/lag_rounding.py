"""How far one run's analysis moves under a different float32 rounding order, side by side.

    python benchmarks/lag_rounding.py --json results/bench/lag_rounding.json [--frac 0.9 --seed 42]

Trains one modular-addition run (the paper's recipe, 3000 epochs by default) three ways in this
process: the reference loop, the batched engine on torch operations, and the batched engine
with the C kernels (when they build). All three are exact up to summation order. It then
prints, for each, the paper's analysis: gradient-norm peak, metric transition, lag and
generalisation epoch. A robustness measurement, not a speed goal: it says how much of a single
run's lag is rounding noise.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from phaselib import kernels  # noqa: E402
from phaselib.config import RunConfig  # noqa: E402
from phaselib.engine import train_batched  # noqa: E402
from phaselib.sweep import analyse_record  # noqa: E402
from phaselib.train import train_reference  # noqa: E402
from train_throughput import kernel_mode, write_json  # noqa: E402


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--frac", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--epochs", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = ap.parse_args(argv)
    cfg = RunConfig(frac=args.frac, seed=args.seed, epochs=args.epochs, threads=args.threads)
    records = {"reference": train_reference(cfg)}
    with kernel_mode("torch"):
        records["batched, torch ops"] = train_batched([cfg.replace(engine="batched")])[0]
    if kernels.use_native(torch.device(cfg.device)):
        with kernel_mode("native"):
            records["batched, C kernels"] = train_batched([cfg.replace(engine="batched")])[0]
    rows = {}
    for name, rec in records.items():
        a = analyse_record(rec)
        rows[name] = {"gnorm_peak_epoch": a.gnorm_peak_epoch, "metric_transition_epoch": a.metric_transition_epoch,
                      "lag": a.lag, "generalisation_epoch": a.generalisation_epoch, "generalised": a.generalised}
        print(f"{name:20s} peak {a.gnorm_peak_epoch:5d}  transition {a.metric_transition_epoch:5d}  "
              f"lag {a.lag:5d}  generalised at {a.generalisation_epoch}", flush=True)
    result = {"config": cfg.hashed_dict(), "threads": args.threads or torch.get_num_threads(),
              "paths": rows, "meta": {name: {k: rec.meta.get(k) for k in ("engine", "kernels")}
                                      for name, rec in records.items()}}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
