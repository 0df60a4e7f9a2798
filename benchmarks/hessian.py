"""Benchmark the Hessian signals on the full mod-97 model at a trained checkpoint.

    python benchmarks/hessian.py --json results/bench_hessian.json

Trains the paper's MLP (AdamW, full batch) while timing the every-epoch signals against the
training steps they ride on, then, in the same process and on the same checkpoint:
lambda_max by phaselib (Lanczos) and by PyHessian (power iteration, its default tolerance),
both against a float64 reference eigensolve run to tight tolerance; lambda_min started cold and
warm (from the eigenvector of a checkpoint a few epochs earlier, as tracking does); the
Hutchinson trace and Hutch++ against the exact trace; and the measurements behind the library's choices (HVP method, ARPACK vs
own Lanczos, Hutchinson vs Hutch++, shifted power iteration for lambda_min). Times are medians
of ``--repeats`` alternating runs. PyHessian is optional (``pip install pyhessian``); without it
its fields are null and ``pyhessian_note`` says why.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from phaselib import hessian as H  # noqa: E402
from phaselib.data import make_modular  # noqa: E402
from phaselib.models import make_model  # noqa: E402
from phaselib.probes import LMAX_TOL, LMIN_TOL, ProbeSchedule, Prober  # noqa: E402


def timed(fn):
    """(seconds, result) of one call."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def train(args, ds):
    """The paper's recipe; returns checkpoints by epoch and the signals' share of training time.

    Each epoch: the every-epoch signals (timed), CKA when due (timed apart: it runs every 10th
    epoch), then one AdamW step (timed), all at the same parameters and in the same process.
    """
    model = make_model(ds.in_dim, args.width, ds.out_dim, args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    loss_fn = H.task_loss("modular")
    every = Prober(ProbeSchedule(cka_every=0, noise_every=0, hessian_every=0), "modular", ds.x_test, ds.y_test,
                   seed=args.seed)
    cka = Prober(ProbeSchedule(every_epoch=(), noise_every=0, hessian_every=0), "modular", ds.x_test, ds.y_test,
                 seed=args.seed)
    keep = {args.epochs - args.warm_gap, args.epochs - args.far_gap, args.epochs}
    ckpt, t_train, t_every, t_cka = {}, 0.0, 0.0, 0.0
    for epoch in range(args.epochs + 1):
        if epoch in keep:
            ckpt[epoch] = copy.deepcopy(model.state_dict())
        if epoch == args.epochs:
            break
        t0 = time.perf_counter()
        every.rows(model, epoch, ds.x_train, ds.y_train)
        t1 = time.perf_counter()
        cka.rows(model, epoch, ds.x_train, ds.y_train)
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(ds.x_train), ds.y_train).backward()
        opt.step()
        t3 = time.perf_counter()
        t_every += t1 - t0
        t_cka += t2 - t1
        t_train += t3 - t2
    with torch.no_grad():
        acc = float((model(ds.x_test).argmax(1) == ds.y_test).float().mean())
    return ckpt, {"train_s": t_train, "every_epoch_signals_s": t_every, "cka_s": t_cka,
                  "overhead": t_every / t_train, "overhead_with_cka": (t_every + t_cka) / t_train,
                  "epoch_ms": 1e3 * t_train / args.epochs, "test_acc": acc}


def model_at(args, ds, state, dtype=torch.float32):
    m = make_model(ds.in_dim, args.width, ds.out_dim, args.seed)
    m.load_state_dict(state)
    return m.to(dtype)


def hvp_methods(model, ds, reps: int = 10) -> dict:
    """Setup and per-product seconds of each HVP method on this checkpoint: the whole model (key =
    method) and each layer's diagonal block, as the per-layer probes use it (key = method/layer)."""
    loss_fn = H.task_loss("modular")
    out = {}
    for layer in (None, "fc1", "fc2"):
        for method in H.HVP_METHODS:
            def build():
                return H.hessian_operator(model, loss_fn, ds.x_train, ds.y_train, layer, method=method)
            build()  # warm-up
            setup, op = timed(build)
            v = torch.randn(op.dim, generator=torch.Generator().manual_seed(0))
            op(v)
            per, _ = timed(lambda: [op(v) for _ in range(reps)])
            out[method if layer is None else f"{method}/{layer}"] = {"setup_s": setup, "per_product_s": per / reps}
    return out


