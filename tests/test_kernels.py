"""The fused C kernels against float64 ground truth and the torch operations they replace."""
from __future__ import annotations

import os
import shutil
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from phaselib import kernels
from phaselib.engine import EXP_FLOOR

native = pytest.mark.skipif(kernels.library() is None, reason="native kernels did not build here")


def logits(rows: int = 300, p: int = 13, ldz: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits with hard rows: a 120-nat gap (exp below the floor), ties, a huge scale."""
    g = torch.Generator().manual_seed(seed)
    z = torch.full((rows, ldz), -torch.inf)
    z[:, :p] = torch.randn(rows, p, generator=g) * 5
    z[0, :p] = torch.linspace(-120, 0, p)  # a class 120 nats below the max
    z[1, :p] = 3.0  # every class tied
    z[2, :p] *= 40  # spread of hundreds of nats
    y = torch.randint(0, p, (rows,), generator=g)
    y[1] = p - 1
    return z, y


def truth(z: torch.Tensor, y: torch.Tensor, p: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 cross-entropy, 'label attains the max', softmax - onehot; classes below the floor as exp(floor)."""
    zd = z.double()
    shifted = zd - zd.max(1, keepdim=True).values
    e = shifted.clamp_min(EXP_FLOOR).exp()
    s = e.sum(1)
    nll = s.log() - shifted.gather(1, y[:, None]).squeeze(1)  # the label's own logit is not clamped
    correct = (z.gather(1, y[:, None]) >= z.max(1, keepdim=True).values).squeeze(1)
    dz = (e / s[:, None])[:, :p] - F.one_hot(y, p).double()
    return nll.numpy(), correct.numpy(), dz.numpy()


@native
@pytest.mark.parametrize("n_train", [0, 17, 300])
def test_xent_rows_matches_float64_truth(n_train):
    z, y = logits()
    nll, correct, dz = torch.empty(300), torch.empty(300, dtype=torch.bool), torch.full((300, 13), np.nan)
    kernels.xent_rows(z, 13, n_train, y, EXP_FLOOR, nll, correct, dz)
    t_nll, t_correct, t_dz = truth(z, y, 13)
    np.testing.assert_allclose(nll.numpy(), t_nll, rtol=2e-6, atol=2e-6)
    assert np.array_equal(correct.numpy(), t_correct)
    np.testing.assert_allclose(dz[:n_train].numpy(), t_dz[:n_train], rtol=0, atol=3e-7)
    assert torch.isnan(dz[n_train:]).all()  # rows past n_train are not written


@native
def test_exp_is_accurate_to_a_few_ulp_over_its_range():
    """With one class at d and 7 at the floor, the softmax gradient of the class is e^d/(e^d + 7e^floor)."""
    d = torch.linspace(EXP_FLOOR, 0.0, 4001)
    z = torch.full((d.numel(), 8), -torch.inf)
    z[:, 0], z[:, 1] = d, 0.0  # class 1 is the max (0), class 0 at d
    y = torch.ones(d.numel(), dtype=torch.long)
    dz = torch.empty(d.numel(), 8)
    kernels.xent_rows(z, 8, d.numel(), y, EXP_FLOOR, None, None, dz)
    e = d.double().exp()
    s = 1.0 + e + 6 * np.exp(EXP_FLOOR)
    rel = ((dz[:, 0].double() - e / s) / (e / s)).abs().max().item()
    assert rel < 5e-7, rel  # a few float32 ulp (the division by s adds one)


@native
def test_xent_rows_propagates_nan():
    z, y = logits(rows=4)
    z[3, 5] = torch.nan
    nll, correct, dz = torch.empty(4), torch.empty(4, dtype=torch.bool), torch.empty(4, 13)
    kernels.xent_rows(z, 13, 4, y, EXP_FLOOR, nll, correct, dz)
    assert torch.isnan(nll[3]) and torch.isnan(dz[3]).all() and not torch.isnan(nll[:3]).any()


@native
def test_hidden_rows_is_bit_identical_to_torch():
    g = torch.Generator().manual_seed(1)
    E = torch.randn(26, 9, generator=g)
    ia, ib = torch.randint(0, 13, (500,), generator=g), torch.randint(13, 26, (500,), generator=g)
    h = torch.empty(500, 9)
    kernels.hidden_rows(E, ia, ib, h)
    assert torch.equal(h, torch.relu(E[ia] + E[ib]))


@native
def test_scatter_hidden_grad_matches_index_add_and_embedding_bag():
    g = torch.Generator().manual_seed(2)
    n, width, rows = 400, 8, 26
    ia, ib = torch.randint(0, 13, (n,), generator=g), torch.randint(13, 26, (n,), generator=g)
    dh = torch.randn(n, width, generator=g)
    h = torch.randn(n, width + 1, generator=g).relu()  # one extra column, as the engine's constant unit
    h[::7, :3] = 0.0
    dE = torch.full((rows, width), np.nan)
    kernels.scatter_hidden_grad(dh, h, ia, ib, dE)
    masked = (dh * (h[:, :width] > 0)).double()
    want = torch.zeros(rows, width, dtype=torch.float64).index_add_(0, ia, masked).index_add_(0, ib, masked)
    np.testing.assert_allclose(dE.double().numpy(), want.numpy(), rtol=1e-6, atol=1e-6)
    # the engine's torch path: segment sums in source-row order, which the C loop also follows
    dest = torch.cat([ia, ib])
    order = torch.argsort(dest, stable=True)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.bincount(dest, minlength=rows).cumsum(0)[:-1]])
    bag = F.embedding_bag(torch.arange(n).repeat(2)[order], (dh * (h[:, :width] > 0)), offsets, mode="sum")
    assert torch.equal(dE, bag)


