"""Would skipping the inactive hidden units pay? The dense fused step against a row-sparse one.

    python benchmarks/sparse_hidden.py [--json FILE] [--train-epochs 600] [--repeats 5]

About half of the MLP's hidden units are zero on any row (ReLU), so an exact step that skips
them needs about half the multiply-adds of the output layer. The C kernels cannot skip them: a
vector lane is a row, and 8 rows almost never share an inactive unit. ``sparse_hidden.c`` holds
the other layout, one row at a time with the classes as lanes, walking each row's active units
(see its header). This script times both on the same weights and rows, one core, alternating
call by call, for the engine's two segments of a recorded step at ``--frac`` (``[0, s)``: train
rows; ``[s, N)``: train and test rows; ``s`` from ``phaselib.engine.segment_split``) and for a
forward-only pass (every row a test row), and checks that both give the same results.

Weights: the study's MLP (``make_model``, seed 42) after ``--train-epochs`` full-batch AdamW
epochs of the paper's recipe on the run's train split, so the active share is training's, not
only the initialisation's (both are printed).

JSON: per pass, the medians over ``--repeats`` of ``dense_ms``, ``sparse_ms`` and ``ratio``
(= dense / sparse: above 1 the sparse step is faster); ``step_ratio`` (both segments together);
``active_fraction`` (of the hidden units over the table's rows, at init and after training); and
``max_rel_diff`` (per output: the largest difference from the dense step over the output's
largest magnitude; above 1e-4 the script stops, as a race between steps that disagree).
"""
from __future__ import annotations

import argparse
import ctypes
import statistics
import subprocess
import sys
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from phaselib import kernels  # noqa: E402
from phaselib.config import RunConfig  # noqa: E402
from phaselib.engine import EXP_FLOOR, padded_classes, segment_split  # noqa: E402
from phaselib.models import make_model  # noqa: E402
from phaselib.train import make_dataset  # noqa: E402
from train_throughput import write_json  # noqa: E402

