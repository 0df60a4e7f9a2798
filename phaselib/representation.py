"""Representation signals of hidden activations on a fixed probe set.

Every function takes activations ``h`` of shape ``(..., n, width)`` (n probe examples, optional
leading batch dimensions, e.g. R runs trained at once) and returns a tensor of shape ``(...)``.
Spectral quantities are computed in float64 from the width x width Gram matrix, which is cheap
for narrow layers and accurate enough for the small singular values that set the effective rank.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def _check(h: Tensor, name: str = "h") -> None:
    if h.ndim < 2:
        raise ValueError(f"{name}: shape {tuple(h.shape)} is invalid; need (..., n, width)")


def _gram_eigenvalues(h: Tensor) -> Tensor:
    """Eigenvalues of h^T h in float64, ascending, with round-off of zero set to 0: (..., width).

    Values below width * eps64 * lambda_max are treated as zero: a square root would otherwise
    lift them to ~1e-8 s_max singular values (the Gram route's only accuracy cost).
    """
    _check(h)
    h64 = h.double()
    gram = torch.mm(h64.t(), h64) if h.ndim == 2 else h64.mT @ h64
    lam = torch.linalg.eigvalsh(gram)
    return lam * (lam > lam[..., -1:] * (h.shape[-1] * torch.finfo(torch.float64).eps))


def singular_values(h: Tensor) -> Tensor:
    """Singular values of each (n, width) matrix, descending, shape (..., width), via the Gram matrix.

    For n < width the trailing width - n values are zeros.
    """
    return _gram_eigenvalues(h).flip(-1).sqrt()


def effective_rank(h: Tensor) -> Tensor:
    """Effective rank (Roy & Vetterli 2007): erank = exp(H(p)), p_i = s_i / sum_j s_j, H = -sum p log p.

    s are the singular values of the activation matrix (not centred), from the eigenvalues of
    the width x width Gram matrix. Ranges from 1 (rank one) to min(n, width) (all singular
    values equal); an all-zero matrix (every unit dead) gives 0.
    """
    s = _gram_eigenvalues(h).sqrt()
    total = s.sum(-1, keepdim=True)
    p = s / total
    erank = torch.exp(-torch.special.xlogy(p, p).sum(-1))
    return torch.where(total.squeeze(-1) > 0, erank, torch.zeros_like(erank)).to(h.dtype)


def firing_rates(h: Tensor, threshold: float = 0.0) -> Tensor:
    """q_j = fraction of the n examples on which unit j is active (h_j > threshold): shape (..., width)."""
    _check(h)
    return (h > threshold).to(h.dtype).mean(-2)


def active_fraction(h: Tensor, threshold: float = 0.0) -> Tensor:
    """Mean fraction of units active (h > threshold) per example: mean over examples and units."""
    return firing_rates(h, threshold).mean(-1)


def firing_entropy(q: Tensor) -> Tensor:
    """Mean over units of the binary entropy (bits) of firing rates q (..., width) -> (...)."""
    ent = -(torch.special.xlogy(q, q) + torch.special.xlogy(1 - q, 1 - q)) / math.log(2)
    return ent.mean(-1)


def activation_entropy(h: Tensor, threshold: float = 0.0) -> Tensor:
    """Mean over units of the binary entropy (bits) of each unit's firing rate over the probe set.

    q_j = P_examples(h_j > threshold); H_j = -q_j log2 q_j - (1 - q_j) log2 (1 - q_j). 0 for units
    that are dead or always on, 1 for units firing on half the inputs (maximally selective).
    """
    return firing_entropy(firing_rates(h, threshold))


#: The signals :func:`cheap_signals` computes, by name.
CHEAP = ("erank", "active_frac", "act_entropy")


def cheap_signals(h: Tensor, names: tuple[str, ...] = CHEAP) -> dict[str, Tensor]:
    """The named every-epoch signals of one activation tensor, sharing the firing mask."""
    unknown = set(names) - set(CHEAP)
    if unknown:
        raise ValueError(f"names: {sorted(unknown)} are not among {list(CHEAP)}")
    out: dict[str, Tensor] = {}
    q = firing_rates(h) if {"active_frac", "act_entropy"} & set(names) else None
    for name in names:
        if name == "erank":
            out[name] = effective_rank(h)
        elif name == "active_frac":
            out[name] = q.mean(-1)
        else:
            out[name] = firing_entropy(q)
    return out


def linear_cka(a: Tensor, b: Tensor) -> Tensor:
    """Linear CKA (Kornblith et al. 2019): ||B^T A||_F^2 / (||A^T A||_F ||B^T B||_F), A, B column-centred.

    Compares two representations of the same n examples (widths may differ); invariant to
    orthogonal transforms and isotropic scaling of either; 1 for identical representations.
    NaN when either is constant over the examples.
    """
    _check(a, "a")
    _check(b, "b")
    if a.shape[:-1] != b.shape[:-1]:
        raise ValueError(f"a, b: shapes {tuple(a.shape)} and {tuple(b.shape)} differ before the width")
    a64 = a.double() - a.double().mean(-2, keepdim=True)
    b64 = b.double() - b.double().mean(-2, keepdim=True)
    cross = (b64.mT @ a64).square().sum(dim=(-2, -1))
    norm_a = (a64.mT @ a64).square().sum(dim=(-2, -1)).sqrt()
    norm_b = (b64.mT @ b64).square().sum(dim=(-2, -1)).sqrt()
    return (cross / (norm_a * norm_b)).to(a.dtype)
