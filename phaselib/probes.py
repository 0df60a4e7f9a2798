"""The probe schedule: which signal is measured at which epoch, as rows of the run's tidy table.

Each signal family has its own cadence (an epoch e is due when ``e % every == 0``; 0 disables):
the cheap representation signals every epoch, CKA against the previous CKA probe, the gradient
noise, and the Hessian. :class:`Prober` keeps what must persist between probes (the previous
representation for CKA, the previous eigenvectors for warm starts, its own random generator).

Rows are ``{"epoch", "signal", "layer", "value", "stderr"}``; ``layer`` is ``"all"`` for
whole-model values (the representation signals describe the one hidden layer and are "all"
too) and ``"fc1"``/``"fc2"`` for per-layer blocks; ``stderr`` is NaN where a value is exact
or has no standard error. Eigenvalue accuracy goes in as its own signals
``hessian_lmax_residual`` (||Hv - lambda v||, a Bauer-Fike bound on the error) and
``hessian_lmax_converged`` (0/1), and its cost ``hessian_lmax_iters`` (Hessian-vector
products); likewise for lmin. ``hessian_trace`` is Hutchinson's estimate with its standard error
(the articles' estimator); for the paper's MLP the exact trace costs about three products
(:func:`phaselib.hessian.exact_block_traces`) and is recorded beside it as
``hessian_trace_exact``, which checks those error bars on every probe.

Per-layer Hessian blocks get lambda_max (and the gradient cosine) from the block operator and
their trace from the whole-model Hutchinson products, but no lambda_min: in a
two-layer ReLU MLP the output is linear in fc2's parameters and piecewise linear in fc1's, so
each diagonal block is a Gauss-Newton matrix J^T (d^2 loss / d out^2) J, positive semidefinite
(lambda_min = 0); the negative curvature lives in the fc1-fc2 cross terms.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .config import ConfigError
from .hessian import (HessianOp, exact_block_traces, exact_trace_applies, grad_eig_cosine, hessian_operator,
                      hutchinson_block_traces, lambda_max, lambda_min, task_loss)
from .noise import microbatch_grad_variance, per_example_noise_scales
from .representation import CHEAP, cheap_signals, linear_cka

#: The signals cheap enough for every epoch (one forward pass on the probe set).
CHEAP_SIGNALS: tuple[str, ...] = CHEAP
#: Relative eigenvalue tolerances of the tracked eigensolves. lambda_min sits at the edge of a
#: near-continuous bulk (neighbour gaps ~1% of |lambda_min|, ~1e-5 of the spectral width on the
#: mod-97 model), so 1e-2 is what a warm start makes cheap (benchmarks/hessian.py).
LMAX_TOL = 1e-4
LMIN_TOL = 1e-2
#: Micro-batches for the gradient variance across micro-batches.
N_MICRO = 8


@dataclass(frozen=True)
class ProbeSchedule:
    """Cadences (in epochs; 0 disables) and sizes of the probes.

    ``lanczos_iters`` caps the Hessian-vector products of one eigensolve (a cold lambda_min on
    the trained mod-97 model needs ~170-260 at ``LMIN_TOL``, a warm-started one ~35-45), ``hutchinson_probes`` is the
    number of Rademacher vectors of the trace estimate, ``probe_size`` the fixed probe set of the
    representation signals. ``per_layer`` adds the fc1/fc2 rows of the noise and Hessian signals.
    """

    every_epoch: tuple[str, ...] = CHEAP_SIGNALS
    cka_every: int = 10
    noise_every: int = 50
    hessian_every: int = 100
    probe_size: int = 512
    lanczos_iters: int = 300
    hutchinson_probes: int = 30
    per_layer: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "every_epoch", tuple(self.every_epoch))
        unknown = [s for s in self.every_epoch if s not in CHEAP_SIGNALS]
        if unknown:
            raise ConfigError(f"every_epoch: {unknown!r} is invalid; allowed: a subset of {list(CHEAP_SIGNALS)}")
        for name in ("cka_every", "noise_every", "hessian_every"):
            _integer(name, getattr(self, name), 0, "integer >= 0 (0 disables)")
        _integer("probe_size", self.probe_size, 1, "integer >= 1")
        _integer("lanczos_iters", self.lanczos_iters, 2, "integer >= 2")
        _integer("hutchinson_probes", self.hutchinson_probes, 2, "integer >= 2 (a standard error needs two)")
        if not isinstance(self.per_layer, bool):
            raise ConfigError(f"per_layer: {self.per_layer!r} is invalid; allowed: True or False")


def _integer(name: str, value: object, low: int, allowed: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name}: {value!r} is out of range; allowed: {allowed}")


def _due(every: int, epoch: int) -> bool:
    return every > 0 and epoch % every == 0


def _row(epoch: int, signal: str, value: float, stderr: float = math.nan, layer: str = "all") -> dict:
    return {"epoch": int(epoch), "signal": signal, "layer": layer, "value": float(value), "stderr": float(stderr)}


class Prober:
    """Measures the signals due at an epoch; stateful for CKA and the eigenvector warm starts.

    ``probe_x``/``probe_y`` are the fixed probe examples (a random ``probe_size`` subset is kept
    if more are given). The noise and Hessian signals use the train split passed to
    :meth:`rows`. The prober reads the model, never changes its parameters or gradients, and
    draws randomness only from its own ``torch.Generator`` seeded with ``seed``.
    """

    def __init__(self, schedule: ProbeSchedule, task: str, probe_x: Tensor, probe_y: Tensor, seed: int) -> None:
        self.schedule = schedule
        self.loss_fn = task_loss(task)
        self.generator = torch.Generator().manual_seed(seed)
        if len(probe_x) > schedule.probe_size:
            keep = torch.randperm(len(probe_x), generator=self.generator)[: schedule.probe_size]
            keep = keep.sort().values.to(probe_x.device)
            probe_x, probe_y = probe_x[keep], probe_y[keep]
        self.probe_x, self.probe_y = probe_x, probe_y
        self._prev_hidden: Tensor | None = None
        self._vectors: dict[tuple[str, str], Tensor] = {}

    def rows(self, model: nn.Module, epoch: int, x_train: Tensor, y_train: Tensor) -> list[dict]:
        """The tidy rows of every signal due at ``epoch`` (an empty list when none is)."""
        s = self.schedule
        out: list[dict] = []
        want_cka = _due(s.cka_every, epoch)
        if s.every_epoch or want_cka:
            with torch.inference_mode():
                hidden = model.hidden(self.probe_x)
            out += self._representation(epoch, hidden, want_cka)
        if _due(s.noise_every, epoch):
            out += self._noise(model, epoch, x_train, y_train)
        if _due(s.hessian_every, epoch):
            out += self._hessian(model, epoch, x_train, y_train)
        return out

    def _representation(self, epoch: int, hidden: Tensor, want_cka: bool) -> list[dict]:
        values = cheap_signals(hidden, self.schedule.every_epoch)
        out = [_row(epoch, name, v) for name, v in values.items()]
        if want_cka:
            if self._prev_hidden is not None:
                out.append(_row(epoch, "cka_prev", linear_cka(hidden, self._prev_hidden)))
            self._prev_hidden = hidden.detach().clone()
        return out

    def _layers(self, model: nn.Module) -> list[str | None]:
        """None (the whole model) first, then each layer when per-layer rows are wanted."""
        layers = list(dict.fromkeys(n.split(".")[0] for n, _ in model.named_parameters()))
        return [None] + (layers if self.schedule.per_layer else [])

    def _noise(self, model: nn.Module, epoch: int, x: Tensor, y: Tensor) -> list[dict]:
        scales = per_example_noise_scales(model, self.loss_fn, x, y)
        micro = microbatch_grad_variance(model, self.loss_fn, x, y, n_micro=N_MICRO, generator=self.generator)
        out = []
        for layer in self._layers(model):
            key = layer or "all"
            ns, mv = scales[key], micro[key]
            out += [_row(epoch, "b_simple", ns.b_simple, layer=key),
                    _row(epoch, "grad_trace_sigma", ns.trace_sigma, layer=key),
                    _row(epoch, "grad_sq_norm", ns.grad_sq_norm, layer=key),
                    _row(epoch, "grad_microbatch_var", mv.value, mv.stderr, layer=key)]
        return out

    def _eig_rows(self, epoch: int, signal: str, op: HessianOp, which: str, key: str) -> tuple[list[dict], Tensor]:
        solve, tol = (lambda_max, LMAX_TOL) if which == "max" else (lambda_min, LMIN_TOL)
        eig = solve(op, self._vectors.get((key, which)), tol=tol, max_iter=self.schedule.lanczos_iters,
                    generator=self.generator)
        self._vectors[(key, which)] = eig.vector
        rows = [_row(epoch, signal, eig.value, layer=key),
                _row(epoch, f"{signal}_residual", eig.residual, layer=key),
                _row(epoch, f"{signal}_converged", float(eig.converged), layer=key),
                _row(epoch, f"{signal}_iters", eig.iterations, layer=key)]
        return rows, eig.vector

    def _hessian(self, model: nn.Module, epoch: int, x: Tensor, y: Tensor) -> list[dict]:
        op = hessian_operator(model, self.loss_fn, x, y)
        rows, vmax = self._eig_rows(epoch, "hessian_lmax", op, "max", "all")
        rows += self._eig_rows(epoch, "hessian_lmin", op, "min", "all")[0]
        rows.append(_row(epoch, "grad_eig_cos", grad_eig_cosine(op.gradient, vmax)))
        # whole-model and block traces from one set of products
        traces = hutchinson_block_traces(op, self.schedule.hutchinson_probes, generator=self.generator)
        exact = exact_block_traces(model, self.loss_fn, x, y) if exact_trace_applies(model, self.loss_fn) else {}
        for layer in self._layers(model):
            tr = traces[layer or "all"]
            rows.append(_row(epoch, "hessian_trace", tr.value, tr.stderr, layer=layer or "all"))
            if exact:
                rows.append(_row(epoch, "hessian_trace_exact", exact[layer or "all"].value, layer=layer or "all"))
            if layer is not None:  # diagonal blocks are PSD here: no lambda_min (module docstring)
                block = hessian_operator(model, self.loss_fn, x, y, layer)
                layer_rows, vmax = self._eig_rows(epoch, "hessian_lmax", block, "max", layer)
                rows += layer_rows
                rows.append(_row(epoch, "grad_eig_cos", grad_eig_cosine(block.gradient, vmax), layer=layer))
        return rows
