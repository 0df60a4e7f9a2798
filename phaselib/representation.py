"""Representation signals of hidden activations on a fixed probe set.

Every function takes activations ``h`` of shape ``(..., n, width)`` (n probe examples, optional
leading batch dimensions, e.g. R runs trained at once) and returns a tensor of shape ``(...)``.
Spectral quantities are computed in float64 from the width x width Gram matrix, which is cheap
for narrow layers and accurate enough for the small singular values that set the effective rank.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _check(h: Tensor, name: str = "h") -> None:
    if h.ndim < 2:
        raise ValueError(f"{name}: shape {tuple(h.shape)} is invalid; need (..., n, width)")


def singular_values(h: Tensor) -> Tensor:
    """Singular values of each (n, width) matrix, descending, shape (..., width).

    From the eigenvalues of the Gram matrix h^T h, s_i = sqrt(lambda_i). Eigenvalues below
    width * eps64 * lambda_max are round-off of zero (a square root would lift them to
    ~1e-8 s_max) and are set to 0; for n < width the trailing width - n values are zeros.
    """
    _check(h)
    h64 = h.double()
    gram = h64.mT @ h64
    lam = torch.linalg.eigvalsh(gram).flip(-1)
    cutoff = lam[..., :1] * (h.shape[-1] * torch.finfo(torch.float64).eps)
    return torch.where(lam > cutoff, lam, torch.zeros_like(lam)).sqrt()


def effective_rank(h: Tensor) -> Tensor:
    """Effective rank (Roy & Vetterli 2007): erank = exp(H(p)), p_i = s_i / sum_j s_j, H = -sum p log p.

    s are the singular values of the activation matrix (not centred). Ranges from 1 (rank one)
    to min(n, width) (all singular values equal); an all-zero matrix (every unit dead) gives 0.
    """
    s = singular_values(h)
    total = s.sum(-1, keepdim=True)
    p = s / total.clamp_min(torch.finfo(s.dtype).tiny)
    plogp = torch.where(p > 0, p * p.clamp_min(torch.finfo(s.dtype).tiny).log(), torch.zeros_like(p))
    erank = torch.exp(-plogp.sum(-1))
    return torch.where(total.squeeze(-1) > 0, erank, torch.zeros_like(erank)).to(h.dtype)


def active_fraction(h: Tensor, threshold: float = 0.0) -> Tensor:
    """Mean fraction of units active (h > threshold) per example: mean over examples and units."""
    _check(h)
    return (h > threshold).to(h.dtype).mean(dim=(-2, -1))


def activation_entropy(h: Tensor, threshold: float = 0.0) -> Tensor:
    """Mean over units of the binary entropy (bits) of each unit's firing rate over the probe set.

    q_j = P_examples(h_j > threshold); H_j = -q_j log2 q_j - (1 - q_j) log2 (1 - q_j). 0 for units
    that are dead or always on, 1 for units firing on half the inputs (maximally selective).
    """
    _check(h)
    q = (h > threshold).double().mean(-2)

    def xlog2x(t: Tensor) -> Tensor:
        return torch.where(t > 0, t * torch.log2(t.clamp_min(1e-300)), torch.zeros_like(t))

    return (-(xlog2x(q) + xlog2x(1 - q))).mean(-1).to(h.dtype)


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