@native
def test_bad_shapes_and_indices_are_refused():
    z, y = logits(rows=10)
    with pytest.raises(ValueError, match="xent_rows"):
        kernels.xent_rows(z[:, :12].contiguous(), 13, 5, y, EXP_FLOOR, None, None, torch.empty(10, 13))
    with pytest.raises(ValueError, match="y: labels"):
        kernels.xent_rows(z, 13, 5, y + 13, EXP_FLOOR, None, None, torch.empty(10, 13))
    with pytest.raises(ValueError, match="xent_rows: shapes"):  # a negative n_train once reached C
        kernels.xent_rows(z, 13, -10, y, EXP_FLOOR, None, None, torch.empty(10, 13))
    with pytest.raises(ValueError, match="int64"):
        kernels.xent_rows(z, 13, 5, y.double(), EXP_FLOOR, None, None, torch.empty(10, 13))
    with pytest.raises(ValueError, match=r"floor: -100.0 is invalid; allowed: \[-87, 0\]"):
        kernels.xent_rows(z, 13, 5, y, -100.0, None, None, torch.empty(10, 13))
    with pytest.raises(ValueError, match="nll, correct: 5, 5 entries are invalid"):
        kernels.xent_rows(z, 13, 5, y, EXP_FLOOR, torch.empty(5), torch.empty(5, dtype=torch.bool), torch.empty(10, 13))
    with pytest.raises(ValueError, match="contiguous"):
        kernels.xent_rows(z, 13, 5, y, EXP_FLOOR, None, None, torch.empty(13, 10).T)
    with pytest.raises(ValueError, match="index"):
        kernels.hidden_rows(torch.zeros(4, 3), torch.tensor([0, 4]), torch.tensor([1, 2]), torch.empty(2, 3))
    with pytest.raises(ValueError, match="index"):
        kernels.scatter_hidden_grad(torch.zeros(2, 3), torch.ones(2, 3), torch.tensor([0, -1]), torch.tensor([1, 2]),
                                    torch.empty(4, 3))


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty build cache and no memory of earlier loads."""
    monkeypatch.setenv("PHASELIB_CACHE", str(tmp_path))
    kernels._library.cache_clear()
    yield tmp_path
    kernels._library.cache_clear()


def test_invalid_mode_names_the_variable(fresh, monkeypatch):
    monkeypatch.setenv("PHASELIB_KERNELS", "fast")
    with pytest.raises(ValueError, match="PHASELIB_KERNELS: 'fast' is invalid; allowed: one of"):
        kernels.library()


def test_torch_mode_never_builds(fresh, monkeypatch):
    monkeypatch.setenv("PHASELIB_KERNELS", "torch")
    assert kernels.library() is None and not kernels.use_native(torch.device("cpu"))
    with pytest.raises(kernels.KernelBuildError, match="PHASELIB_KERNELS=torch"):
        kernels.hidden_rows(torch.zeros(4, 3), torch.tensor([0]), torch.tensor([1]), torch.empty(1, 3))
    assert list(fresh.iterdir()) == []


def test_without_a_compiler_auto_warns_and_native_fails(fresh, monkeypatch):
    monkeypatch.setenv("CC", str(fresh / "no-such-compiler"))
    monkeypatch.setenv("PHASELIB_KERNELS", "auto")
    with pytest.warns(RuntimeWarning, match="native kernels unavailable"):
        assert kernels.library() is None
    monkeypatch.setenv("PHASELIB_KERNELS", "native")
    with pytest.raises(kernels.KernelBuildError, match="PHASELIB_KERNELS=native"):
        kernels.library()


@native
def test_build_is_cached_and_atomic(fresh, monkeypatch):
    monkeypatch.setenv("PHASELIB_KERNELS", "native")
    first = kernels.build()
    stamp = first.stat().st_mtime_ns
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kernels.library() is not None
    assert kernels.build() == first and first.stat().st_mtime_ns == stamp  # not rebuilt
    assert [q.name for q in fresh.iterdir()] == [first.name]  # no temporary files left


def test_kernels_build_wherever_a_c_compiler_exists(fresh, monkeypatch):
    """So that a machine with a compiler never falls back to the slower path unnoticed (the
    native tests above would only be skipped)."""
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        pytest.skip(f"no C compiler ({cc}) on this machine")
    monkeypatch.setenv("PHASELIB_KERNELS", "native")
    assert kernels.library() is not None and kernels.use_native(torch.device("cpu"))
    assert not kernels.use_native(torch.device("meta"))  # other devices take the torch path


@native
def test_xent_rows_may_write_the_gradient_over_its_own_logits():
    """The engine keeps one buffer per run: dz = z[:, :p], each row read before it is overwritten."""
    z, y = logits()
    nll, correct, dz = torch.empty(300), torch.empty(300, dtype=torch.bool), torch.empty(300, 13)
    kernels.xent_rows(z.clone(), 13, 200, y, EXP_FLOOR, nll, correct, dz)
    zz = z.clone()
    nll2, correct2 = torch.empty(300), torch.empty(300, dtype=torch.bool)
    kernels.xent_rows(zz, 13, 200, y, EXP_FLOOR, nll2, correct2, zz[:, :13])
    assert torch.equal(zz[:200, :13], dz[:200]) and torch.equal(nll2, nll) and torch.equal(correct2, correct)
    assert torch.equal(zz[200:], z[200:]) and torch.equal(zz[:, 13:], z[:, 13:])  # nothing else written
    for other in (zz[1:, :13], zz[:, 1:14], zz.view(-1)[:300 * 13].view(300, 13)):  # overlapping, not row-aligned
        with pytest.raises(ValueError, match="dz: a view overlapping z"):
            kernels.xent_rows(zz, 13, 10, y, EXP_FLOOR, None, None, other)


def one_hot_mlp(p: int = 13, width: int = 16, seed: int = 0):
    """Random float64 weights of a one-hot MLP and the kernel layouts of their float32 values."""
    g = torch.Generator().manual_seed(seed)
    W1, b1 = torch.randn(width, 2 * p, generator=g, dtype=torch.float64), torch.randn(width, generator=g, dtype=torch.float64)
    W2, b2 = torch.randn(p, width, generator=g, dtype=torch.float64), torch.randn(p, generator=g, dtype=torch.float64)
    W1, b1, W2, b2 = (t.float().double() for t in (W1, b1, W2, b2))  # exactly representable in float32
    P8 = -(-p // 8) * 8
    E = torch.empty(2 * p, width + 1)
    E[:p, :width], E[p:, :width], E[:, width] = (W1[:, :p] + b1[:, None]).T.float(), W1[:, p:].T.float(), 0.5
    W2T = torch.zeros(width + 1, P8)
    W2T[:width, :p], W2T[width, :p], W2T[width, p:] = W2.T.float(), b2.float(), -torch.inf
    return (W1, b1, W2, b2), (E, W2T)


@native
@pytest.mark.parametrize("n_train, segments, block", [(100, [0, 48, 169], 32), (169, [0, 169], 256), (40, [0, 40, 169], 7)])
def test_modular_rows_matches_float64_autograd(n_train, segments, block):
    """The fused step's segments, summed, give the dense one-hot model's float64 gradient of the
    summed train loss, and every row's loss and hit; test rows add no gradient."""
    check_modular_rows(13, 16, n_train, segments, block)


