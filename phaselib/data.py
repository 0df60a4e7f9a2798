"""Datasets of the study: modular arithmetic (the grokking task) and the regression control.

Split protocol (PROTOCOL.md section 1): ``rng = numpy.random.RandomState(seed)``; for
regression ``x`` is drawn from ``rng`` first; then ``perm = rng.permutation(n_total)``; the
first ``int(n_total * frac)`` indices of ``perm`` are train, the rest test.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

OPERATIONS: tuple[str, ...] = ("add", "sub", "mul", "div")
TASKS: tuple[str, ...] = ("modular", "regression")
REGRESSION_N = 2000
REGRESSION_RANGE = (-3.0, 3.0)


def is_prime(n: int) -> bool:
    """Trial division; moduli here are small."""
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    k = 3
    while k * k <= n:
        if n % k == 0:
            return False
        k += 2
    return True


@dataclass(frozen=True)
class Dataset:
    """One split of one task. ``x_*`` are float32 model inputs, ``y_*`` targets.

    For modular tasks ``a``/``b``/``label`` hold the integer operands and labels of the
    *whole* table (in enumeration order) and ``train_idx``/``test_idx`` index into it, so a
    fast path can gather embedding columns instead of multiplying one-hot vectors.
    """

    task: str
    operation: str | None
    modulus: int | None
    frac: float
    seed: int
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    train_idx: np.ndarray
    test_idx: np.ndarray
    in_dim: int
    out_dim: int
    a: np.ndarray | None = None
    b: np.ndarray | None = None
    label: np.ndarray | None = None

    @property
    def n_total(self) -> int:
        return len(self.train_idx) + len(self.test_idx)


def modular_table(p: int, operation: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All operand pairs a-major (a outer, b inner) and their labels ``a op b mod p``.

    ``div`` means ``a * b^-1 mod p``; it needs p prime and leaves out b = 0.
    """
    if operation not in OPERATIONS:
        raise ValueError(f"operation: {operation!r} is not one of {list(OPERATIONS)}")
    if p < 2:
        raise ValueError(f"modulus: {p} is out of range (need an integer >= 2)")
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    a, b = a.ravel(), b.ravel()
    if operation == "div":
        if not is_prime(p):
            raise ValueError(f"modulus: div needs a prime modulus, got {p}")
        keep = b != 0
        a, b = a[keep], b[keep]
        inv = np.array([0] + [pow(int(v), p - 2, p) for v in range(1, p)])
        label = (a * inv[b]) % p
    elif operation == "add":
        label = (a + b) % p
    elif operation == "sub":
        label = (a - b) % p
    else:
        label = (a * b) % p
    return a.astype(np.int64), b.astype(np.int64), label.astype(np.int64)


def split_indices(rng: np.random.RandomState, n_total: int, frac: float) -> tuple[np.ndarray, np.ndarray]:
    """The paper's split: first ``int(n_total * frac)`` entries of ``rng.permutation`` are train."""
    perm = rng.permutation(n_total)
    n_train = int(n_total * frac)
    return perm[:n_train], perm[n_train:]


def one_hot_pairs(a: np.ndarray, b: np.ndarray, p: int) -> torch.Tensor:
    """Concatenated one-hot(a), one-hot(b): shape (n, 2p), float32."""
    x = torch.zeros(len(a), 2 * p, dtype=torch.float32)
    rows = torch.arange(len(a))
    x[rows, torch.as_tensor(a)] = 1.0
    x[rows, p + torch.as_tensor(b)] = 1.0
    return x


def make_modular(p: int, operation: str, frac: float, seed: int) -> Dataset:
    """Modular-arithmetic dataset with the paper's split."""
    a, b, label = modular_table(p, operation)
    rng = np.random.RandomState(seed)
    train_idx, test_idx = split_indices(rng, len(a), frac)
    x = one_hot_pairs(a, b, p)
    y = torch.as_tensor(label)
    return Dataset(
        task="modular", operation=operation, modulus=p, frac=frac, seed=seed,
        x_train=x[train_idx], y_train=y[train_idx], x_test=x[test_idx], y_test=y[test_idx],
        train_idx=train_idx, test_idx=test_idx, in_dim=2 * p, out_dim=p, a=a, b=b, label=label,
    )


def make_regression(frac: float, seed: int, n: int = REGRESSION_N) -> Dataset:
    """Regression control: x ~ U[-3, 3], y = sin(x) + 0.3 sin(3x); x drawn before the split."""
    rng = np.random.RandomState(seed)
    x = rng.uniform(*REGRESSION_RANGE, size=(n, 1)).astype(np.float32)
    y = (np.sin(x) + 0.3 * np.sin(3 * x)).astype(np.float32)
    train_idx, test_idx = split_indices(rng, n, frac)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    return Dataset(
        task="regression", operation=None, modulus=None, frac=frac, seed=seed,
        x_train=xt[train_idx], y_train=yt[train_idx], x_test=xt[test_idx], y_test=yt[test_idx],
        train_idx=train_idx, test_idx=test_idx, in_dim=1, out_dim=1,
    )
