"""Gradient noise: the noise scale B_simple and the gradient variance across micro-batches.

B_simple = tr(Sigma) / |G|^2 (McCandlish, Kaplan, Amodei et al. 2018, "An Empirical Model of
Large-Batch Training"), G the mean gradient and Sigma the covariance of per-example gradients.
Exact from per-example gradients, or cheaply from the gradients of two batch sizes. For the
paper's MLP under cross-entropy or MSE, the per-example squared gradient norms have a closed form
(:func:`_mlp_sq_norms`): a few matmuls instead of ``torch.func.vmap`` over ``grad``, one
gradient per example; other models and losses take the ``vmap`` path. Everything is computed
for the whole model (``"all"``) and for each layer's parameters (key = layer name, e.g.
``"fc1"``): tr(Sigma) and |G|^2 split over layers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from .models import is_paper_mlp, mlp_forward

LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class NoiseScale:
    """B_simple = trace_sigma / grad_sq_norm, with standard errors where they are estimates.

    ``stderr`` is B_simple's (None when exact over the given examples); ``method`` is
    ``"per_example"`` or ``"two_batch"``; ``n`` the examples (or batch pairs) used.
    """

    b_simple: float
    trace_sigma: float
    grad_sq_norm: float
    stderr: float | None
    method: str
    n: int = 0
    trace_sigma_stderr: float = math.nan
    grad_sq_norm_stderr: float = math.nan


@dataclass(frozen=True)
class MicrobatchVariance:
    """Total variance tr Cov(g_j) of micro-batch mean gradients g_j, its standard error, the split."""

    value: float
    stderr: float
    n_micro: int
    micro_size: int


def param_groups(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """``{"all": every parameter name, layer: that layer's names}``, layers by name prefix."""
    names = [n for n, _ in model.named_parameters()]
    groups: dict[str, tuple[str, ...]] = {"all": tuple(names)}
    for n in names:
        layer = n.split(".")[0]
        groups[layer] = groups.get(layer, ()) + (n,)
    return groups


def _params(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.detach() for n, p in model.named_parameters()}


def _sq_norms(tensors: dict[str, Tensor], groups: dict[str, tuple[str, ...]], batch_dims: int) -> dict[str, Tensor]:
    """Per group, the squared norm summed over each tensor's non-batch dimensions."""
    per = {n: t.square().flatten(batch_dims).sum(-1) for n, t in tensors.items()}
    return {g: sum(per[n] for n in names) for g, names in groups.items()}


def mean_gradient(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """G: the gradient of the mean loss over (x, y), per parameter name."""
    params = _params(model)
    return grad(lambda p: loss_fn(functional_call(model, p, (x,)), y))(params)


def per_example_grads(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """Per-example gradients g_i (shape (n, *param_shape) per name) by ``vmap`` over ``grad``."""
    params = _params(model)

    def one(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        return loss_fn(functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

    return vmap(grad(one), in_dims=(None, 0, 0))(params, x, y)


def _mlp_sq_norms(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor) -> dict[str, tuple[float, float]] | None:
    """Per parameter name: (mean_i |g_i|^2, |G|^2) in closed form, in float64; None if not an MLP + CE/MSE.

    With a = W1 x + b1, h = relu(a), out = W2 h + b2 and d_i = dloss_i/dout_i (softmax - onehot
    for cross-entropy, 2 (out - y) / out_dim for mean squared error), example i's gradients are
    rank one: dW2 = d_i h_i^T, db2 = d_i, dW1 = u_i x_i^T, db1 = u_i with u_i = (W2^T d_i) * [a_i > 0]
    (ReLU' = 0 at 0, as autograd). So |dW2|^2 = |d_i|^2 |h_i|^2 and |dW1|^2 = |u_i|^2 |x_i|^2 (the
    rank-one trick of I. Goodfellow, "Efficient per-example gradient computations", 2015), and G
    is the mean of the rank-one terms. In float64, mean |g_i|^2 - |G|^2 = tr(Sigma) loses nothing
    that matters unless B_simple < ~1e-10.
    """
    if not is_paper_mlp(model) or loss_fn not in (F.cross_entropy, F.mse_loss):
        return None
    xd = x.double()
    (_, _, W2, _), a, h, out = mlp_forward(model, xd, torch.float64)  # xd is cast once, here
    if loss_fn is F.cross_entropy:
        d = torch.softmax(out, 1)
        d[torch.arange(len(y), device=d.device), y] -= 1.0
    else:
        d = 2.0 * (out - y.double().reshape(out.shape)) / out.shape[1]
    u = (d @ W2) * (a > 0)
    n = len(x)
    d2, u2 = d.square().sum(1), u.square().sum(1)
    mean_g = {"fc1.weight": u.T @ xd / n, "fc1.bias": u.mean(0), "fc2.weight": d.T @ h / n, "fc2.bias": d.mean(0)}
    mean_sq = {"fc1.weight": (u2 * xd.square().sum(1)).mean(), "fc1.bias": u2.mean(),
               "fc2.weight": (d2 * h.square().sum(1)).mean(), "fc2.bias": d2.mean()}
    return {k: (float(mean_sq[k]), float(mean_g[k].square().sum())) for k in mean_g}


NOISE_METHODS: tuple[str, ...] = ("auto", "vmap")


def per_example_noise_scales(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, *,
                             chunk_size: int = 128, method: str = "auto") -> dict[str, NoiseScale]:
    """Exact B_simple over the given n examples, for the model and each layer.

    tr(Sigma) = (1/n) sum_i |g_i - G|^2, the examples being the population. ``method="auto"``
    uses the closed form of :func:`_mlp_sq_norms` (tr(Sigma) = mean |g_i|^2 - |G|^2 in float64)
    when the model is the paper's MLP under cross-entropy or MSE; otherwise, or with
    ``method="vmap"``, per-example gradients from ``vmap`` over ``grad``, their squared
    deviations from G (G first, so no cancellation) reduced ``chunk_size`` examples at a time.
    """
    if method not in NOISE_METHODS:
        raise ValueError(f"method: {method!r} is invalid; allowed: one of {list(NOISE_METHODS)}")
    groups = param_groups(model)
    n = len(x)
    closed = _mlp_sq_norms(model, loss_fn, x, y) if method == "auto" else None
    if closed is not None:
        g_sq = {k: sum(closed[nm][1] for nm in names) for k, names in groups.items()}
        # a population variance: >= 0, though the difference can round a hair below when all g_i agree
        trace = {k: max(0.0, sum(closed[nm][0] for nm in names) - g_sq[k]) for k, names in groups.items()}
    else:
        g_sq, trace = _vmap_trace(model, loss_fn, x, y, groups, chunk_size)
    return {k: NoiseScale(b_simple=trace[k] / g_sq[k] if g_sq[k] > 0 else math.inf, trace_sigma=trace[k],
                          grad_sq_norm=g_sq[k], stderr=None, method="per_example", n=n) for k in groups}


def _vmap_trace(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, groups: dict[str, tuple[str, ...]],
                chunk_size: int) -> tuple[dict[str, float], dict[str, float]]:
    """Per group: |G|^2 and tr(Sigma) = mean |g_i - G|^2 from ``vmap`` over ``grad``, in chunks."""
    params = _params(model)
    g_mean = mean_gradient(model, loss_fn, x, y)
    g_sq = {k: float(v) for k, v in _sq_norms(g_mean, groups, 0).items()}

    def one(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        return loss_fn(functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

    def deviation(xi: Tensor, yi: Tensor) -> Tensor:
        g = grad(one)(params, xi, yi)
        per = {n: (g[n] - g_mean[n]).square().sum() for n in g}
        return torch.stack([sum(per[n] for n in names) for names in groups.values()])

    dev = vmap(deviation)
    n = len(x)
    total = torch.zeros(len(groups), dtype=torch.float64, device=x.device)
    for start in range(0, n, chunk_size):
        total = total + dev(x[start:start + chunk_size], y[start:start + chunk_size]).double().sum(0)
    return g_sq, dict(zip(groups, (total / n).tolist()))


def per_example_noise_scale(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, *,
                            chunk_size: int = 128) -> NoiseScale:
    """Exact whole-model B_simple over the given examples (see :func:`per_example_noise_scales`)."""
    return per_example_noise_scales(model, loss_fn, x, y, chunk_size=chunk_size)["all"]


def _batch_grads(model: nn.Module, loss_fn: LossFn, xs: Tensor, ys: Tensor) -> dict[str, Tensor]:
    """Mean-loss gradients of a stack of equal-size batches: xs (k, B, ...) -> (k, *param_shape)."""
    params = _params(model)

    def batch_loss(p: dict[str, Tensor], xb: Tensor, yb: Tensor) -> Tensor:
        return loss_fn(functional_call(model, p, (xb,)), yb)

    return vmap(grad(batch_loss), in_dims=(None, 0, 0))(params, xs, ys)


def two_batch_noise_scales(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, *, b_small: int, b_big: int,
                           n_pairs: int = 16, generator: torch.Generator | None = None) -> dict[str, NoiseScale]:
    """B_simple from gradients at two batch sizes (McCandlish et al. 2018, appendix A).

    Each of ``n_pairs`` pairs draws a small and a big batch i.i.d. with replacement (so E|G_B|^2
    = |G|^2 + tr(Sigma)/B exactly, Sigma the population covariance) and gives the unbiased
      |G|^2  ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small),
      tr(S)  ~ (|G_small|^2 - |G_big|^2) / (1/B_small - 1/B_big).
    B_simple = mean tr(S) / mean |G|^2 (ratio of means); its stderr by the delta method.
    """
    if not 1 <= b_small < b_big:
        raise ValueError(f"b_small, b_big: {b_small}, {b_big} are invalid; need 1 <= b_small < b_big")
    if n_pairs < 2:
        raise ValueError(f"n_pairs: {n_pairs} is out of range (need >= 2 for a standard error)")
    groups = param_groups(model)
    n = len(x)
    sq = {}
    for size in (b_small, b_big):
        idx = torch.randint(0, n, (n_pairs, size), generator=generator).to(x.device)
        sq[size] = _sq_norms(_batch_grads(model, loss_fn, x[idx], y[idx]), groups, 1)
    out = {}
    for k in groups:
        small, big = sq[b_small][k].double(), sq[b_big][k].double()
        g2 = (b_big * big - b_small * small) / (b_big - b_small)
        tr = (small - big) / (1 / b_small - 1 / b_big)
        g2m, trm = float(g2.mean()), float(tr.mean())
        b = trm / g2m if g2m != 0 else math.inf
        se = float((tr - b * g2).std() / (math.sqrt(n_pairs) * abs(g2m))) if g2m != 0 else math.nan
        out[k] = NoiseScale(b_simple=b, trace_sigma=trm, grad_sq_norm=g2m, stderr=se, method="two_batch",
                            n=n_pairs, trace_sigma_stderr=float(tr.std() / math.sqrt(n_pairs)),
                            grad_sq_norm_stderr=float(g2.std() / math.sqrt(n_pairs)))
    return out


def microbatch_grad_variance(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, *, n_micro: int = 8,
                             generator: torch.Generator | None = None) -> dict[str, MicrobatchVariance]:
    """Variance of the gradient across micro-batches, for the model and each layer.

    A random permutation of the examples is cut into ``n_micro`` equal micro-batches (the
    remainder is dropped); with g_j their mean gradients and d_j = k/(k-1) |g_j - mean g|^2,
    value = mean d_j (the unbiased total variance) and stderr = sd(d_j) / sqrt(k) (approximate:
    the d_j share the mean).
    """
    if n_micro < 2:
        raise ValueError(f"n_micro: {n_micro} is out of range (need >= 2)")
    size = len(x) // n_micro
    if size < 1:
        raise ValueError(f"n_micro: {n_micro} is larger than the {len(x)} examples")
    groups = param_groups(model)
    perm = torch.randperm(len(x), generator=generator)[: size * n_micro].to(x.device)
    xs = x[perm].reshape(n_micro, size, *x.shape[1:])
    ys = y[perm].reshape(n_micro, size, *y.shape[1:])
    g = _batch_grads(model, loss_fn, xs, ys)
    centred = {name: t - t.mean(0, keepdim=True) for name, t in g.items()}
    out = {}
    for k, v in _sq_norms(centred, groups, 1).items():
        d = v.double() * n_micro / (n_micro - 1)
        out[k] = MicrobatchVariance(value=float(d.mean()), stderr=float(d.std() / math.sqrt(n_micro)),
                                    n_micro=n_micro, micro_size=size)
    return out
