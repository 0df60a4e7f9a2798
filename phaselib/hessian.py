"""Curvature signals from Hessian-vector products: extreme eigenvalues, trace, spectral density.

Everything works matrix-free on a :class:`HessianOp`, a symmetric linear operator on a flat
parameter vector. :func:`hessian_operator` builds one for an ``nn.Module`` and a batch of data,
for all parameters or for one layer's diagonal block of the Hessian (the per-layer version):
in closed form for the paper's MLP under cross-entropy (the default where it applies), else
with ``torch.func`` (the derivative of ``grad``: forward-over-reverse ``jvp``, the same traced
once by ``linearize``, or reverse-over-reverse ``vjp``, which needs no tracing).

Eigenvalues come from Lanczos with full reorthogonalisation (:func:`lanczos_extreme`). Lanczos
is shift-invariant (the Krylov space of ``H - sigma I`` equals that of ``H``), so a spectral
shift buys it nothing; a shift only helps power iteration, which is far slower here (measured in
benchmarks/hessian.py). Both ends come out of one Krylov space; what makes tracking lambda_min
cheap is the warm start from the previous probe's eigenvector.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Literal

import numpy as np
from scipy.linalg import eigh_tridiagonal
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, linearize, vjp

from .models import is_paper_mlp, mlp_forward

LossFn = Callable[[Tensor, Tensor], Tensor]
Which = Literal["max", "min"]


def task_loss(task: str) -> LossFn:
    """The training loss of a task (mean reduction): cross-entropy for modular, MSE for regression."""
    if task == "modular":
        return F.cross_entropy
    if task == "regression":
        return F.mse_loss
    raise ValueError(f"task: {task!r} is not one of ['modular', 'regression']")


# --------------------------------------------------------------------------------------------
# The operator
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HessianOp:
    """A symmetric linear operator ``v -> H v`` on flat vectors of length ``dim``.

    ``gradient`` is the flat loss gradient at the expansion point when the operator comes from a
    model (a by-product of differentiating ``grad``), ``names`` the parameters in flat order and
    ``blocks`` each layer's ``(start, stop)`` slice of the flat vector.
    """

    matvec: Callable[[Tensor], Tensor]
    dim: int
    dtype: torch.dtype
    device: torch.device
    gradient: Tensor | None = None
    names: tuple[str, ...] = ()
    blocks: dict[str, tuple[int, int]] = field(default_factory=dict)

    def __call__(self, v: Tensor) -> Tensor:
        return self.matvec(v)


def param_names(model: nn.Module, layer: str | None = None) -> tuple[str, ...]:
    """Names of the parameters of ``layer`` (``"fc1"`` -> ``fc1.weight``, ``fc1.bias``), or all if None."""
    names = tuple(n for n, _ in model.named_parameters() if layer is None or n.split(".")[0] == layer)
    if not names:
        raise ValueError(f"layer: {layer!r} has no parameters in this model")
    return names


def flat_params(model: nn.Module, names: tuple[str, ...]) -> Tensor:
    """The named parameters, detached and concatenated into one flat vector."""
    params = dict(model.named_parameters())
    return torch.cat([params[n].detach().reshape(-1) for n in names])


def _flat_loss(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor,
               names: tuple[str, ...]) -> Callable[[Tensor], Tensor]:
    """``theta -> loss(model with the named params set from flat theta, others fixed)``."""
    params = dict(model.named_parameters())
    fixed = {n: p.detach() for n, p in params.items() if n not in names}  # no autograd graph
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]

    def loss_of(theta: Tensor) -> Tensor:
        chunks = theta.split(sizes)
        new = {n: c.view(s) for n, c, s in zip(names, chunks, shapes)}
        return loss_fn(functional_call(model, {**fixed, **new}, (x,)), y)

    return loss_of


HVP_METHODS: tuple[str, ...] = ("vjp", "linearize", "jvp", "closed")


def _closed_form_applies(model: nn.Module, loss_fn: LossFn) -> bool:
    """Whether :func:`_mlp_ce_hvp` covers the model: the paper's MLP (exactly) under cross-entropy."""
    return is_paper_mlp(model) and loss_fn is F.cross_entropy


def one_hot_columns(x: Tensor) -> Tensor | None:
    """Column indices (n, k) of the ones when every row of ``x`` is k ones among zeros (one-hot
    codes side by side, as the modular task's input), else None.

    With them, ``x @ W`` is a sum of k gathered rows of W and ``x^T @ G`` a scatter-add of G's
    rows: the same sums without the multiplications by zero, which at p = 97 were 40% of a
    closed-form Hessian-vector product's arithmetic."""
    if x.ndim != 2 or x.shape[0] == 0 or x.is_complex():
        return None
    ones = x == 1
    if not bool((ones | (x == 0)).all()):
        return None
    k = ones.sum(1)
    if int(k[0]) == 0 or not bool((k == k[0]).all()):
        return None
    return ones.nonzero()[:, 1].view(x.shape[0], int(k[0]))


