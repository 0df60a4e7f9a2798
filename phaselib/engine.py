"""The batched training engine: R runs of one shape stepped together, with hand-written gradients.

Per step this computes what the dense reference loop (:func:`phaselib.train.train_reference`, the
oracle of the tests) computes, exactly up to float32 rounding order:

- **One-hot fast path.** Row (a, b) of the modular table has input one-hot(a) ++ one-hot(b), so the
  first layer's pre-activation is ``W1[:, a] + W1[:, p + b] + b1`` (a gather of two columns) and its
  weight gradient is a scatter-add of the hidden-layer gradients into columns ``a`` and ``p + b``
  (done as segment sums by ``embedding_bag``: deterministic, no atomics).
- **One forward over the table.** Each run's rows are ordered train split first, test split after
  (its own permutation of the table, with its own labels, so add/sub/mul runs and any fractions
  and seeds share one shape), so a recorded epoch does one forward over all rows, reads train and
  test loss/metric from it, and the backward pass reads the train prefix only.
- **Stacked runs.** The parameters and AdamW moments of all runs live in one flat buffer;
  :class:`StackedAdamW` steps them all at once with one learning rate per run (callbacks may scale
  it; a stopped run gets lr 0 and stays put). Norms and signals are computed on the stack.
- **No per-epoch host synchronisation.** Signals accumulate in a preallocated device tensor that is
  copied to the host once per ``chunk`` epochs. Callbacks and probers need host values, so when any
  is given the engine syncs once per *recorded* epoch instead (as the reference loop does).
- **Fused kernels.** On the CPU, a run's whole modular step runs in C (:mod:`phaselib.kernels`)
  block by block of rows, each block's hidden layer, logits, softmax cross-entropy and gradients
  finished in the core's cache, with small register-tiled matmuls of its own; the torch operations
  on whole tensors stay as the fallback (``PHASELIB_KERNELS=torch``, other devices, or no C
  compiler), and both paths are tested against the reference.
- **Threads.** On the CPU a modular batch shares its runs' fixed row segments (C kernels) or its
  runs (torch path) between worker threads running single-threaded operations, so a run's numbers
  do not depend on the thread count (see :class:`_Modular`); the regression control, whose
  tensors are small, steps its runs one after the other (see :class:`_Regression`). The stacked
  reductions (norms, loss and metric sums) run on one thread for the same reason. On the torch
  path, a batch with at most half as many runs as threads steps its run with the spare threads
  (multi-threaded matmuls), which this does not promise to round as a single thread does.

Definitions that differ from the reference only at float32 ties or extremes: accuracy counts a
row as correct when its label's logit attains the row maximum (``argmax`` breaks exact ties by
lowest index); every row's cross-entropy is ``log sum_j exp(z_j - max) - (z_label - max)`` from the
one exponential pass the softmax gradient needs, with ``z_j - max`` clamped at :data:`EXP_FLOOR`
(so a class more than 80 nats below the row maximum counts as exp(-80) instead of less: a relative
change of the row sum below 1e-34; the reference's ``log_softmax`` is exact there).

Probes are per run and outside the batched hot path: at each recorded epoch the run's parameters
are copied into a plain :class:`~phaselib.models.MLP` and its prober is called with that.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .config import RunConfig
from .data import Dataset
from . import kernels
from .executors import batch_key, torch_threads
from .models import MLP, make_model
from .record import RunRecord, concat_tables, rows_table, tidy
from .train import (BASE_COLUMNS, Callback, TrainControl, deterministic, make_dataset, recorded_epochs,
                    run_metadata, signal_name)

_LR_COL = BASE_COLUMNS.index(("lr", "all"))

EXP_FLOOR = -80.0
"""Lower clamp of ``logit - row max`` before ``exp``. torch's float32 ``exp`` takes a slow path
(measured 13-50x slower here) for arguments below about -87, where results are subnormal or 0;
confident late-training logits land there. exp(-80) = 1.8e-35, so a clamped class's probability
stays below 2e-35 instead of ~0: invisible next to a row sum >= 1 in float32, and it keeps the
softmax gradient out of the subnormal range, where matmuls slow down too."""

def padded_classes(p: int) -> int:
    """Logit columns of the modular step: ``p`` rounded up to a multiple of 8 (see :class:`_Modular`)."""
    return -(-p // 8) * 8


SEGMENTS = 2
"""Fixed row segments of each run's modular step on the C kernels (split at :func:`segment_split`;
the step is written for two): each is one job for a worker, with its own gradient sums, which the
engine adds in segment order. Fixed per run, so a run's numbers do not depend on the thread count,
and one run still fills two cores."""

BLOCK_ROWS = 256
"""Rows per block of the fused C step: a block's hidden layer, logits and gradients, one row per
column (about 250 KB at p = 97, width 64), and a segment's lane sums of the output layer's gradient
(200 KB) stay in a core's L2 while the three matmuls and the kernels pass over them. 128, 384 and
512 measured within 3% of 256."""

FORWARD_COST = 0.42
"""Cost of a test row (forward and loss only) relative to a train row, for balancing the segments:
``kernels.modular_rows`` timed on a train-only and a test-only row range (p = 97, width 64, one
core), as the commit that set it describes. It moves the split, so the records' last bits, not what they mean."""