def pyhessian_lmax(model, ds, seed: int):
    """PyHessian's top eigenvalue at its defaults (power iteration, maxIter=100, tol=1e-3)."""
    from pyhessian import hessian as PyHessian

    m = copy.deepcopy(model)
    torch.manual_seed(seed)  # PyHessian draws its start vector from the global generator

    def run():
        hess = PyHessian(m, torch.nn.CrossEntropyLoss(), data=(ds.x_train, ds.y_train), cuda=False)
        values, _ = hess.eigenvalues()
        return values[0]

    seconds, value = timed(run)
    for p in m.parameters():  # break the create_graph reference cycle PyHessian leaves behind
        p.grad = None
    return seconds, value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True, help="where to write the results")
    ap.add_argument("--epochs", type=int, default=1500, help="training epochs to the checkpoint")
    ap.add_argument("--frac", type=float, default=0.7)
    ap.add_argument("--modulus", type=int, default=97)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--warm-gap", type=int, default=5, help="epochs between the warm start's checkpoint and this")
    ap.add_argument("--far-gap", type=int, default=100, help="a second, farther warm start (the default cadence)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--trace-probes", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids oversubscription on a shared box)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load0 = os.getloadavg()[0]
    loss_fn = H.task_loss("modular")
    ds = make_modular(args.modulus, "add", args.frac, args.seed)

    print(f"training {args.epochs} epochs ...", flush=True)
    ckpt, tr = train(args, ds)
    model = model_at(args, ds, ckpt[args.epochs])
    res: dict = {"config": vars(args) | {"torch": torch.__version__, "n_train": len(ds.x_train),
                                         "n_params": sum(p.numel() for p in model.parameters())},
                 "training": tr, "cheap_signals_overhead": tr["overhead"]}

    print("reference eigensolve (float64, tol 1e-9) ...", flush=True)
    m64 = model_at(args, ds, ckpt[args.epochs], torch.float64)
    op64 = H.hessian_operator(m64, loss_fn, ds.x_train.double(), ds.y_train)
    t_ref, (ref_lo, ref_hi) = timed(lambda: H.lanczos_extreme(op64, "both", tol=1e-9, max_iter=800,
                                                              generator=torch.Generator().manual_seed(99)))
    res["reference"] = {"lmax": ref_hi.value, "lmin": ref_lo.value, "lmax_converged": ref_hi.converged,
                        "lmin_converged": ref_lo.converged, "iterations": ref_lo.iterations, "seconds": t_ref,
                        "lmax_error_bound": ref_hi.error_bound, "lmin_error_bound": ref_lo.error_bound}
    del op64, m64

    print("HVP methods ...", flush=True)
    res["hvp_methods"] = hvp_methods(model, ds)

    print("lambda_max: phaselib vs PyHessian vs ARPACK ...", flush=True)
    try:
        import pyhessian  # noqa: F401
        have_pyhessian, note = True, "pyhessian 0.1 power iteration at its defaults (maxIter=100, tol=1e-3)"
    except ImportError:
        have_pyhessian, note = False, "pyhessian is not installed (pip install pyhessian): its fields are null"
    ours, theirs, arpack = [], [], []
    for r in range(args.repeats):
        def ours_run(r=r):
            op = H.hessian_operator(model, loss_fn, ds.x_train, ds.y_train)
            return H.lambda_max(op, tol=LMAX_TOL, generator=torch.Generator().manual_seed(r))
        ours.append(timed(ours_run))
        if have_pyhessian:
            theirs.append(pyhessian_lmax(model, ds, seed=r))

        def arpack_run(r=r):
            op = H.hessian_operator(model, loss_fn, ds.x_train, ds.y_train)
            return H.eigsh_extreme(op, "max", tol=LMAX_TOL, generator=torch.Generator().manual_seed(r))
        if r == 0:  # one ARPACK run: it only informs the choice of eigensolver
            arpack.append(timed(arpack_run))
    res["phaselib_lmax_s"] = statistics.median(t for t, _ in ours)
    res["phaselib_lmax_rel_err"] = max(rel(e.value, ref_hi.value) for _, e in ours)
    res["phaselib_lmax_iterations"] = [e.iterations for _, e in ours]
    res["pyhessian_lmax_s"] = statistics.median(t for t, _ in theirs) if theirs else None
    res["pyhessian_lmax_rel_err"] = max(rel(v, ref_hi.value) for _, v in theirs) if theirs else None
    res["pyhessian_note"] = note
    res["arpack_lmax_s"] = statistics.median(t for t, _ in arpack)
    res["arpack_lmax_rel_err"] = max(rel(e.value, ref_hi.value) for _, e in arpack)
    res["arpack_lmax_products"] = [e.iterations for _, e in arpack]
    if theirs:
        res["lmax_speedup_vs_pyhessian"] = res["pyhessian_lmax_s"] / res["phaselib_lmax_s"]

    print("lambda_min: cold vs warm ...", flush=True)
    op = H.hessian_operator(model, loss_fn, ds.x_train, ds.y_train)
    lmin = {}
    for gap_name, gap in (("warm", args.warm_gap), ("warm_far", args.far_gap)):
        prev_model = model_at(args, ds, ckpt[args.epochs - gap])
        prev_op = H.hessian_operator(prev_model, loss_fn, ds.x_train, ds.y_train)
        # the previous probe's vector, as the prober would have left it (same tolerance)
        lmin[gap_name] = H.lambda_min(prev_op, tol=LMIN_TOL, max_iter=600,
                                      generator=torch.Generator().manual_seed(7)).vector
        del prev_op
    for tol in (LMIN_TOL, LMIN_TOL / 10):
        # at the tighter tolerance, one run each of cold and near warm: the warm start's limit
        runs = {"cold": [], "warm": [], "warm_far": []} if tol == LMIN_TOL else {"cold": [], "warm": []}
        for r in range(args.repeats if tol == LMIN_TOL else 1):
            for name in runs:
                v0 = lmin.get(name)
                runs[name].append(timed(lambda v0=v0, r=r: H.lambda_min(
                    op, v0, tol=tol, max_iter=600, generator=torch.Generator().manual_seed(100 + r))))
        for name, rs in runs.items():
            key = f"lmin_{name}" + ("" if tol == LMIN_TOL else f"_tol{tol:g}")
            res[f"{key}_s"] = statistics.median(t for t, _ in rs)
            res[f"{key}_rel_err"] = max(rel(e.value, ref_lo.value) for _, e in rs)
            res[f"{key}_iterations"] = [e.iterations for _, e in rs]
            res[f"{key}_converged"] = all(e.converged for _, e in rs)
    res["lmin_tol"] = LMIN_TOL
    res["lmin_warm_speedup"] = res["lmin_cold_s"] / res["lmin_warm_s"]

    # Spectral shift: power iteration on (sigma I - H), sigma = lambda_max, for half the products
    # a cold Lanczos used (Lanczos itself is shift-invariant, so a shift cannot help it).
    budget = max(res["lmin_cold_iterations"]) // 2
    sigma = ref_hi.value
    v = H._random_unit(op.dim, op.dtype, op.device, torch.Generator().manual_seed(5))
    t0 = time.perf_counter()
    for _ in range(budget):
        w = sigma * v - op(v)
        v = w / w.norm()
    shifted = float(v @ op(v))
    res["lmin_shifted_power"] = {"products": budget, "seconds": time.perf_counter() - t0,
                                 "rel_err": rel(shifted, ref_lo.value)}

    print("trace ...", flush=True)
    t_tr, tr_est = timed(lambda: H.hutchinson_trace(op, args.trace_probes, generator=torch.Generator().manual_seed(1)))
    t_pp, pp_est = timed(lambda: H.hutchpp_trace(op, args.trace_probes, generator=torch.Generator().manual_seed(1)))
    res["trace"], res["trace_stderr"], res["trace_s"] = tr_est.value, tr_est.stderr, t_tr
    res["hutchpp_trace"], res["hutchpp_trace_stderr"], res["hutchpp_s"] = pp_est.value, pp_est.stderr, t_pp
    res["trace_products"] = args.trace_probes
    # the exact trace (Gauss-Newton diagonal of the ReLU MLP): the truth both estimates are judged by
    t_ex, ex = timed(lambda: H.exact_block_traces(model, loss_fn, ds.x_train, ds.y_train)["all"])
    res["trace_exact"], res["trace_exact_s"] = ex.value, t_ex
    res["trace_z"] = (tr_est.value - ex.value) / tr_est.stderr
    res["hutchpp_trace_z"] = (pp_est.value - ex.value) / pp_est.stderr
    res["trace_exact_speedup"] = t_tr / t_ex
    sd = H.spectral_density(op, n_vectors=2, steps=60, generator=torch.Generator().manual_seed(2))
    res["slq_trace"] = sd.trace()

    # One full default-schedule Hessian and noise probe, to put the rarer signals' cost in context.
    print("one probe of each rare signal ...", flush=True)
    full = Prober(ProbeSchedule(every_epoch=(), cka_every=0), "modular", ds.x_test, ds.y_test, seed=0)
    t_noise, _ = timed(lambda: full._noise(model, args.epochs, ds.x_train, ds.y_train))
    t_hess_cold, _ = timed(lambda: full._hessian(model_at(args, ds, ckpt[args.epochs - args.far_gap]),
                                                 args.epochs - args.far_gap, ds.x_train, ds.y_train))
    t_hess, rows = timed(lambda: full._hessian(model, args.epochs, ds.x_train, ds.y_train))
    d = ProbeSchedule()
    epoch_s = tr["train_s"] / args.epochs
    res["rare_probes"] = {"noise_s": t_noise, "hessian_cold_s": t_hess_cold, "hessian_warm_s": t_hess,
                          "hessian_rows": {f"{r['signal']}/{r['layer']}": r["value"] for r in rows},
                          "default_schedule_overhead_est": tr["overhead_with_cka"] + (t_noise / d.noise_every
                                                                                      + t_hess / d.hessian_every) / epoch_s}
    res["loadavg_start_end"] = [load0, os.getloadavg()[0]]
    res["total_s"] = time.perf_counter() - started

    out = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in res.items()}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    keys = ["phaselib_lmax_s", "phaselib_lmax_rel_err", "pyhessian_lmax_s", "pyhessian_lmax_rel_err",
            "lmin_cold_s", "lmin_warm_s", "trace", "trace_stderr", "cheap_signals_overhead"]
    print(json.dumps({k: out[k] for k in keys}, indent=2))
    if theirs:
        print(f"lambda_max: phaselib {res['lmax_speedup_vs_pyhessian']:.2f}x faster than PyHessian")
    print(f"lambda_min: warm start {res['lmin_warm_speedup']:.1f}x faster than cold (tol {LMIN_TOL:g})")
    print(f"trace: Hutchinson {res['trace_z']:+.2f} s.e. and Hutch++ {res['hutchpp_trace_z']:+.2f} s.e. from the exact "
          f"trace, which took {res['trace_exact_speedup']:.0f}x less time than Hutchinson's {args.trace_probes} products")
    print(f"wrote {args.json} in {res['total_s']:.0f} s")


if __name__ == "__main__":
    main()