def _times_x(bias: Tensor, x: Tensor, cols: Tensor | None, w: Tensor) -> Tensor:
    """``bias + x @ w`` (w: in x out), by gathering rows of w when x is one-hot (``cols``)."""
    if cols is None:
        return torch.addmm(bias, x, w)
    return F.embedding_bag(cols, w.contiguous(), mode="sum").add_(bias)


def _transposed_times_x(g: Tensor, x: Tensor, cols: Tensor | None) -> Tensor:
    """``g^T @ x`` (g: n x out), by scatter-adding rows of g when x is one-hot (``cols``)."""
    if cols is None:
        return torch.mm(g.T, x)
    out = g.new_zeros(x.shape[1], g.shape[1])
    for j in range(cols.shape[1]):
        out.index_add_(0, cols[:, j], g)
    return out.T


def _code_groups(col: Tensor) -> tuple[int, Tensor]:
    """The codes one position of a one-hot x takes: the lowest, and the row count of each code
    from it to the highest (the span a zero-padded group tensor covers)."""
    lo = int(col.min())
    return lo, torch.bincount(col - lo)


def _code_sums_pay(cols: Tensor, in_dim: int) -> bool:
    """Whether :func:`_code_sums` is worth forming for a one-hot x with column indices ``cols``:
    its two contractions per product cost in_dim x out x H each against the rows x out x H of the
    two matmuls they replace, asked to be at least 4x fewer; and each position's zero-padded
    groups (its span of codes x the rows of its commonest code) at most twice the rows, so that
    building S and T (about three of those matmuls, half a product) stays cheap when codes are uneven."""
    rows = cols.shape[0]
    if 4 * in_dim > rows:
        return False
    return all(len(counts) * int(counts.max()) <= 2 * rows for counts in (_code_groups(c)[1] for c in cols.T))


def _code_sums(gz: Tensor, mask: Tensor, cols: Tensor, in_dim: int) -> Tensor:
    """``S[k, c, j] = sum_r x[r, j] gz[r, c] m[r, k]`` (H x out x in) for a one-hot x given by its
    column indices ``cols`` (:func:`one_hot_columns`): per input code j, the product gz^T m over
    the rows that carry it, as one zero-padded batched matmul per code position."""
    n, out, H = gz.shape[0], gz.shape[1], mask.shape[1]
    S = gz.new_zeros(in_dim, out, H)
    rows = torch.arange(n, device=gz.device)
    for col in cols.T:
        lo, counts = _code_groups(col)
        order = torch.argsort(col, stable=True)
        group = col[order] - lo
        slot = rows - (torch.cumsum(counts, 0) - counts)[group]  # place within its code's group
        G = gz.new_zeros(len(counts), int(counts.max()), out)
        M = gz.new_zeros(len(counts), int(counts.max()), H)
        G[group, slot] = gz[order]
        M[group, slot] = mask[order]
        S[lo:lo + len(counts)].baddbmm_(G.transpose(1, 2), M)
    return S.permute(2, 1, 0).contiguous()