def segment_split(n: int, N: int) -> int:
    """Where a run's first segment ends: a multiple of 8 (or n) in ``[0, n]`` that gives the two segments
    of a recorded step (``[0, s)``, and ``[s, N)`` with the N - n test rows) about equal cost."""
    return max(0, min(n, round((n + FORWARD_COST * (N - n)) / 2 / 8) * 8))


# ------------------------------------------------------------------ optimiser


class StackedAdamW:
    """AdamW over R runs' parameters held in one flat, block-major buffer, with one lr per run.

    The buffer holds block k of every run contiguously as an (R, n_k) matrix, blocks one after the
    other. The update is torch.optim.AdamW's single-tensor CPU path, op for op, so that for equal
    gradients it is bit-identical to R separate ``torch.optim.AdamW`` instances:
    ``p *= 1 - lr*wd``; ``m = lerp(m, g, 1-b1)``; ``v = b2*v + (1-b2)*g*g``;
    ``p += (-lr/(1-b1^t)) * m / (sqrt(v)/sqrt(1-b2^t) + eps)``.
    Per-run scalars (``1 - lr*wd`` and ``-lr/(1-b1^t)``) are formed in float64 and rounded to the
    parameter dtype, as Python-float scalars are in torch. A run with lr 0 does not move.
    """

    def __init__(self, flat: torch.Tensor, runs: int, blocks: Sequence[int], lr: Sequence[float],
                 weight_decay: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        if flat.dim() != 1 or flat.numel() != runs * sum(blocks):
            raise ValueError(f"flat: {tuple(flat.shape)} is invalid; allowed: a 1-D tensor of runs * sum(blocks) = "
                             f"{runs * sum(blocks)} elements")
        self.flat, self.runs, self.blocks = flat, runs, tuple(int(b) for b in blocks)
        self.weight_decay, self.betas, self.eps = float(weight_decay), betas, float(eps)
        self.exp_avg = torch.zeros_like(flat)
        self.exp_avg_sq = torch.zeros_like(flat)
        self._update = torch.empty_like(flat)
        self._denom = torch.empty_like(flat)
        self.t = 0
        self.set_lr(lr)

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """The (R, n_k) block views of a buffer laid out like the parameters."""
        out, off = [], 0
        for n in self.blocks:
            out.append(flat[off:off + self.runs * n].view(self.runs, n))
            off += self.runs * n
        return out

    def set_lr(self, lr: Sequence[float]) -> None:
        """Set the per-run learning rates (one host-to-device copy; not needed per step)."""
        lr64 = torch.as_tensor(np.asarray(lr, dtype=np.float64).reshape(self.runs))
        self.lr = lr64.to(self.flat.device)
        self._decay = (1.0 - self.lr * self.weight_decay).to(self.flat.dtype)[:, None]

    def step(self, grad: torch.Tensor) -> None:
        """One AdamW step of every run from the flat gradient ``grad`` (same layout as the params)."""
        b1, b2 = self.betas
        self.t += 1
        for p in self.views(self.flat):
            p.mul_(self._decay)
        self.exp_avg.lerp_(grad, 1 - b1)
        self.exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        bc1 = 1 - b1 ** self.t
        bc2_sqrt = (1 - b2 ** self.t) ** 0.5
        neg_step = torch.div(self.lr, bc1).neg_().to(self.flat.dtype)[:, None]
        torch.sqrt(self.exp_avg_sq, out=self._denom).div_(bc2_sqrt).add_(self.eps)
        for u, m in zip(self.views(self._update), self.views(self.exp_avg)):
            torch.mul(m, neg_step, out=u)  # addcdiv computes self + (value * t1) / t2
        self.flat.add_(self._update.div_(self._denom))


# ------------------------------------------------------------------ stacked model


@dataclass(frozen=True)
class _Shape:
    """Per-run parameter shapes: E1 = W1^T (in, width), b1, W2T = W2^T (width, out), b2."""

    in_dim: int
    width: int
    out_dim: int

    @property
    def blocks(self) -> tuple[tuple[int, ...], ...]:
        return (self.in_dim, self.width), (self.width,), (self.width, self.out_dim), (self.out_dim,)


class _Stack:
    """A flat block-major buffer with (R, *shape) views E1, b1, W2T, b2 (layer-major, as Linear's transpose)."""

    def __init__(self, shape: _Shape, runs: int, device: torch.device) -> None:
        self.shape, self.runs = shape, runs
        self.sizes = [int(np.prod(s)) for s in shape.blocks]
        self.flat = torch.zeros(runs * sum(self.sizes), device=device)
        self.E1, self.b1, self.W2T, self.b2 = self._views(self.flat)

    def _views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        out, off = [], 0
        for s, n in zip(self.shape.blocks, self.sizes):
            out.append(flat[off:off + self.runs * n].view(self.runs, *s))
            off += self.runs * n
        return out

    def like(self) -> "_Stack":
        """A zero buffer of the same layout (for gradients)."""
        return _Stack(self.shape, self.runs, self.flat.device)

    def load(self, r: int, model: MLP) -> None:
        """Copy an MLP's parameters into run ``r``."""
        self.E1[r].copy_(model.fc1.weight.detach().T)
        self.b1[r].copy_(model.fc1.bias.detach())
        self.W2T[r].copy_(model.fc2.weight.detach().T)
        self.b2[r].copy_(model.fc2.bias.detach())

    def store(self, r: int, model: MLP) -> MLP:
        """Copy run ``r``'s parameters into an MLP (what probers see) and return it."""
        with torch.no_grad():
            model.fc1.weight.copy_(self.E1[r].T)
            model.fc1.bias.copy_(self.b1[r])
            model.fc2.weight.copy_(self.W2T[r].T)
            model.fc2.bias.copy_(self.b2[r])
        return model

    def layer_norms(self) -> torch.Tensor:
        """(R, 3): per-layer L2 norms (weight and bias together) and the combined norm, as in train.py.

        On one thread: with several, torch splits a row's sum once a block passes its parallel grain
        (a width-256 run at p = 97), and how depends on the number of runs, so a run's norms
        changed in the last bits between training alone and in a batch."""
        with torch_threads(1):
            sq = [v.reshape(self.runs, -1).square().sum(1) for v in (self.E1, self.b1, self.W2T, self.b2)]
        per = torch.stack([torch.sqrt(sq[0] + sq[1]), torch.sqrt(sq[2] + sq[3])], 1)
        return torch.cat([per, torch.sqrt(per.square().sum(1, keepdim=True))], 1)


# ------------------------------------------------------------------ tasks


class _Task:
    """Data of R runs of one task, each run's rows ordered train split first, then test split.

    Ordering each run's rows this way (its own permutation of the table) makes its train rows a
    prefix: the forward pass covers all rows, the backward pass reads the first n of them.
    """

    def __init__(self, data: Sequence[Dataset], device: torch.device) -> None:
        self.R = len(data)
        self.device = device
        self.ntr = [len(d.train_idx) for d in data]
        self.N = data[0].n_total
        self.M = max(self.ntr)
        ntr = torch.tensor(self.ntr, dtype=torch.float32)
        self.n_train = ntr.to(device)
        self.n_test = (self.N - ntr).to(device)
        self.counts = torch.stack([self.n_train, self.n_test], 1)
        rows = torch.arange(self.N)[None, :]
        self.train_mask = (rows < ntr[:, None]).float().to(device)
        self.test_mask = 1.0 - self.train_mask
        self.row_order = [np.concatenate([d.train_idx, d.test_idx]) for d in data]  # each run: train rows, then test rows

    def step(self, P: _Stack, G: _Stack, record: bool) -> torch.Tensor | None:
        """Fill ``G`` with the gradient of each run's mean train loss at ``P``.

        With ``record``, the forward covers every row and the result is (R, 4): train loss, test
        loss, train metric, test metric at ``P``; otherwise only the train rows, and None.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Release worker threads, if any."""

    def _mean(self, G: _Stack) -> None:
        """Divide the gradient sums by each run's train size (on the small results, not per row)."""
        scale = 1.0 / self.n_train
        for g in (G.E1, G.b1, G.W2T, G.b2):
            g.mul_(scale.view(-1, *([1] * (g.dim() - 1))))

    def _split_sums(self, per_row: torch.Tensor) -> torch.Tensor:
        """(R, 2) train and test sums of a (R, N) per-row quantity (on one thread, for the reason
        :meth:`_Stack.layer_norms` gives)."""
        with torch_threads(1):
            return torch.stack([(per_row * self.train_mask).sum(1), (per_row * self.test_mask).sum(1)], 1)


class _Work:
    """Buffers of the torch path's modular step, one set per worker (reused by every run it takes).

    The hidden layer carries a constant unit (column ``width``: 0.5 + 0.5 = 1 after the gather)
    whose output weights are b2, so the matmuls add the output bias and sum its gradient without
    passes of their own. Logits are padded to ``P8`` classes (zero weights, bias -inf).
    """

    def __init__(self, p: int, P8: int, width: int, N: int, M: int, device: torch.device) -> None:
        H = width
        self.E = torch.empty(2 * p, H + 1, device=device)  # [E1 with b1 folded into the a-rows | 0.5]
        self.E[:, H] = 0.5
        self.W2T = torch.zeros(H + 1, P8, device=device)  # [W2^T ; b2]; padding classes 0 / -inf
        self.W2T[H, p:] = -torch.inf
        self.W2 = torch.empty(p, H, device=device)  # W2, contiguous, for dh = dz W2
        self.table = torch.empty(N, H + 1, device=device)  # hidden layer over the table, in table order
        self.h = torch.empty(N, H + 1, device=device)  # ... in the run's row order
        self.z = torch.empty(N, P8, device=device)  # logits, then exp(logit - row max)
        self.zl = torch.empty(N, 1, device=device)  # the label's logit
        self.zmax = torch.empty(N, 1, device=device)
        self.sum = torch.empty(N, 1, device=device)
        self.dz = torch.empty(M, p, device=device)  # softmax - onehot of the train rows
        self.dW2 = torch.empty(H + 1, p, device=device)
        self.dh = torch.empty(M, H, device=device)
        self.neg_one = torch.full((M, 1), -1.0, device=device)


class _Fused:
    """Buffers of the C kernels' modular step: every run's weights in the kernel's layouts (as
    :class:`_Work`'s), its segments' gradient sums and per-row results, and each worker's block scratch."""

    def __init__(self, R: int, p: int, P8: int, width: int, N: int, workers: int) -> None:
        H = width
        self.E = torch.empty(R, 2 * p, H + 1)
        self.E[:, :, H] = 0.5
        self.W2T = torch.zeros(R, H + 1, P8)
        self.W2T[:, H, p:] = -torch.inf
        self.dW2 = torch.empty(R, SEGMENTS, H + 1, P8)  # [dW2^T ; db2] of each segment (columns >= p: scratch)
        self.dE = torch.empty(R, SEGMENTS, 2 * p, H)
        self.db1 = torch.empty(R, SEGMENTS, H)
        self.sums = torch.empty(R, N)  # sum exp(z - max) of each row
        self.shift = torch.empty(R, N)  # z_label - max
        size = kernels.library().modular_scratch(p, width, BLOCK_ROWS)
        self.scratch = [torch.empty(size) for _ in range(workers)]  # each worker's block buffers (kernels.c)


class _Modular(_Task):
    """Modular arithmetic: one-hot first layer as a two-column gather, cross-entropy and accuracy.

    **C kernels (CPU).** Each run's step is two fixed row segments (:data:`SEGMENTS`,
    :func:`segment_split`), each one call of ``modular_rows`` (:mod:`phaselib.kernels`): blocks of
    :data:`BLOCK_ROWS` rows go through hidden layer, logits, loss and softmax gradient, and their
    share of the backward pass (the output layer's gradient, dh, the ReLU mask and the first-layer
    scatter-add) while they are in the core's L2. The whole-table matmuls they replace each
    streamed a multi-megabyte tensor, and two cores contended for memory. A segment accumulates
    its own gradient sums; the engine adds the two in order, so a run's numbers depend neither on
    its batch mates nor on which worker ran which segment, and ``workers = min(threads, 2R)``
    threads take the segments from one queue, the costliest first. The kernel's matmuls are its own
    (fixed summation order: the numbers do not depend on buffer addresses either, which MKL's did).

    **Torch path (any device).** Each run goes through forward, loss and backward on its own on
    whole-table tensors; with ``workers = min(threads, R)`` > 1 (CPU), that many threads share the
    runs, each taking the next (longest first) when it is free.

    Either way the optimiser, norms and signals then work on the stacked gradient.

    The torch path works on logits padded to a multiple of 8 classes: padding classes (bias
    -inf, clamped to :data:`EXP_FLOOR`) get probability below 2e-35 and no gradient, and aligned
    rows make the matmul markedly faster. Gradients are taken from the unpadded view. The C step
    holds a block's rows as vector lanes instead, so it computes the p classes alone (W2T keeps the
    padded layout, whose extra columns it does not read).
    """

    def __init__(self, data: Sequence[Dataset], device: torch.device, width: int, threads: int = 1) -> None:
        super().__init__(data, device)
        p, two_p, N, M = data[0].modulus, data[0].in_dim, self.N, self.M
        self.p = p
        self.first_b = int(data[0].b.min())  # 1 for div (b = 0 left out), else 0
        self.y = torch.as_tensor(np.stack([d.label[o] for d, o in zip(data, self.row_order)])).to(device)  # (R, N)
        self.native = kernels.use_native(device)
        self.nll = torch.empty(self.R, N, device=device)  # per-row results of a recorded epoch
        self.correct = torch.empty(self.R, N, dtype=torch.bool, device=device)
        P8 = padded_classes(p)
        # largest train split first (every run's forward covers the same N rows; its backward, n rows)
        self.queue_order = sorted(range(self.R), key=lambda r: -self.ntr[r])
        if not self.native:  # the torch path's row gather and scatter-add of the first-layer gradient
            self.order = [torch.as_tensor(o).to(device) for o in self.row_order]
            self.bags = [self._scatter_bags(torch.as_tensor(np.stack([d.a[o[:n]], d.b[o[:n]] + p], 1)), two_p,
                                            device) for d, o, n in zip(data, self.row_order, self.ntr)]
            self.workers = max(1, min(threads, self.R)) if device.type == "cpu" else 1
            self.work = [_Work(p, P8, width, N, M, device) for _ in range(self.workers)]
            worker_threads = max(1, threads // self.workers)
        else:  # each row's two one-hot positions, in the run's row order
            self.ia = [torch.as_tensor(d.a[o]).long().contiguous() for d, o in zip(data, self.row_order)]
            self.ib = [torch.as_tensor(d.b[o] + p).long().contiguous() for d, o in zip(data, self.row_order)]
            for ia, ib, y in zip(self.ia, self.ib, self.y):  # checked once here; the step calls skip the checks
                kernels.check_index(two_p, ia, ib)
                kernels.check_index(p, y)
            self.workers = max(1, min(threads, SEGMENTS * self.R))
            self.fused = _Fused(self.R, p, P8, width, N, self.workers)
            self.segments = {record: self._segments(record) for record in (False, True)}
            self._modular_rows = kernels.library().modular_rows
            worker_threads = 1
        # torch.set_num_threads reaches the calling thread's OpenMP setting only: a plain pool thread
        # would run MKL on every core (and small matmuls then round differently), so each worker sets it
        self.pool = (ThreadPoolExecutor(self.workers, initializer=torch.set_num_threads, initargs=(worker_threads,))
                     if self.workers > 1 else None)
        self._next = threading.Lock()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()

    @staticmethod
    def _scatter_bags(pair: torch.Tensor, rows: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The scatter-add ``dE[pair[i, k]] += src[i]`` (k = 0, 1) as bags: each destination row's sources.

        Source indices sorted by destination (stably) and bag offsets let ``embedding_bag`` do the
        scatter-add as segment sums: deterministic, in source-row order, without atomics.
        """
        dest = pair.T.reshape(-1)  # all a-destinations, then all b-destinations
        src = torch.arange(pair.shape[0]).repeat(2)
        order = torch.argsort(dest, stable=True)
        counts = torch.bincount(dest, minlength=rows)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)[:-1]])
        return src[order].to(device), offsets.to(device)

    def _segments(self, record: bool) -> list[tuple[int, int, int, bool, tuple, tuple]]:
        """The C step's jobs ``(run, lo, hi, record, arguments before the scratch, after it)``, costliest first.

        A run's segments are ``[0, s)`` and ``[s, n)`` of its train rows, the second also covering
        the test rows ``[n, N)`` when ``record``. Arguments are raw pointers into buffers that live as
        long as the task (so a step passes no tensors through ctypes)."""
        f, p, N = self.fused, self.p, self.N
        P8, H = f.W2T.shape[2], f.dE.shape[3]
        jobs = []
        for r in range(self.R):
            n = self.ntr[r]
            s = segment_split(n, N)
            for k, (lo, hi) in enumerate([(0, s), (s, N if record else n)]):
                out = (f.sums[r].data_ptr(), f.shift[r].data_ptr(), self.correct[r].data_ptr()) if record \
                    else (None, None, None)
                pre = (f.E[r].data_ptr(), f.W2T[r].data_ptr(), p, P8, H, self.ia[r].data_ptr(), self.ib[r].data_ptr(),
                       self.y[r].data_ptr(), lo, hi, n, BLOCK_ROWS, EXP_FLOOR, *out)
                post = (f.dW2[r, k].data_ptr(), f.dE[r, k].data_ptr(), 2 * p, f.db1[r, k].data_ptr())
                cost = min(hi, n) - min(lo, n) + FORWARD_COST * (hi - max(lo, n))
                jobs.append((cost, r, lo, hi, record, pre, post))
        jobs.sort(key=lambda j: -j[0])  # stable: ties keep run order
        return [j[1:] for j in jobs]

    def step(self, P: _Stack, G: _Stack, record: bool) -> torch.Tensor | None:
        if self.native:
            self._load_all(P)
            jobs, run = self.segments[record], self._run_segment
        else:
            jobs, run = [(r, P, G, record) for r in self.queue_order], self._run_torch
        if self.pool is None:
            self._jobs(0, run, iter(jobs))
        else:
            queue = iter(jobs)
            for f in [self.pool.submit(self._jobs, i, run, queue) for i in range(self.workers)]:
                f.result()
        if self.native:
            self._sum_segments(G)
        self._mean(G)
        if not record:
            return None
        loss, acc = self._split_sums(self.nll), self._split_sums(self.correct.float())
        return torch.cat([loss / self.counts, acc / self.counts], 1)

    def _jobs(self, worker: int, run: Callable, queue: Iterator[tuple]) -> None:
        """Run ``run(worker, *job)`` for the jobs this worker takes from ``queue`` (shared by the
        workers, each taking the next when it is free) until it is empty."""
        with torch.no_grad():  # grad mode is per thread
            while True:
                with self._next:
                    job = next(queue, None)
                if job is None:
                    return
                run(worker, *job)

    def _load(self, P: _Stack, runs: slice, E: torch.Tensor, W2T: torch.Tensor, W2: torch.Tensor | None) -> None:
        """The weights of ``runs`` into the kernels' layouts (stacked: E (k, 2p, H+1), W2T (k, H+1, P8),
        W2 (k, p, H)): first-layer columns with b1 folded into the a-rows, padded W2^T with b2 as
        the constant unit's row, and contiguous W2 for the torch path's dh (the C step reads dh's
        weights from W2T, and passes None). Both paths load through here."""
        p, H = self.p, P.E1.shape[2]
        torch.add(P.E1[runs, :p], P.b1[runs, None], out=E[:, :p, :H])
        E[:, p:, :H].copy_(P.E1[runs, p:])
        W2T[:, :H, :p].copy_(P.W2T[runs])
        W2T[:, H, :p].copy_(P.b2[runs])
        if W2 is not None:
            W2.copy_(P.W2T[runs].transpose(1, 2))

    def _load_all(self, P: _Stack) -> None:
        """Every run's weights into the C step's buffers."""
        f = self.fused
        self._load(P, slice(None), f.E, f.W2T, None)

    def _run_segment(self, worker: int, r: int, lo: int, hi: int, record: bool, pre: tuple, post: tuple) -> None:
        """One segment of run ``r`` on the C kernels, with the worker's scratch; then its rows' losses."""
        self._modular_rows(*pre, self.fused.scratch[worker].data_ptr(), *post)
        if record:  # recorded: nll = log(sum exp(z - max)) - (z_label - max)
            torch.sub(self.fused.sums[r, lo:hi].log_(), self.fused.shift[r, lo:hi], out=self.nll[r, lo:hi])

    def _sum_segments(self, G: _Stack) -> None:
        """Each run's gradient sums: its first segment's plus its second's."""
        f, p, H = self.fused, self.p, self.fused.dE.shape[3]
        torch.add(f.dW2[:, 0, :H, :p], f.dW2[:, 1, :H, :p], out=G.W2T)
        torch.add(f.dW2[:, 0, H, :p], f.dW2[:, 1, H, :p], out=G.b2)
        torch.add(f.dE[:, 0], f.dE[:, 1], out=G.E1)
        torch.add(f.db1[:, 0], f.db1[:, 1], out=G.b1)

    def _run_torch(self, worker: int, r: int, P: _Stack, G: _Stack, record: bool) -> None:
        """One run's step on torch operations (any device), on the worker's buffers."""
        w = self.work[worker]
        p, N, H, n = self.p, self.N, w.dh.shape[1], self.ntr[r]
        rows = N if record else n
        self._load(P, slice(r, r + 1), w.E[None], w.W2T[None], w.W2[None])
        # hidden layer: pre(a, b) = (W1[:, a] + b1) + W1[:, p + b] over the table (a broadcast sum,
        # the table being a-major), then the run's rows gathered in its order
        Ea, Eb = w.E[:p, None, :], w.E[None, p + self.first_b:, :]
        torch.add(Ea, Eb, out=w.table.view(p, -1, H + 1)).relu_()
        h = torch.index_select(w.table, 0, self.order[r][:rows], out=w.h[:rows])
        z = torch.mm(h, w.W2T, out=w.z[:rows])  # padded logits, bias through the constant unit
        y = self.y[r, :rows, None]
        zl = torch.gather(z, 1, y, out=w.zl[:rows])
        zmax = torch.amax(z, 1, keepdim=True, out=w.zmax[:rows])
        if record:
            torch.ge(zl, zmax, out=self.correct[r, :, None])  # the label attains the row maximum
        # one exponential per logit serves loss, softmax and gradient; arguments clamped at EXP_FLOOR
        e = z.sub_(zmax).clamp_min_(EXP_FLOOR).exp_()
        s = torch.sum(e, 1, keepdim=True, out=w.sum[:rows])
        if record:  # cross-entropy = log sum exp(z - max) - (z_label - max), every row
            nll = self.nll[r, :, None]
            torch.log(s, out=nll).sub_(zl).add_(zmax)
        dz = torch.div(e[:n, :p], s[:n], out=w.dz[:n])  # softmax of the train rows
        dz.scatter_add_(1, y[:n], w.neg_one[:n])  # softmax - onehot: n * dloss/dz
        # backward over the train rows: dW2 and db2 (the constant unit's row of h^T dz), then dh
        torch.mm(h[:n].T, dz, out=w.dW2)
        G.W2T[r].copy_(w.dW2[:H])
        G.b2[r].copy_(w.dW2[H])
        dh = torch.mm(dz, w.W2, out=w.dh[:n])
        torch.ops.aten.threshold_backward.grad_input(dh, h[:n, :H], 0.0, grad_input=dh)  # * ReLU'(pre)
        src, offsets = self.bags[r]  # dE1[a] += dpre[row], dE1[p + b] += dpre[row]
        G.E1[r].copy_(F.embedding_bag(src, dh, offsets, mode="sum"))
        torch.sum(G.E1[r, :p], 0, out=G.b1[r])  # every train row is in exactly one a-column


class _Regression(_Task):
    """The regression control: dense 1-input first layer, MSE loss and R^2, run by run.

    The tensors are small (n = 2000, width 64); each run goes through plain matmuls on its own,
    as in :class:`_Modular`, so that its numbers do not depend on the other runs of the batch
    (batched matmuls over a varying number of runs need not round alike).
    """

    def __init__(self, data: Sequence[Dataset], device: torch.device, width: int) -> None:
        super().__init__(data, device)
        self.x = torch.stack([torch.cat([d.x_train, d.x_test]) for d in data]).to(device)  # (R, N, 1)
        self.y = torch.stack([torch.cat([d.y_train, d.y_test]) for d in data]).to(device)
        # SS_tot of each split, computed as loss_and_metric does
        self.ss_tot = torch.stack([torch.stack([((d.y_train - d.y_train.mean()) ** 2).sum(),
                                                ((d.y_test - d.y_test.mean()) ** 2).sum()]) for d in data]).to(device)
        self.sq = torch.zeros(self.R, self.N, device=device)  # squared residuals of a recorded epoch

    def step(self, P: _Stack, G: _Stack, record: bool) -> torch.Tensor | None:
        for r, n in enumerate(self.ntr):
            rows = self.N if record else n
            x = self.x[r, :rows]
            h = torch.addmm(P.b1[r], x, P.E1[r]).relu_()
            resid = torch.addmm(P.b2[r], h, P.W2T[r]).sub_(self.y[r, :rows])
            if record:
                torch.square(resid.squeeze(1), out=self.sq[r])
            dz = resid[:n] * 2.0  # n * d(mean squared error)/d(out)
            torch.mm(h[:n].T, dz, out=G.W2T[r])
            torch.sum(dz, 0, out=G.b2[r])
            dh = torch.mm(dz, P.W2T[r].T)
            dpre = torch.ops.aten.threshold_backward.grad_input(dh, h[:n], 0.0, grad_input=dh)  # * ReLU'(pre)
            torch.mm(x[:n].T, dpre, out=G.E1[r])
            torch.sum(dpre, 0, out=G.b1[r])
        self._mean(G)
        if not record:
            return None
        ss_res = self._split_sums(self.sq)
        return torch.cat([ss_res / self.counts, 1.0 - ss_res / self.ss_tot], 1)


# ------------------------------------------------------------------ the engine


def _build(cfgs: Sequence[RunConfig], data: Sequence[Dataset], device: torch.device) -> tuple[_Task, _Stack]:
    """The task's stacked data and the runs' initial parameters (each from make_model, as the reference).

    Call inside :func:`deterministic`: a modular batch on the CPU shares its runs (on the C kernels,
    their segments) between worker threads (see :class:`_Modular`) and sets the calling thread's
    intra-op thread count to the rest (``threads // workers``, at least 1); the caller's context
    restores it.
    """
    c0, d0 = cfgs[0], data[0]
    if c0.task == "regression":
        task: _Task = _Regression(data, device, c0.width)
    else:
        threads = torch.get_num_threads()
        task = _Modular(data, device, c0.width, threads)
        torch.set_num_threads(max(1, threads // task.workers))
    P = _Stack(_Shape(d0.in_dim, c0.width, d0.out_dim), len(cfgs), device)
    for r, (c, d) in enumerate(zip(cfgs, data)):
        P.load(r, make_model(d.in_dim, c.width, d.out_dim, c.seed))
    return task, P


def initial_gradients(configs: Sequence[RunConfig]) -> list[dict[str, torch.Tensor]]:
    """Each run's first-step gradient from the batched fast path, keyed as ``MLP.named_parameters()``.

    All runs are batched together (one batch key); the values are what step 0 applies.
    """
    configs = list(configs)
    _check_batch(configs, None, None)
    data = [make_dataset(c) for c in configs]
    with deterministic(configs[0].threads), torch.no_grad():
        task, P = _build(configs, data, torch.device(configs[0].device))
        G = P.like()
        try:
            task.step(P, G, record=False)
        finally:
            task.close()
    return [{"fc1.weight": G.E1[r].T.clone(), "fc1.bias": G.b1[r].clone(),
             "fc2.weight": G.W2T[r].T.clone(), "fc2.bias": G.b2[r].clone()} for r in range(len(configs))]


def _check_batch(configs: Sequence[RunConfig], callbacks, probers) -> None:
    if not configs:
        raise ValueError("configs: [] is invalid; allowed: a non-empty list of RunConfig")
    keys = {batch_key(c) for c in configs}
    if len(keys) != 1:
        raise ValueError(f"configs: {len(keys)} different batch keys; allowed: runs of one batch key "
                         "(task, modulus, width, div-or-not, epochs, lr, weight_decay, record_every, probes, device)")
    for name, seq in (("callbacks", callbacks), ("probers", probers)):
        if seq is not None and len(seq) != len(configs):
            raise ValueError(f"{name}: {len(seq)} entries is invalid; allowed: one per config ({len(configs)})")


def train_batched(configs: Sequence[RunConfig], callbacks: Sequence[Sequence[Callback]] | None = None,
                  probers: Sequence | None = None, chunk: int = 100,
                  progress: Callable[[int], None] | None = None) -> list[RunRecord]:
    """Train runs of one batch key together; one :class:`RunRecord` per config, in order.

    Records have the reference trainer's layout (``BASE_COLUMNS`` at ``recorded_epochs``) and
    ``meta["engine"] == "batched"``; ``wall_time_s`` is the batch's wall time divided by its size
    (``batch_wall_time_s`` and ``batch_size`` hold the totals). ``callbacks[i]`` and ``probers[i]``
    belong to config ``i``. Without them, signals reach the host once per ``chunk`` epochs; with
    any of them, once per recorded epoch. ``progress`` gets the number of epochs just completed.
    """
    configs = list(configs)
    _check_batch(configs, callbacks, probers)
    if chunk < 1:
        raise ValueError(f"chunk: {chunk!r} is invalid; allowed: an integer >= 1")
    t0 = time.perf_counter()
    cfg0, R = configs[0], len(configs)
    device = torch.device(cfg0.device)
    cfgs = configs
    data = [make_dataset(c) for c in configs]
    cbs = [list(callbacks[i]) if callbacks is not None else [] for i in range(R)]
    prb = [probers[i] if probers is not None else None for i in range(R)]
    sync_each = any(cbs) or any(p is not None for p in prb)
    rec = recorded_epochs(cfg0)
    is_rec = np.zeros(cfg0.epochs, dtype=bool)
    is_rec[rec] = True
    controls = [TrainControl() for _ in range(R)]
    extra: list[list[dict]] = [[] for _ in range(R)]
    rows_of = np.full(R, len(rec))  # rows each run keeps
    last = np.full(R, cfg0.epochs - 1)
    host = np.zeros((len(rec), R, len(BASE_COLUMNS)), dtype=np.float32)
    with deterministic(cfg0.threads), torch.no_grad():
        threads = torch.get_num_threads()  # _build may move some to worker threads; probers get them all
        task, P = _build(cfgs, data, device)
        kernel_path = "native" if getattr(task, "native", False) else "torch"
        try:
            G = P.like()
            lr = np.array([c.lr for c in cfgs], dtype=np.float64)
            opt = StackedAdamW(P.flat, R, P.sizes, lr, cfg0.weight_decay)
            lr_col = torch.tensor(lr, dtype=torch.float32, device=device)
            buf = torch.empty(len(rec), R, len(BASE_COLUMNS), device=device)
            probe_models: dict[int, MLP] = {}
            stopped = np.zeros(R, dtype=bool)
            row = flushed = done_epochs = 0
            for epoch in range(cfg0.epochs):
                record = bool(is_rec[epoch])
                stats = task.step(P, G, record)
                if record:
                    torch.cat([G.layer_norms(), P.layer_norms(), stats, lr_col[:, None]], 1, out=buf[row])
                    if sync_each:
                        flushed = _flush(buf, host, row, row + 1)  # the one host sync callbacks and probers need
                        changed = _host_hooks(epoch, row, host, cfgs, data, cbs, prb, controls, extra, stopped,
                                              P, probe_models, device, threads)
                        for r in changed:  # as train_reference: the row shows the lr the step will use
                            lr[r] = cfgs[r].lr * controls[r].lr_scale
                            host[row, r, _LR_COL] = lr[r]
                            if controls[r].stop_reason is not None:  # frozen: lr 0 leaves its parameters as they are
                                stopped[r], rows_of[r], last[r], lr[r] = True, row + 1, epoch, 0.0
                        if changed:
                            opt.set_lr(lr)
                            lr_col = torch.tensor(lr, dtype=torch.float32, device=device)
                    row += 1
                    if stopped.all():
                        break
                opt.step(G.flat)
                if (epoch + 1) % chunk == 0:
                    flushed = _flush(buf, host, flushed, row)
                    if progress is not None:
                        progress(epoch + 1 - done_epochs)
                    done_epochs = epoch + 1
            flushed = _flush(buf, host, flushed, row)
            if progress is not None and epoch + 1 > done_epochs:
                progress(epoch + 1 - done_epochs)
        finally:
            task.close()
    wall = time.perf_counter() - t0
    records: list[RunRecord] = []
    for r, c in enumerate(cfgs):
        n = int(rows_of[r])
        values = host[:n, r].astype(np.float64)
        table = tidy(c.key, rec[:n], {col: values[:, i] for i, col in enumerate(BASE_COLUMNS)})
        if extra[r]:
            table = concat_tables([table, rows_table(c.key, extra[r])])
        meta = run_metadata(c, wall / R, controls[r], int(last[r]) + 1, "batched")
        meta.update(batch_size=R, batch_wall_time_s=wall, kernels=kernel_path)
        records.append(RunRecord(c, table, meta))
    return records


def _flush(buf: torch.Tensor, host: np.ndarray, flushed: int, row: int) -> int:
    """Copy recorded rows ``[flushed, row)`` to the host (one device-to-host transfer); return ``row``."""
    if row > flushed:
        host[flushed:row] = buf[flushed:row].cpu().numpy()
    return row


def _host_hooks(epoch: int, row: int, host: np.ndarray, cfgs: Sequence[RunConfig], data: Sequence[Dataset],
                cbs: Sequence[Sequence[Callback]], prb: Sequence, controls: Sequence[TrainControl],
                extra: list[list[dict]], stopped: np.ndarray, P: _Stack, probe_models: dict[int, MLP],
                device: torch.device, threads: int) -> list[int]:
    """Run probers then callbacks of each live run at a recorded epoch, as train_reference does.

    Returns the runs whose lr scale changed or that were stopped.
    """
    changed = []
    for r in range(len(cfgs)):
        if stopped[r] or (not cbs[r] and prb[r] is None):
            continue
        if prb[r] is not None:
            if r not in probe_models:
                with torch.random.fork_rng(devices=[]):  # building a module draws from the global RNG
                    probe_models[r] = MLP(data[r].in_dim, cfgs[r].width, data[r].out_dim).to(device)
            model = P.store(r, probe_models[r])
            step_threads = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                with torch.enable_grad():
                    extra[r].extend(prb[r].rows(model, epoch, data[r].x_train.to(device), data[r].y_train.to(device)))
            finally:
                torch.set_num_threads(step_threads)
        if cbs[r]:
            ctl = controls[r]
            ctl.epoch = epoch
            sig = {signal_name(s, l): float(v) for (s, l), v in zip(BASE_COLUMNS, host[row, r])}
            for x in extra[r]:
                if x["epoch"] == epoch:
                    sig[signal_name(x["signal"], x["layer"])] = x["value"]
            scale_before = ctl.lr_scale
            for cb in cbs[r]:
                cb(epoch, sig, ctl)
            if ctl.lr_scale != scale_before or ctl.stop_reason is not None:
                changed.append(r)
    return changed
