"""Representation signals on activations of known structure."""
from __future__ import annotations

import math

import pytest
import torch

from phaselib import representation as R


@pytest.fixture(autouse=True, scope="module")
def _one_thread():  # tiny models: one thread is faster, and robust to other jobs on the cores
    threads = torch.get_num_threads(); torch.set_num_threads(1); yield; torch.set_num_threads(threads)  # noqa: E702


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _with_singular_values(s: list[float], n: int = 40, width: int = 12, seed: int = 0) -> torch.Tensor:
    """An (n, width) matrix with the given nonzero singular values and random singular vectors."""
    g = _gen(seed)
    u, _ = torch.linalg.qr(torch.randn(n, len(s), generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(width, len(s), generator=g, dtype=torch.float64))
    return u @ torch.diag(torch.tensor(s, dtype=torch.float64)) @ v.T


@pytest.mark.parametrize("s, expected", [
    ([1.0], 1.0),
    ([2.0, 2.0, 2.0, 2.0], 4.0),
    ([1.0] * 12, 12.0),
    ([3.0, 1.0], math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))),
    ([5.0, 1e-3], math.exp(-(5 / 5.001 * math.log(5 / 5.001) + 1e-3 / 5.001 * math.log(1e-3 / 5.001)))),
])
def test_effective_rank_of_known_spectra(s, expected):
    h = _with_singular_values(s)
    assert abs(float(R.effective_rank(h)) - expected) < 1e-9 * expected
    torch.testing.assert_close(R.singular_values(h)[: len(s)], torch.tensor(sorted(s, reverse=True),
                                                                            dtype=torch.float64))


def test_effective_rank_float32_and_edges():
    h = _with_singular_values([4.0, 2.0, 1.0]).float()
    s = torch.tensor([4.0, 2.0, 1.0]) / 7
    expected = math.exp(float(-(s * s.log()).sum()))
    assert R.effective_rank(h).dtype == torch.float32
    assert abs(float(R.effective_rank(h)) - expected) < 1e-3 * expected
    assert float(R.effective_rank(torch.zeros(10, 5))) == 0.0  # every unit dead
    assert abs(float(R.effective_rank(torch.ones(10, 5))) - 1.0) < 1e-6  # rank one
    # scale invariant; a wide (n < width) matrix has at most n
    h = torch.randn(6, 30, generator=_gen(1))
    assert abs(float(R.effective_rank(h)) - float(R.effective_rank(7.0 * h))) < 1e-4
    assert float(R.effective_rank(h)) <= 6 + 1e-5
    with pytest.raises(ValueError, match="h"):
        R.effective_rank(torch.ones(5))


def test_batched_shapes_match_unbatched():
    h = torch.relu(torch.randn(3, 4, 50, 16, generator=_gen(2)))
    for fn in (R.effective_rank, R.active_fraction, R.activation_entropy):
        out = fn(h)
        assert out.shape == (3, 4)
        for i in range(3):
            for j in range(4):
                torch.testing.assert_close(out[i, j], fn(h[i, j]))
    cka = R.linear_cka(h, h.flip(0))
    assert cka.shape == (3, 4)
    torch.testing.assert_close(cka[0, 1], R.linear_cka(h[0, 1], h[2, 1]))


def test_active_fraction_and_entropy_by_hand():
    # unit 0 always on, unit 1 never, unit 2 on half the time, unit 3 on a quarter of the time
    h = torch.tensor([[1.0, 0.0, 2.0, 3.0],
                      [1.0, -1.0, 0.0, 0.0],
                      [2.0, 0.0, 5.0, 0.0],
                      [1.0, 0.0, 0.0, 0.0]])
    assert float(R.active_fraction(h)) == pytest.approx(7 / 16)
    h4 = -(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75))
    assert float(R.activation_entropy(h)) == pytest.approx((0 + 0 + 1 + h4) / 4)
    assert float(R.active_fraction(h, threshold=1.5)) == pytest.approx(4 / 16)  # 2, 3, 2, 5


def test_cka_invariances():
    """Acceptance: CKA is invariant to orthogonal transforms and isotropic scaling."""
    g = _gen(3)
    x = torch.randn(100, 20, generator=g, dtype=torch.float64)
    y = x @ torch.randn(20, 15, generator=g, dtype=torch.float64) + 0.5 * torch.randn(100, 15, generator=g,
                                                                                       dtype=torch.float64)
    base = float(R.linear_cka(x, y))
    assert 0.1 < base < 0.99
    q, _ = torch.linalg.qr(torch.randn(20, 20, generator=g, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(15, 15, generator=g, dtype=torch.float64))
    assert abs(float(R.linear_cka(x @ q, y)) - base) < 1e-12
    assert abs(float(R.linear_cka(x, y @ q2)) - base) < 1e-12
    assert abs(float(R.linear_cka(3.7 * x, 0.01 * y)) - base) < 1e-12
    assert abs(float(R.linear_cka(x + 5.0, y - 2.0)) - base) < 1e-12  # centring
    assert abs(float(R.linear_cka(y, x)) - base) < 1e-12
    assert abs(float(R.linear_cka(x, x)) - 1) < 1e-12
    # not invariant to anisotropic scaling: the test can fail
    d = torch.diag(torch.logspace(0, 2, 20, dtype=torch.float64))
    assert abs(float(R.linear_cka(x @ d, y)) - base) > 1e-3
    assert math.isnan(float(R.linear_cka(torch.ones(10, 3), x[:10])))
    with pytest.raises(ValueError, match="a, b"):
        R.linear_cka(x, y[:50])


def test_cka_matches_kernel_form():
    """Width-space formula equals the n x n kernel form HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))."""
    g = _gen(4)
    x = torch.randn(30, 7, generator=g, dtype=torch.float64)
    y = torch.randn(30, 9, generator=g, dtype=torch.float64)
    c = torch.eye(30, dtype=torch.float64) - 1 / 30
    k, l_ = c @ x @ x.T @ c, c @ y @ y.T @ c
    ref = (k * l_).sum() / ((k * k).sum() * (l_ * l_).sum()).sqrt()
    assert abs(float(R.linear_cka(x, y)) - float(ref)) < 1e-12