def _mlp_ce_hvp(model: nn.Module, x: Tensor, y: Tensor,
                layer: str | None = None) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """Gradient and ``v -> H v`` of the mean cross-entropy of the MLP by Pearlmutter's R-operator
    (B. A. Pearlmutter, "Fast exact multiplication by the Hessian", Neural Computation 6, 1994);
    for ``layer`` ("fc1" or "fc2"), its diagonal block.

    Forward a = W1 x + b1, h = relu(a), z = W2 h + b2, p = softmax(z); backward gz = (p - Y)/n,
    dW2 = gz^T h, db2 = sum gz, ga = (gz W2) * m with m = [a > 0], dW1 = ga^T x, db1 = sum ga.
    Differentiating each line in direction v = (V1, c1, V2, c2) (R{.}; R{m} = 0, ReLU'' = 0 as in
    autograd): R{h} = (x V1^T + c1) * m, R{z} = h V2^T + R{h} W2^T + c2,
    R{gz} = p * (R{z} - <p, R{z}>) / n (the softmax Jacobian), R{dW2} = R{gz}^T h + gz^T R{h},
    R{db2} = sum R{gz}, R{ga} = (R{gz} W2 + gz V2) * m, R{dW1} = R{ga}^T x, R{db1} = sum R{ga}.
    Eight matmuls per product (six and two small contractions with the sums below) and no
    autograd graph; when x is one-hot (:func:`one_hot_columns`),
    the two with x are a gather and a scatter-add instead. The whole product's two terms with the
    fixed gz (gz V2 in R{ga}, gz^T R{h} in R{dW2}), n x out x H multiply-adds each, then come
    from per-code sums S[k, c, j] = sum_r x_rj gz_rc m_rk formed once per operator
    (:func:`_code_sums`): (gz V2 * m)^T x = sum_c V2_ck S_kcj and gz^T R{h} = sum_j S_kcj V1_kj
    + c1_k T_ck with T = gz^T m, in x out x H each, when that is cheaper (:func:`_code_sums_pay`;
    at p = 97 and 70%, 1.2M against 41M). A layer's block has v zero outside the layer:
    for fc2, R{h} = 0 and only R{z}, R{gz}, R{dW2}, R{db2} remain (two matmuls); for fc1, V2 = c2
    = 0 and the fc2 outputs are not needed (four). Leaving out terms that are exactly zero changes
    no bit. benchmarks/hessian.py times it against ``torch.func``; tests/test_hessian.py checks it
    against dense Hessians.
    """
    (W1, b1, W2, b2), a, h, out = mlp_forward(model, x)
    n = x.shape[0]
    mask = (a > 0).to(a.dtype)
    p = torch.softmax(out, 1)
    gz = p.clone()
    gz[torch.arange(n, device=gz.device), y] -= 1.0
    gz /= n
    ga = torch.mm(gz, W2).mul_(mask)
    first, second = layer in (None, "fc1"), layer in (None, "fc2")
    cols = one_hot_columns(x) if first else None
    gradient = torch.cat(([_transposed_times_x(ga, x, cols).reshape(-1), ga.sum(0)] if first else [])
                         + ([torch.mm(gz.T, h).reshape(-1), gz.sum(0)] if second else []))
    sizes = ([W1.numel(), b1.numel()] if first else []) + ([W2.numel(), b2.numel()] if second else [])
    sums = first and second and cols is not None and _code_sums_pay(cols, x.shape[1])
    if sums:  # S (H x out x in) and its transpose, each read in its contiguous order below
        S, T = _code_sums(gz, mask, cols, x.shape[1]), torch.mm(gz.T, mask)
        St = S.transpose(1, 2).contiguous()

    def matvec(v: Tensor) -> Tensor:
        parts = v.split(sizes)
        if first:
            V1, c1 = parts[0].view_as(W1), parts[1]
            Rh = _times_x(c1, x, cols, V1.T).mul_(mask)
        if second:
            V2, c2 = parts[-2].view_as(W2), parts[-1]
            Rz = torch.addmm(c2, h, V2.T)
            if first:
                Rz.addmm_(Rh, W2.T)
        else:
            Rz = torch.mm(Rh, W2.T)
        Rgz = Rz.sub_((p * Rz).sum(1, keepdim=True)).mul_(p).div_(n)
        out: list[Tensor] = []
        if first:
            Rga = torch.mm(Rgz, W2)
            if second and not sums:
                Rga.addmm_(gz, V2)
            Rga.mul_(mask)
            RdW1, Rdb1 = _transposed_times_x(Rga, x, cols), Rga.sum(0)
            if sums:  # per k a row times a matrix (as a matrix times a column, bmm ran 3.5-5.7x slower)
                RdW1 += torch.bmm(V2.T.unsqueeze(1), S).squeeze(1)
                Rdb1 += (T * V2).sum(0)
            out += [RdW1.reshape(-1), Rdb1]
        if second:
            RdW2 = torch.mm(Rgz.T, h)
            if sums:
                RdW2 += torch.bmm(V1.unsqueeze(1), St).squeeze(1).T + T * c1
            elif first:
                RdW2.addmm_(gz.T, Rh)
            out += [RdW2.reshape(-1), Rgz.sum(0)]
        return torch.cat(out)

    return gradient, matvec


def _func_hvp(g_fn: Callable[[Tensor], Tensor], theta: Tensor,
              method: str) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """Gradient and ``v -> H v`` as the derivative of ``g_fn`` at theta, by ``torch.func`` (see below)."""
    if method == "vjp":
        gradient, pullback = vjp(g_fn, theta)
        return gradient, lambda v: pullback(v)[0]
    if method == "linearize":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.fx const-folding chatter, harmless
            return linearize(g_fn, theta)
    return g_fn(theta), lambda v: jvp(g_fn, (theta,), (v,))[1]