@native
@pytest.mark.parametrize("p, width", [(5, 5), (7, 8), (11, 11), (23, 24), (29, 40), (53, 50), (97, 64)])
def test_modular_rows_is_right_for_every_tiling_of_the_matmuls(p, width):
    """The register tiles split the rows of a product into strips of 6 (a rest of 7 as 4 + 3) and
    its columns into panels of 4 vectors (a rest of 5 as 3 + 2); the output layer's lane sums take
    5 rows of h by 4 classes (rests of 6 and 5 as 3 + 3 and 3 + 2). These shapes take every strip
    of 2 to 6 rows among the logits' p and dh's width rows, lane tiles of 2 to 5 rows (width + 1 =
    6, 9, 12, ...) and 2 to 4 classes, widths that are not a multiple of 8 (the hidden layer's and
    the scatter's scalar rest), and the study's p = 97, width 64."""
    n = p * p
    check_modular_rows(p, width, int(0.7 * n), [0, n // 3, n], 256)


def check_modular_rows(p: int, width: int, n_train: int, segments: list[int], block: int) -> None:
    """Run the fused step over ``segments`` of a mod-p table (rows shuffled, the first ``n_train``
    train rows) and compare the summed gradients and every row's loss and hit with float64 autograd
    of the dense one-hot model."""
    (W1, b1, W2, b2), (E, W2T) = one_hot_mlp(p, width)
    g = torch.Generator().manual_seed(1)
    rows = torch.randperm(p * p, generator=g)
    a, b = rows // p, rows % p
    y = (a + b) % p
    params = [t.clone().requires_grad_() for t in (W1, b1, W2, b2)]
    x = torch.cat([F.one_hot(a, p), F.one_hot(b, p)], 1).double()
    z = F.linear(torch.relu(F.linear(x, params[0], params[1])), params[2], params[3])
    nll_true = F.cross_entropy(z, y, reduction="none")
    nll_true[:n_train].sum().backward()
    dW2, dE, db1 = torch.zeros(width + 1, p), torch.zeros(2 * p, width), torch.zeros(width)
    nll, correct = torch.empty(p * p), torch.empty(p * p, dtype=torch.bool)
    for lo, hi in zip(segments, segments[1:]):
        s2, sE, s1 = torch.empty(width + 1, p), torch.empty(2 * p, width), torch.empty(width)
        kernels.modular_rows(E, W2T, a.long(), (b + p).long(), y.long(), lo, hi, n_train, EXP_FLOOR, s2, sE, s1,
                             nll, correct, block=block)
        dW2, dE, db1 = dW2 + s2, dE + sE, db1 + s1

    def close(got, want):
        want = want.detach()
        np.testing.assert_allclose(got.double().numpy(), want.numpy(), rtol=0,
                                   atol=2e-5 * float(want.abs().max()))
    close(dW2[:width], params[2].grad.T)
    close(dW2[width], params[3].grad)
    close(dE, params[0].grad.T)
    close(db1, params[1].grad)
    close(nll, nll_true)
    assert torch.equal(correct, z.argmax(1) == y)  # no exact ties in random float64 logits


@native
def test_modular_rows_refuses_bad_arguments():
    _, (E, W2T) = one_hot_mlp()
    ia, ib, y = torch.zeros(10, dtype=torch.long), torch.full((10,), 13), torch.zeros(10, dtype=torch.long)
    out = torch.empty(17, 13), torch.empty(26, 16), torch.empty(16)
    with pytest.raises(ValueError, match="modular_rows: shapes"):
        kernels.modular_rows(E, W2T[:, :12], ia, ib, y, 0, 10, 5, EXP_FLOOR, *out)
    with pytest.raises(ValueError, match="lo, hi, n_train: 0, 11, 5 are invalid"):
        kernels.modular_rows(E, W2T, ia, ib, y, 0, 11, 5, EXP_FLOOR, *out)
    with pytest.raises(ValueError, match="index"):
        kernels.modular_rows(E, W2T, ia, ib + 13, y, 0, 10, 5, EXP_FLOOR, *out)
    with pytest.raises(ValueError, match="nll, correct"):
        kernels.modular_rows(E, W2T, ia, ib, y, 0, 10, 5, EXP_FLOOR, *out, nll=torch.empty(10))


@native
def test_modular_rows_writes_each_row_output_only_where_given():
    """The C entry point takes sums, shift and correct each as a pointer or NULL (the wrapper passes
    all or none): any subset writes exactly those outputs, with the values of the full call, and
    the gradients do not depend on them."""
    p, width, n = 13, 16, 169
    _, (E, W2T) = one_hot_mlp(p, width)
    rows = torch.randperm(n, generator=torch.Generator().manual_seed(2))
    ia, ib = (rows // p).long(), (rows % p + p).long()
    y = ((rows // p + rows % p) % p).long()
    lib, K, P8 = kernels.library(), width + 1, W2T.shape[1]
    work = torch.empty(lib.modular_scratch(p, width, 64))

    def call(**given):
        out = {"sums": torch.full((n,), -7.0), "shift": torch.full((n,), -7.0),
               "correct": torch.full((n,), 7, dtype=torch.uint8)}
        grads = torch.empty(K, P8), torch.empty(2 * p, width), torch.empty(width)
        ptr = {k: (v.data_ptr() if given.get(k) else None) for k, v in out.items()}
        lib.modular_rows(E.data_ptr(), W2T.data_ptr(), p, P8, width, ia.data_ptr(), ib.data_ptr(), y.data_ptr(),
                         0, n, 100, 64, EXP_FLOOR, ptr["sums"], ptr["shift"], ptr["correct"], work.data_ptr(),
                         grads[0].data_ptr(), grads[1].data_ptr(), 2 * p, grads[2].data_ptr())
        return out, grads

    full, grads = call(sums=True, shift=True, correct=True)
    assert (full["sums"] > 0).all() and (full["correct"] <= 1).all()
    for given in ({}, {"sums": True}, {"shift": True}, {"correct": True}, {"sums": True, "correct": True}):
        out, g = call(**given)
        for name, value in out.items():
            assert torch.equal(value, full[name]) if given.get(name) else (value == (7 if name == "correct" else -7)).all()
        assert all(torch.equal(a[..., :p] if i == 0 else a, b[..., :p] if i == 0 else b)
                   for i, (a, b) in enumerate(zip(g, grads)))