SOURCE = Path(__file__).with_name("sparse_hidden.c")
TOLERANCE = 1e-4  # float32 summation order moves the gradients by about 1e-6 of their scale
STEP_ARGS = ([ctypes.c_void_p] * 2 + [ctypes.c_int64] * 3 + [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 4
             + [ctypes.c_float] + [ctypes.c_void_p] * 6 + [ctypes.c_int64, ctypes.c_void_p])


@lru_cache(maxsize=None)
def build() -> ctypes.CDLL:
    """sparse_hidden.c (which includes phaselib/kernels.c, so both steps come from one build with
    the kernels' compiler and flags), in a temporary directory removed once it is loaded."""
    with tempfile.TemporaryDirectory(prefix="phaselib_sparse_") as tmp:
        out = Path(tmp) / "sparse_hidden.so"
        cc = kernels._compiler()
        proc = subprocess.run([cc, *kernels.FLAGS, "-o", str(out), str(SOURCE), "-lm"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{cc} failed on {SOURCE}:\n{proc.stderr.strip()}")
        lib = ctypes.CDLL(str(out))
    for name in ("modular_rows", "sparse_rows"):
        getattr(lib, name).argtypes = STEP_ARGS
    lib.modular_scratch.argtypes = [ctypes.c_int64] * 3
    lib.sparse_scratch.argtypes = [ctypes.c_int64] * 2
    lib.modular_scratch.restype = lib.sparse_scratch.restype = ctypes.c_int64
    return lib


def trained_layouts(cfg: RunConfig, epochs: int) -> tuple[dict, dict[str, float]]:
    """The kernels' weight layouts (E, W2T) of the run's MLP after ``epochs`` of the paper's full-batch
    AdamW, its rows (train first) and the active share of hidden units at init and at the end."""
    d = make_dataset(cfg)
    model = make_model(d.in_dim, cfg.width, d.out_dim, cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    x_all = torch.cat([d.x_train, d.x_test])
    active = {}
    with torch.no_grad():
        active["init"] = float((model.hidden(x_all) > 0).float().mean())
    for _ in range(epochs):
        opt.zero_grad()
        F.cross_entropy(model(d.x_train), d.y_train).backward()
        opt.step()
    with torch.no_grad():
        active["trained"] = float((model.hidden(x_all) > 0).float().mean())
    (W1, b1), (W2, b2) = [(m.weight.detach(), m.bias.detach()) for m in (model.fc1, model.fc2)]
    p, H = d.out_dim, cfg.width
    E = torch.empty(2 * p, H + 1)
    E[:p, :H], E[p:, :H], E[:, H] = (W1[:, :p] + b1[:, None]).T, W1[:, p:].T, 0.5
    W2T = torch.zeros(H + 1, padded_classes(p))
    W2T[:H, :p], W2T[H, :p], W2T[H, p:] = W2.T, b2, -torch.inf
    rows = np.concatenate([d.train_idx, d.test_idx])
    a, b, y = (torch.from_numpy(np.ascontiguousarray(v[rows])).long() for v in (d.a, d.b, d.label))
    return {"E": E, "W2T": W2T, "ia": a, "ib": b + p, "y": y, "p": p, "H": H, "n": len(d.train_idx)}, active


def step_call(lib: ctypes.CDLL, name: str, m: dict, lo: int, hi: int, n_train: int):
    """A zero-argument call of one step function over rows [lo, hi), and its output buffers."""
    p, H, P8 = m["p"], m["H"], m["W2T"].shape[1]
    N = len(m["y"])
    work = torch.empty(max(lib.modular_scratch(p, H, 256), lib.sparse_scratch(p, H)))
    out = {"dW2": torch.empty(H + 1, P8), "dE": torch.empty(2 * p, H), "db1": torch.empty(H),
           "sums": torch.empty(N), "shift": torch.empty(N), "correct": torch.empty(N, dtype=torch.uint8)}
    head = (m["E"].data_ptr(), m["W2T"].data_ptr(), p, P8, H, m["ia"].data_ptr(), m["ib"].data_ptr(),
            m["y"].data_ptr(), lo, hi, n_train, 256, EXP_FLOOR, out["sums"].data_ptr(), out["shift"].data_ptr(),
            out["correct"].data_ptr())
    tail = (out["dW2"].data_ptr(), out["dE"].data_ptr(), 2 * p, out["db1"].data_ptr())
    fn = getattr(lib, name)

    def call() -> None:  # refers to `work` itself, which so lives as long as the call
        fn(*head, work.data_ptr(), *tail)
    return call, out


def max_rel_diff(dense: dict, sparse: dict, p: int, lo: int, hi: int) -> dict[str, float]:
    """Per output, the largest difference over the dense output's largest magnitude."""
    pairs = {"dW2": (dense["dW2"][:, :p], sparse["dW2"][:, :p]), "dE": (dense["dE"], sparse["dE"]),
             "db1": (dense["db1"], sparse["db1"]), "sums": (dense["sums"][lo:hi], sparse["sums"][lo:hi]),
             "shift": (dense["shift"][lo:hi], sparse["shift"][lo:hi]),
             "correct": (dense["correct"][lo:hi].float(), sparse["correct"][lo:hi].float())}
    return {k: float((d.double() - s.double()).abs().max() / max(float(d.abs().max()), 1e-30))
            for k, (d, s) in pairs.items()}


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--frac", type=float, default=0.7)
    ap.add_argument("--train-epochs", type=int, default=600, help="AdamW epochs before timing (0: the init)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--calls", type=int, default=20, help="timed calls of each step per repeat")
    args = ap.parse_args(argv)
    if kernels.library() is None:
        sys.exit("the native kernels do not build here: nothing to compare")
    lib = build()
    torch.set_num_threads(1)
    cfg = RunConfig(modulus=97, frac=args.frac, seed=42, epochs=max(args.train_epochs, 1))
    m, active = trained_layouts(cfg, args.train_epochs)
    if m["p"] > 128 or m["H"] >= 256:
        sys.exit(f"sparse_hidden.c takes p <= 128 and width < 256; got p = {m['p']}, width {m['H']}")
    N, n = len(m["y"]), m["n"]
    s = segment_split(n, N)
    passes = {"segment [0, s): train rows": (0, s, n), "segment [s, N): train and test rows": (s, N, n),
              "forward only (every row a test row)": (0, N, 0)}
    result: dict = {"workload": f"p={m['p']}, width {m['H']}, frac {args.frac}: N={N} rows, n={n} train, s={s}",
                    "train_epochs": args.train_epochs, "active_fraction": active, "passes": {}}
    step_dense = step_sparse = 0.0
    for label, (lo, hi, n_train) in passes.items():
        dense, d_out = step_call(lib, "modular_rows", m, lo, hi, n_train)
        sparse, s_out = step_call(lib, "sparse_rows", m, lo, hi, n_train)
        dense(), sparse()
        diff = max_rel_diff(d_out, s_out, m["p"], lo, hi)
        if max(diff.values()) > TOLERANCE:  # timing two steps that disagree would compare nothing
            raise SystemExit(f"{label}: the sparse step differs from the dense one by {diff}; allowed: "
                             f"at most {TOLERANCE} of each output's scale")
        reps = []
        for _ in range(args.repeats):
            t = {"dense": 0.0, "sparse": 0.0}
            for _ in range(args.calls):  # alternate call by call: both see the same machine
                for name, fn in (("dense", dense), ("sparse", sparse)):
                    t0 = time.perf_counter()
                    fn()
                    t[name] += time.perf_counter() - t0
            reps.append({"dense_ms": t["dense"] / args.calls * 1e3, "sparse_ms": t["sparse"] / args.calls * 1e3,
                         "ratio": t["dense"] / t["sparse"]})
        med = {k: statistics.median(r[k] for r in reps) for k in ("dense_ms", "sparse_ms", "ratio")}
        result["passes"][label] = {**med, "max_rel_diff": diff, "per_repeat": reps}
        if n_train:
            step_dense, step_sparse = step_dense + med["dense_ms"], step_sparse + med["sparse_ms"]
        print(f"{label}: dense {med['dense_ms']:.3f} ms, sparse {med['sparse_ms']:.3f} ms, dense/sparse "
              f"x{med['ratio']:.2f}; largest difference {max(diff.values()):.1e} of the output's scale", flush=True)
    result["step_ratio"] = step_dense / step_sparse
    print(f"active hidden units: {active['init']:.3f} at init, {active['trained']:.3f} after {args.train_epochs} "
          f"epochs; a recorded step (both segments): dense/sparse x{result['step_ratio']:.2f} "
          f"({'the sparse step is faster' if result['step_ratio'] > 1 else 'skipping does not pay here'})")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