def hessian_operator(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, layer: str | None = None,
                     *, method: str = "auto") -> HessianOp:
    """Hessian of ``loss_fn(model(x), y)`` w.r.t. all parameters, or one layer's diagonal block.

    ``"closed"``: for the paper's MLP under cross-entropy, the closed-form product of
    :func:`_mlp_ce_hvp` (a layer's block: only the terms that are not zero there).
    ``"auto"`` (the default) takes it where it applies and ``"vjp"`` elsewhere. Otherwise
    ``H v`` is the derivative of ``g = torch.func.grad(L)`` at theta in direction v, by one of:
    ``"jvp"`` forward-over-reverse, ``jvp(g, theta, v)``, redoing the primal forward and
    backward on every call; ``"linearize"`` the same map traced once (``torch.func.linearize``),
    cheap per call but ~20 products' worth of tracing; ``"vjp"`` reverse-over-reverse with the
    graph of g kept (``torch.func.vjp(g, theta)``; H is symmetric so vjp = jvp). linearize is
    cheaper per product than vjp but pays its tracing up front, jvp is the slowest
    (``benchmarks/hessian.py`` times all four side by side); vjp is the fallback of ``"auto"``
    since it needs no tracing. The model's parameters are read, never changed.
    """
    names = param_names(model, layer)
    theta = flat_params(model, names)
    if method == "auto":
        method = "closed" if _closed_form_applies(model, loss_fn) else "vjp"
    if method == "closed":
        if not _closed_form_applies(model, loss_fn):
            raise ValueError("method: 'closed' is invalid for this model or loss; allowed: the phaselib MLP "
                             "under torch.nn.functional.cross_entropy")
        gradient, matvec = _mlp_ce_hvp(model, x, y, layer)
    elif method in ("vjp", "linearize", "jvp"):
        gradient, matvec = _func_hvp(grad(_flat_loss(model, loss_fn, x, y, names)), theta, method)
    else:
        raise ValueError(f"method: {method!r} is invalid; allowed: one of {['auto', *HVP_METHODS]}")
    blocks: dict[str, tuple[int, int]] = {}
    start = 0
    for name, p in zip(names, (dict(model.named_parameters())[n] for n in names)):
        layer = name.split(".")[0]
        blocks[layer] = (blocks.get(layer, (start, start))[0], start + p.numel())
        start += p.numel()
    return HessianOp(matvec=matvec, dim=theta.numel(), dtype=theta.dtype, device=theta.device,
                     gradient=gradient.detach(), names=names, blocks=blocks)


def matrix_operator(a: Tensor) -> HessianOp:
    """A dense symmetric matrix as a :class:`HessianOp` (analytic test cases, small models)."""
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"a: shape {tuple(a.shape)} is not square")
    return HessianOp(matvec=lambda v: a @ v, dim=a.shape[0], dtype=a.dtype, device=a.device)


def dense_hessian(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, layer: str | None = None) -> Tensor:
    """The full (dim x dim) Hessian by reverse-over-reverse ``jacrev``: ground truth for small models only."""
    names = param_names(model, layer)
    h = torch.func.jacrev(torch.func.jacrev(_flat_loss(model, loss_fn, x, y, names)))(flat_params(model, names))
    return (h + h.T) / 2


# --------------------------------------------------------------------------------------------
# Lanczos
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Eigen:
    """One eigenpair estimate of H.

    ``residual`` = ||H v - value v|| for the unit vector v (computed explicitly); by Bauer-Fike
    some eigenvalue lies within it. ``error_bound`` is the estimated eigenvalue error
    (:func:`_error_estimate`: residual, Ritz gap and stagnation), an estimate rather than a
    guarantee; ``converged`` means ``error_bound <= tol * max(|value|, eps * ||H||)``.
    """

    value: float
    vector: Tensor = field(repr=False)
    residual: float
    converged: bool
    iterations: int
    error_bound: float = math.nan


def _random_unit(dim: int, dtype: torch.dtype, device: torch.device, generator: torch.Generator | None) -> Tensor:
    """A Gaussian random unit vector drawn on CPU from ``generator`` (reproducible across devices)."""
    v = torch.randn(dim, generator=generator, dtype=torch.float64)
    return (v / v.norm()).to(device=device, dtype=dtype)


def _ritz_pairs(alpha: np.ndarray, beta: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Ritz values lo..hi (ascending, inclusive) of the Lanczos tridiagonal and T's eigenvectors."""
    if len(alpha) == 1:
        return alpha.astype(np.float64), np.ones((1, 1))
    return eigh_tridiagonal(alpha, beta[: len(alpha) - 1], select="i", select_range=(lo, hi))


def _edge(alpha: np.ndarray, beta: np.ndarray, end: str) -> tuple[float, np.ndarray, float]:
    """(theta, s, gap) for the lowest (``end="min"``) or highest Ritz pair of T; gap to its neighbour."""
    k = len(alpha)
    if k == 1:
        return float(alpha[0]), np.ones(1), 0.0  # no neighbour yet: fall back to the residual
    lo, hi = (0, 1) if end == "min" else (k - 2, k - 1)
    theta, s = _ritz_pairs(alpha, beta, lo, hi)
    i = 0 if end == "min" else 1
    return float(theta[i]), s[:, i], float(abs(theta[1] - theta[0]))


#: Window (Lanczos steps) and factor of the stagnation term of the error estimate.
STALL_WINDOW, STALL_FACTOR = 5, 10.0


def _error_estimate(residual: float, gap: float, history: list[float], exact: bool) -> float:
    """max(min(r, r^2/gap), 10 |theta_k - theta_{k-5}|): the eigenvalue error estimate.

    min(r, r^2/gap) is Bauer-Fike and the Kato-Temple style gap estimate (Parlett, The Symmetric
    Eigenvalue Problem, ch. 11), with the Ritz gap standing in for the unknown true gap. In a
    near-continuous bulk (lambda_min here) the Ritz gap overstates the true one early on, and a
    warm start can look converged after two steps while 5% off; the stagnation term (the extreme
    Ritz value moves monotonically toward the eigenvalue) guards against that. ``exact`` (an
    invariant subspace was found) drops it. Validated against float64 references on mod-97
    checkpoints at epochs 300/1000/1500 (benchmarks/hessian.py).
    """
    est = min(residual, residual * residual / gap) if gap > 0 else residual
    if exact:
        return est
    if len(history) <= STALL_WINDOW:
        return math.inf
    return max(est, STALL_FACTOR * abs(history[-1] - history[-1 - STALL_WINDOW]))


def _target(theta: float, tol: float, norm_est: float, dtype: torch.dtype) -> float:
    """Absolute error target: tol * |theta|, floored at tol * eps * ||H|| (the precision of H v)."""
    return tol * max(abs(theta), torch.finfo(dtype).eps * norm_est)


def lanczos_tridiag(op: HessianOp, v0: Tensor, steps: int, *,
                    stop: Callable[[np.ndarray, np.ndarray], bool] | None = None,
                    generator: torch.Generator | None = None) -> tuple[np.ndarray, np.ndarray, Tensor]:
    """Lanczos with full reorthogonalisation (classical Gram-Schmidt, twice) from ``v0``.

    Returns ``(alpha (k,), beta (k,), V (k, dim))`` with V orthonormal rows and
    ``H V^T = V^T T + beta[k-1] v_k e_k^T`` (T tridiagonal from alpha and beta[:k-1]). On a
    breakdown (beta ~ 0: the Krylov space is invariant) the coupling is set to 0 and the run
    continues from a random vector orthogonal to the basis, so the Ritz values keep
    approaching H's extremes and not the invariant subspace's. Stops after ``steps`` or when
    ``stop(alpha, beta)`` is true. One host sync per step; alpha and beta live on the host.
    """
    n = op.dim
    steps = max(1, min(steps, n))
    basis = torch.zeros(steps + 1, n, dtype=op.dtype, device=op.device)
    alpha = np.zeros(steps)
    beta = np.zeros(steps)
    basis[0] = v0 / v0.norm()
    tiny = 10 * torch.finfo(op.dtype).eps
    scale = 0.0
    k = 0
    for j in range(steps):
        q = basis[j]
        w = op(q)
        a = torch.dot(q, w)
        w = _orthogonalise(w, basis[: j + 1])
        b = w.norm()
        alpha[j], beta[j] = float(a), float(b)
        k = j + 1
        scale = max(scale, abs(alpha[j]) + beta[j])
        if k == steps:
            break
        if not beta[j] > tiny * scale:  # breakdown (or NaN): restart orthogonally, decoupled
            w = _orthogonalise(_random_unit(n, op.dtype, op.device, generator), basis[: j + 1])
            beta[j], b = 0.0, w.norm()
        basis[j + 1] = w / b
        if stop is not None and stop(alpha[:k], beta[:k]):
            break
    return alpha[:k], beta[:k], basis[:k]


def _orthogonalise(w: Tensor, basis: Tensor) -> Tensor:
    """w minus its projection on the orthonormal rows of ``basis``, by CGS twice (Giraud et al. 2005)."""
    for _ in range(2):
        w = w - basis.T @ (basis @ w)
    return w


def lanczos_extreme(op: HessianOp, which: Literal["max", "min", "both"] = "max", v0: Tensor | None = None, *,
                    tol: float = 1e-4, max_iter: int = 300,
                    generator: torch.Generator | None = None) -> Eigen | tuple[Eigen, Eigen]:
    """Extreme eigenpair(s) of H by Lanczos: ``"max"``, ``"min"`` or ``"both"`` as (min, max).

    Stops once every wanted Ritz value has an error estimate (:func:`_error_estimate`)
    ``<= tol * |theta|`` or after ``max_iter`` products. ``v0`` warm-starts (e.g. the previous probe's
    vector; for ``"both"`` the sum of the two previous vectors); else a random start from
    ``generator``. Costs ``iterations + 1`` products per returned pair (one explicit residual).
    """
    if which not in ("max", "min", "both"):
        raise ValueError(f"which: {which!r} is not one of ['max', 'min', 'both']")
    if max_iter < 1:
        raise ValueError(f"max_iter: {max_iter} is out of range (need >= 1)")
    if v0 is None or not bool(torch.isfinite(v0).all()) or float(v0.norm()) == 0.0:
        v0 = _random_unit(op.dim, op.dtype, op.device, generator)
    v0 = v0.detach().to(device=op.device, dtype=op.dtype)
    ends = ["min", "max"] if which == "both" else [which]

    def norm_est(alpha: np.ndarray, beta: np.ndarray) -> float:
        return float(np.abs(alpha).max() + 2 * np.abs(beta).max())  # Gershgorin bound on ||T||

    history: dict[str, list[float]] = {end: [] for end in ends}  # extreme Ritz value after each step

    def done(alpha: np.ndarray, beta: np.ndarray) -> bool:
        scale = norm_est(alpha, beta)
        ok = True
        for end in ends:
            theta, s, gap = _edge(alpha, beta, end)
            history[end].append(theta)
            est = _error_estimate(abs(beta[-1] * s[-1]), gap, history[end], exact=False)
            ok = ok and est <= _target(theta, tol, scale, op.dtype)
        return ok

    alpha, beta, basis = lanczos_tridiag(op, v0, max_iter, stop=done, generator=generator)
    scale = norm_est(alpha, beta)
    exact = len(alpha) == op.dim  # the whole space: T's eigenvalues are H's
    out = []
    for end in ends:
        theta, s, gap = _edge(alpha, beta, end)
        vec = torch.as_tensor(s, dtype=op.dtype, device=op.device) @ basis
        vec = vec / vec.norm()
        r = float((op(vec) - theta * vec).norm())
        err = _error_estimate(r, gap, history[end], exact)
        out.append(Eigen(value=theta, vector=vec, residual=r, error_bound=err, iterations=len(alpha),
                         converged=err <= _target(theta, tol, scale, op.dtype)))
    return out[0] if len(out) == 1 else (out[0], out[1])


def lambda_max(op: HessianOp, v0: Tensor | None = None, **kw) -> Eigen:
    """Largest eigenvalue of H (Lanczos, see :func:`lanczos_extreme` for the options)."""
    return lanczos_extreme(op, "max", v0, **kw)


def lambda_min(op: HessianOp, v0: Tensor | None = None, **kw) -> Eigen:
    """Smallest (most negative) eigenvalue of H (Lanczos; warm-start it with ``v0``)."""
    return lanczos_extreme(op, "min", v0, **kw)


def eigsh_extreme(op: HessianOp, which: Which = "max", v0: Tensor | None = None, *, tol: float = 1e-4,
                  max_iter: int = 300, ncv: int | None = None,
                  generator: torch.Generator | None = None) -> Eigen:
    """The same eigenpair by ARPACK (``scipy.sparse.linalg.eigsh`` on a ``LinearOperator``).

    Implicitly restarted Lanczos; kept as the measured alternative to :func:`lanczos_extreme`
    (benchmarks/hessian.py). ARPACK's test is ``||r|| <= tol * |theta|``; it round-trips every
    product through NumPy on the host.
    """
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    count = [0]

    def mv(x: np.ndarray) -> np.ndarray:
        count[0] += 1
        v = torch.as_tensor(np.asarray(x).reshape(-1), dtype=op.dtype, device=op.device)
        return op(v).detach().cpu().numpy().astype(np.float64)

    if v0 is None:
        v0 = _random_unit(op.dim, op.dtype, op.device, generator)
    lin = LinearOperator((op.dim, op.dim), matvec=mv, dtype=np.float64)
    try:
        vals, vecs = eigsh(lin, k=1, which="LA" if which == "max" else "SA", tol=tol,
                           v0=v0.detach().double().cpu().numpy(), ncv=ncv, maxiter=max_iter)
        converged = True
    except ArpackNoConvergence as exc:
        vals, vecs, converged = exc.eigenvalues, exc.eigenvectors, False
        if len(vals) == 0:
            return Eigen(math.nan, torch.zeros(op.dim, dtype=op.dtype, device=op.device), math.nan, False, count[0])
    vec = torch.as_tensor(vecs[:, 0], dtype=op.dtype, device=op.device)
    value = float(vals[0])
    r = float((op(vec) - value * vec).norm())
    return Eigen(value=value, vector=vec, residual=r, converged=converged, iterations=count[0], error_bound=r)


# --------------------------------------------------------------------------------------------
# Trace and spectral density
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TraceEstimate:
    """A stochastic trace estimate with its standard error (``stderr``) and cost in products."""

    value: float
    stderr: float
    n_probes: int
    method: str = "hutchinson"


def _rademacher(k: int, dim: int, dtype: torch.dtype, device: torch.device,
                generator: torch.Generator | None) -> Tensor:
    """k Rademacher (+-1) vectors, drawn on CPU from ``generator``."""
    z = torch.randint(0, 2, (k, dim), generator=generator, dtype=torch.int8).to(dtype) * 2 - 1
    return z.to(device)


def _apply_rows(op: HessianOp, vs: Tensor) -> Tensor:
    """H applied to each row of ``vs``."""
    return torch.stack([op(v) for v in vs]) if len(vs) else vs


def hutchinson_trace(op: HessianOp, n_probes: int = 30, *, generator: torch.Generator | None = None) -> TraceEstimate:
    """tr(H) ~ mean_i z_i^T H z_i, z_i Rademacher (Hutchinson 1989); stderr = sd / sqrt(n).

    Unbiased; the variance of one sample is 2 (||H||_F^2 - sum_i H_ii^2).
    """
    return hutchinson_block_traces(op, n_probes, generator=generator)["all"]


def hutchinson_block_traces(op: HessianOp, n_probes: int = 30, *,
                            generator: torch.Generator | None = None) -> dict[str, TraceEstimate]:
    """Hutchinson traces of H (``"all"``) and of each diagonal block in ``op.blocks``, from the same products.

    tr(H_ll) ~ mean_i z_il^T (H z_i)_l: the off-diagonal part z_il^T H_lo z_io has mean zero for
    independent Rademacher entries, so one set of ``n_probes`` products serves every block.
    """
    if n_probes < 2:
        raise ValueError(f"n_probes: {n_probes} is out of range (need >= 2 for a standard error)")
    z = _rademacher(n_probes, op.dim, op.dtype, op.device, generator)
    prod = z * _apply_rows(op, z)
    spans = {"all": (0, op.dim)} | dict(op.blocks)
    out = {}
    for key, (lo, hi) in spans.items():
        samples = prod[:, lo:hi].sum(1).double()
        out[key] = TraceEstimate(value=float(samples.mean()), stderr=float(samples.std() / math.sqrt(n_probes)),
                                 n_probes=n_probes, method="hutchinson")
    return out


def exact_trace_applies(model: nn.Module, loss_fn: LossFn) -> bool:
    """Whether :func:`exact_block_traces` covers the model: the paper's MLP under cross-entropy or MSE."""
    return is_paper_mlp(model) and (loss_fn is F.cross_entropy or loss_fn is F.mse_loss)


def exact_block_traces(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor) -> dict[str, TraceEstimate]:
    """The exact trace of the paper's MLP's Hessian (``"all"``) and of its fc1/fc2 blocks: a forward
    pass and two n x out x H products in float64, about three Hessian-vector products (at p = 97,
    70%, one thread: 23 ms against 7.4 ms per product and 230 ms for Hutchinson's 30).

    H = sum_r J_r^T A_r J_r + sum_rc g_rc d^2 z_rc / d theta^2 (the Gauss-Newton split; N. N.
    Schraudolph, "Fast curvature matrix-vector products for second-order gradient descent",
    Neural Computation 14, 2002), where J_r = dz_r / d theta and A_r is the loss's Hessian in row
    r's outputs. z = W2 relu(W1 x + b1) + b2 is linear in each single parameter along its own axis
    (relu'' = 0, as in autograd), so the second term has a zero diagonal and tr H is the
    Gauss-Newton trace. With w_k = W2[:, k] and m_rk = [a_rk > 0]:
    tr H_fc2 = sum_r (|h_r|^2 + 1) tr A_r and tr H_fc1 = sum_r (|x_r|^2 + 1) sum_k m_rk w_k^T A_r w_k;
    mean cross-entropy: A_r = (diag p_r - p_r p_r^T) / n, mean squared error over n x out
    outputs: A_r = 2 I / (n out). Float64 throughout: once the softmax is confident, 1 - |p|^2 and
    p.w^2 - (p.w)^2 are differences of nearly equal numbers that float32 loses (it returned 0 for
    a trace of 2e-8 in tests/test_hessian.py, and was off by 65% at a train loss of 6e-9). ``stderr`` is 0 and ``n_probes`` 0: no products, no sampling.
    The Hutchinson estimate's error bars can be checked against it (``tests/test_hessian.py``
    checks it against dense Hessians).
    """
    if not exact_trace_applies(model, loss_fn):
        raise ValueError("model: the exact trace needs the phaselib MLP under torch.nn.functional.cross_entropy "
                         "or mse_loss; use hutchinson_block_traces for other models")
    if len(x) == 0:
        raise ValueError("x: the batch is empty; the loss, and its Hessian, are undefined")
    with torch.no_grad():
        xd = x.double()
        (_, _, W2, _), a, h, out = mlp_forward(model, xd, torch.float64)
        n, n_out = out.shape
        if loss_fn is F.cross_entropy:
            p = torch.softmax(out, 1)
            tr_a = (p * (1 - p)).sum(1) / n
            quad = (p @ W2.square()).sub_((p @ W2).square()).div_(n)  # w_k^T A_r w_k, n x H
        else:
            if y.shape != out.shape:
                raise ValueError(f"y: shape {tuple(y.shape)} is not the output's {tuple(out.shape)}; mse_loss would "
                                 "broadcast and the trace would not be its Hessian's")
            tr_a = out.new_full((n,), 2.0 / n)
            quad = (W2.square().sum(0) * (2.0 / (n * n_out))).expand(n, -1)
        fc1 = ((xd.square().sum(1) + 1) * (quad * (a > 0)).sum(1)).sum()
        fc2 = ((h.square().sum(1) + 1) * tr_a).sum()
    return {key: TraceEstimate(value=float(v), stderr=0.0, n_probes=0, method="exact")
            for key, v in (("all", fc1 + fc2), ("fc1", fc1), ("fc2", fc2))}


def hutchpp_trace(op: HessianOp, n_matvecs: int = 30, *, generator: torch.Generator | None = None) -> TraceEstimate:
    """Hutch++ (Meyer, Musco, Musco, Woodruff 2021): exact trace on a sketched top subspace + Hutchinson on the rest.

    With k = n_matvecs // 3: Q = orth(H S) for k Rademacher S; tr(H) = tr(Q^T H Q) +
    tr((I - QQ^T) H (I - QQ^T)), the second by Hutchinson on n - 2k probes. stderr is that
    Hutchinson part's. Pays when a few large eigenvalues dominate ||H||_F.
    """
    k = n_matvecs // 3
    m = n_matvecs - 2 * k
    if k < 1 or m < 2:
        raise ValueError(f"n_matvecs: {n_matvecs} is out of range (need >= 5)")
    s = _rademacher(k, op.dim, op.dtype, op.device, generator)
    q, _ = torch.linalg.qr(_apply_rows(op, s).T)  # (dim, k)
    q = q.T
    top = float((q * _apply_rows(op, q)).sum().double())
    g = _rademacher(m, op.dim, op.dtype, op.device, generator)
    g = g - (g @ q.T) @ q
    samples = (g * _apply_rows(op, g)).sum(1).double()
    return TraceEstimate(value=top + float(samples.mean()), stderr=float(samples.std() / math.sqrt(m)),
                         n_probes=n_matvecs, method="hutch++")


@dataclass(frozen=True)
class SpectralDensity:
    """Stochastic Lanczos quadrature (Ubaru, Chen, Saad 2017; Ghorbani et al. 2019).

    For each of ``nodes.shape[0]`` random unit vectors v, an m-step Lanczos gives Ritz values
    theta_j (``nodes``) and weights tau_j^2 (``weights``, squared first components of T's
    eigenvectors), so that v^T f(H) v ~ sum_j tau_j^2 f(theta_j). The density is their average,
    smoothed by a Gaussian; weights sum to 1 per vector.
    """

    nodes: Tensor
    weights: Tensor
    dim: int

    def density(self, grid: Tensor, sigma: float) -> Tensor:
        """Spectral density at ``grid``: mean over vectors of sum_j tau_j^2 N(grid; theta_j, sigma^2)."""
        g = grid.double().reshape(-1, 1, 1)
        kern = torch.exp(-0.5 * ((g - self.nodes.double()) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
        return (kern * self.weights.double()).sum(-1).mean(-1)

    def trace(self) -> float:
        """tr(H) = dim * E[v^T H v] for unit v, from the quadrature."""
        return float(self.dim * (self.weights.double() * self.nodes.double()).sum(-1).mean())


def spectral_density(op: HessianOp, n_vectors: int = 4, steps: int = 60, *,
                     generator: torch.Generator | None = None) -> SpectralDensity:
    """Stochastic Lanczos quadrature nodes and weights from ``n_vectors`` Rademacher starts."""
    nodes, weights = [], []
    steps = min(steps, op.dim)
    for z in _rademacher(n_vectors, op.dim, op.dtype, op.device, generator):
        alpha, beta, _ = lanczos_tridiag(op, z, steps, generator=generator)
        theta, s = _ritz_pairs(alpha, beta, 0, len(alpha) - 1)
        theta, s = torch.as_tensor(theta), torch.as_tensor(s)
        pad = steps - len(theta)  # breakdown: pad with zero-weight nodes so vectors stack
        nodes.append(torch.cat([theta, theta.new_zeros(pad)]))
        weights.append(torch.cat([s[0] ** 2, theta.new_zeros(pad)]))
    return SpectralDensity(nodes=torch.stack(nodes), weights=torch.stack(weights), dim=op.dim)


def grad_eig_cosine(gradient: Tensor, vector: Tensor) -> float:
    """|cos| between the gradient and an eigenvector (the sign of an eigenvector is arbitrary)."""
    denom = float(gradient.norm() * vector.norm())
    return float((gradient @ vector).abs()) / denom if denom > 0 else math.nan
