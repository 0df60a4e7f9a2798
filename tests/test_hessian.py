"""Hessian signals against ground truth: dense Hessians of tiny models and matrices of known spectrum."""
from __future__ import annotations

import math

import pytest
import torch

from phaselib import hessian as H
from phaselib.data import make_modular, make_regression
from phaselib.models import make_model


@pytest.fixture(autouse=True, scope="module")
def _one_thread():  # tiny models: one thread is faster, and robust to other jobs on the cores
    threads = torch.get_num_threads(); torch.set_num_threads(1); yield; torch.set_num_threads(threads)  # noqa: E702


def _trained(p: int, width: int = 8, steps: int = 100, seed: int = 0):
    """A float64 MLP on modular addition mod p, trained a little (so its Hessian is indefinite)."""
    ds = make_modular(p, "add", 0.7, seed)
    model = make_model(ds.in_dim, width, ds.out_dim, seed).double()
    x, y = ds.x_train.double(), ds.y_train
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    loss_fn = H.task_loss("modular")
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return model, loss_fn, x, y


@pytest.fixture(scope="module", params=[11, 23])
def case(request):
    model, loss_fn, x, y = _trained(request.param)
    dense = H.dense_hessian(model, loss_fn, x, y)
    return model, loss_fn, x, y, dense, torch.linalg.eigvalsh(dense)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_task_loss():
    assert H.task_loss("modular") is torch.nn.functional.cross_entropy
    assert H.task_loss("regression") is torch.nn.functional.mse_loss
    with pytest.raises(ValueError, match="task"):
        H.task_loss("classification")


def test_dense_hessian_matches_autograd(case):
    model, loss_fn, x, y, dense, _ = case
    names = H.param_names(model)
    theta = H.flat_params(model, names)
    ref = torch.autograd.functional.hessian(H._flat_loss(model, loss_fn, x, y, names), theta, vectorize=True)
    torch.testing.assert_close(dense, ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method", H.HVP_METHODS)
def test_hvp_matches_dense(case, method):
    model, loss_fn, x, y, dense, _ = case
    op = H.hessian_operator(model, loss_fn, x, y, method=method)
    v = torch.randn(op.dim, generator=_gen(), dtype=torch.float64)
    torch.testing.assert_close(op(v), dense @ v, rtol=1e-9, atol=1e-12)
    # the gradient by-product is the loss gradient
    model.zero_grad(set_to_none=True)
    loss_fn(model(x), y).backward()
    g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    model.zero_grad(set_to_none=True)
    torch.testing.assert_close(op.gradient, g, rtol=1e-9, atol=1e-12)


def test_unknown_method_names_every_allowed_one(case):
    model, loss_fn, x, y, _, _ = case
    with pytest.raises(ValueError, match="method: 'fast' is invalid; allowed: one of") as err:
        H.hessian_operator(model, loss_fn, x, y, method="fast")
    assert all(repr(m) in str(err.value) for m in ("auto", *H.HVP_METHODS))


def test_closed_form_only_where_it_applies(case):
    model, loss_fn, x, y, _, _ = case
    assert H._closed_form_applies(model, loss_fn)
    seq = torch.nn.Sequential(model.fc1, torch.nn.ReLU(), model.fc2)  # same function, not the MLP class
    assert not H._closed_form_applies(seq, loss_fn)
    assert not H._closed_form_applies(model, torch.nn.functional.mse_loss)
    with pytest.raises(ValueError, match="method: 'closed' is invalid"):
        H.hessian_operator(seq, loss_fn, x, y, method="closed")
    v = torch.randn(sum(p.numel() for p in model.parameters()), generator=_gen(4), dtype=torch.float64)
    auto = H.hessian_operator(seq, loss_fn, x, y)  # falls back to vjp; same operator
    torch.testing.assert_close(auto(v), H.hessian_operator(model, loss_fn, x, y)(v), rtol=1e-9, atol=1e-12)


def test_operator_leaves_model_alone(case):
    model, loss_fn, x, y, _, _ = case
    before = [p.detach().clone() for p in model.parameters()]
    op = H.hessian_operator(model, loss_fn, x, y)
    out = op(torch.ones(op.dim, dtype=torch.float64))
    assert not out.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_extremes_match_eigvalsh(case):
    """Acceptance: lambda_max and lambda_min agree with the dense eigvalsh to 1e-4 relative."""
    model, loss_fn, x, y, _, ev = case
    assert ev[0] < 0 < ev[-1], "the test model should have an indefinite Hessian"
    op = H.hessian_operator(model, loss_fn, x, y)
    top = H.lambda_max(op, tol=1e-8, max_iter=400, generator=_gen(1))
    bottom = H.lambda_min(op, tol=1e-8, max_iter=400, generator=_gen(2))
    for eig, ref in ((top, ev[-1]), (bottom, ev[0])):
        assert eig.converged
        assert abs(eig.value - float(ref)) <= 1e-4 * abs(float(ref))
        assert eig.residual < 1e-3 * float(ev.abs().max())
        assert abs(eig.value - float(ref)) <= eig.error_bound + 1e-13  # the estimate is not optimistic here
        assert abs(float(eig.vector.norm()) - 1) < 1e-10


def test_both_ends_in_one_run(case):
    model, loss_fn, x, y, _, ev = case
    op = H.hessian_operator(model, loss_fn, x, y)
    lo, hi = H.lanczos_extreme(op, "both", tol=1e-8, max_iter=400, generator=_gen(3))
    assert abs(lo.value - float(ev[0])) <= 1e-4 * abs(float(ev[0]))
    assert abs(hi.value - float(ev[-1])) <= 1e-4 * abs(float(ev[-1]))


def test_warm_start_from_eigenvector_is_fast(case):
    model, loss_fn, x, y, dense, ev = case
    op = H.hessian_operator(model, loss_fn, x, y)
    cold = H.lambda_min(op, tol=1e-6, max_iter=400, generator=_gen(4))
    exact = torch.linalg.eigh(dense).eigenvectors[:, 0]
    warm = H.lambda_min(op, exact + 1e-4 * torch.randn(op.dim, generator=_gen(5), dtype=torch.float64),
                        tol=1e-6, max_iter=400)
    assert warm.converged and warm.iterations < cold.iterations / 3


def test_unconverged_is_flagged(case):
    model, loss_fn, x, y, _, ev = case
    op = H.hessian_operator(model, loss_fn, x, y)
    eig = H.lambda_min(op, tol=1e-8, max_iter=4, generator=_gen(6))
    assert not eig.converged and eig.iterations == 4
    assert eig.value >= float(ev[0])  # Ritz values interlace: never below the true minimum


@pytest.mark.parametrize("method", ["vjp", "closed"])
@pytest.mark.parametrize("layer", ["fc1", "fc2"])
def test_layer_blocks(case, layer, method):
    """Per-layer operators are the diagonal blocks; each block is PSD for this model family."""
    model, loss_fn, x, y, dense, _ = case
    block = H.dense_hessian(model, loss_fn, x, y, layer)
    names = H.param_names(model)
    sizes = [p.numel() for p in model.parameters()]
    starts = dict(zip(names, [sum(sizes[:i]) for i in range(len(sizes))]))
    lo = starts[f"{layer}.weight"]
    torch.testing.assert_close(block, dense[lo:lo + block.shape[0], lo:lo + block.shape[0]])
    op = H.hessian_operator(model, loss_fn, x, y, layer, method=method)
    assert op.dim == block.shape[0]
    v = torch.randn(op.dim, generator=_gen(3), dtype=torch.float64)
    torch.testing.assert_close(op(v), block @ v, rtol=1e-9, atol=1e-12)
    ev = torch.linalg.eigvalsh(block)
    assert float(ev[0]) > -1e-10 * float(ev[-1])
    top = H.lambda_max(op, tol=1e-8, max_iter=300, generator=_gen(7))
    assert abs(top.value - float(ev[-1])) <= 1e-4 * float(ev[-1])
    with pytest.raises(ValueError, match="layer"):
        H.param_names(model, "fc9")


def test_one_hot_columns():
    x = torch.tensor([[0.0, 1, 0, 1], [1, 0, 0, 1], [0, 1, 1, 0]])
    assert torch.equal(H.one_hot_columns(x), torch.tensor([[1, 3], [0, 3], [1, 2]]))
    for bad in (torch.tensor([[0.0, 2], [1, 0]]),  # a value other than 0 and 1
                torch.tensor([[1.0, 1], [1, 0]]),  # rows with different counts of ones
                torch.zeros(2, 3), torch.zeros(0, 3), torch.ones(3)):  # no ones; no rows; not a matrix
        assert H.one_hot_columns(bad) is None


@pytest.mark.parametrize("layer", [None, "fc1", "fc2"])
def test_closed_form_on_inputs_that_are_not_one_hot(case, layer):
    """The closed form takes a gather for one-hot inputs (the cases above) and matmuls otherwise."""
    model, loss_fn, x, y, _, _ = case
    x = x + 0.1 * torch.rand(x.shape, generator=_gen(9), dtype=x.dtype)
    assert H.one_hot_columns(x) is None
    op = H.hessian_operator(model, loss_fn, x, y, layer, method="closed")
    v = torch.randn(op.dim, generator=_gen(10), dtype=torch.float64)
    torch.testing.assert_close(op(v), H.dense_hessian(model, loss_fn, x, y, layer) @ v, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(op.gradient, H.hessian_operator(model, loss_fn, x, y, layer, method="vjp").gradient,
                               rtol=1e-9, atol=1e-12)


def test_known_spectrum_and_scipy():
    q, _ = torch.linalg.qr(torch.randn(200, 200, generator=_gen(8), dtype=torch.float64))
    spectrum = torch.cat([torch.tensor([-3.0, -2.5]), torch.linspace(-1, 1, 196), torch.tensor([4.0, 5.0])])
    op = H.matrix_operator(q @ torch.diag(spectrum.double()) @ q.T)
    lo, hi = H.lanczos_extreme(op, "both", tol=1e-10, max_iter=200, generator=_gen(9))
    assert abs(lo.value + 3) < 1e-8 and abs(hi.value - 5) < 1e-8
    for which, ref in (("max", 5.0), ("min", -3.0)):
        eig = H.eigsh_extreme(op, which, tol=1e-10, generator=_gen(10))
        assert abs(eig.value - ref) < 1e-8 and eig.residual < 1e-6


def test_invariant_subspace_breakdown():
    """A start inside a 3-dimensional eigenspace breaks down after 3 steps; the restart still finds 10."""
    op = H.matrix_operator(torch.diag(torch.arange(1.0, 11.0, dtype=torch.float64)))
    v0 = torch.zeros(10, dtype=torch.float64)
    v0[[1, 4, 7]] = 1.0
    alpha, beta, basis = H.lanczos_tridiag(op, v0, 10, generator=_gen(0))
    assert beta[2] == 0.0 and len(alpha) == 10
    torch.testing.assert_close(basis @ basis.T, torch.eye(10, dtype=torch.float64))
    lo, hi = H.lanczos_extreme(op, "both", v0, tol=1e-12, generator=_gen(0))
    assert abs(hi.value - 10.0) < 1e-12 and abs(lo.value - 1.0) < 1e-12 and hi.converged


def test_hutchinson_within_three_stderr(case):
    """Acceptance: the Hutchinson trace lies within 3 standard errors of the exact trace."""
    model, loss_fn, x, y, dense, _ = case
    op = H.hessian_operator(model, loss_fn, x, y)
    exact = float(dense.trace())
    est = H.hutchinson_trace(op, 40, generator=_gen(11))
    assert est.stderr > 0 and abs(est.value - exact) <= 3 * est.stderr
    pp = H.hutchpp_trace(op, 42, generator=_gen(12))
    assert pp.stderr > 0 and abs(pp.value - exact) <= 3 * pp.stderr


def test_block_traces_from_shared_products(case):
    model, loss_fn, x, y, dense, _ = case
    op = H.hessian_operator(model, loss_fn, x, y)
    assert set(op.blocks) == {"fc1", "fc2"} and op.blocks["fc2"][1] == op.dim
    traces = H.hutchinson_block_traces(op, 40, generator=_gen(11))
    assert traces["all"] == H.hutchinson_trace(op, 40, generator=_gen(11))
    for layer, (lo, hi) in op.blocks.items():
        exact = float(dense[lo:hi, lo:hi].trace())
        assert abs(traces[layer].value - exact) <= 3 * traces[layer].stderr
    assert traces["fc1"].value + traces["fc2"].value == pytest.approx(traces["all"].value)


def _dense_block_traces(dense: torch.Tensor, model) -> dict[str, float]:
    n1 = sum(p.numel() for p in model.fc1.parameters())
    return {"all": float(dense.trace()), "fc1": float(dense[:n1, :n1].trace()), "fc2": float(dense[n1:, n1:].trace())}


def test_exact_traces_match_dense(case):
    """The Gauss-Newton formula is the whole Hessian's trace, block by block, on one-hot inputs."""
    model, loss_fn, x, y, dense, _ = case
    exact = H.exact_block_traces(model, loss_fn, x, y)
    for key, want in _dense_block_traces(dense, model).items():
        assert exact[key].value == pytest.approx(want, rel=1e-10)
        assert exact[key].stderr == 0.0 and exact[key].method == "exact"


@pytest.mark.parametrize("task,n_in,n_out", [("modular", 5, 4), ("regression", 1, 1), ("regression", 2, 3)])
def test_exact_traces_on_dense_inputs_and_mse(task, n_in, n_out):
    """Real-valued inputs (|x|^2 is not 2) and the MSE loss, several outputs included (the 1/out factor)."""
    g = _gen(21)
    model = make_model(n_in, 6, n_out, 3).double()
    x = torch.randn(40, n_in, generator=g, dtype=torch.float64)
    y = (torch.randint(0, n_out, (40,), generator=g) if task == "modular"
         else torch.randn(40, n_out, generator=g, dtype=torch.float64))
    loss_fn = H.task_loss(task)
    dense = H.dense_hessian(model, loss_fn, x, y)
    exact = H.exact_block_traces(model, loss_fn, x, y)
    for key, want in _dense_block_traces(dense, model).items():
        assert exact[key].value == pytest.approx(want, rel=1e-10)


def test_exact_traces_hold_for_a_float32_model_at_a_tiny_loss():
    """A confident softmax makes 1 - |p|^2 and p.w^2 - (p.w)^2 differences of nearly equal numbers:
    the trace of a float32 model must still match the dense float64 Hessian of the same weights."""
    import copy
    model, loss_fn, x, _ = _trained(23)
    with torch.no_grad():  # the model's own answers on its clearly decided rows, then a sharper softmax
        top2 = model(x).topk(2, 1)
        margin = top2.values[:, 0] - top2.values[:, 1]
        keep = margin > margin.median()
        x, y = x[keep], top2.indices[keep, 0]
        model.fc2.weight.mul_(25.0 / float(margin[keep].min()))
        model.fc2.bias.mul_(25.0 / float(margin[keep].min()))
    m32 = copy.deepcopy(model).float()
    m64 = copy.deepcopy(m32).double()
    loss = float(loss_fn(m64(x), y).detach())
    assert 0 < loss < 1e-6
    dense = H.dense_hessian(m64, loss_fn, x, y)
    exact = H.exact_block_traces(m32, loss_fn, x.float(), y)
    for key, want in _dense_block_traces(dense, m64).items():
        assert exact[key].value == pytest.approx(want, rel=1e-6)


def test_exact_traces_refuse_what_they_do_not_cover(case):
    model, loss_fn, x, y, _, _ = case
    assert H.exact_trace_applies(model, loss_fn) and not H.exact_trace_applies(model, torch.nn.functional.l1_loss)
    seq = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    for m, fn in ((model, torch.nn.functional.l1_loss), (seq.double(), loss_fn)):
        with pytest.raises(ValueError, match="exact trace needs the phaselib MLP"):
            H.exact_block_traces(m, fn, x, y)
    with pytest.raises(ValueError, match="batch is empty"):
        H.exact_block_traces(model, loss_fn, x[:0], y[:0])
    reg = make_model(1, 4, 1, 0).double()
    with pytest.raises(ValueError, match="y: shape"):  # (n,) against (n, 1) would broadcast in mse_loss
        H.exact_block_traces(reg, H.task_loss("regression"), torch.zeros(5, 1, dtype=torch.float64),
                             torch.zeros(5, dtype=torch.float64))


def test_hutchinson_stderr_is_calibrated():
    """Over many repeats, |error| / stderr behaves like a standard normal (about 68% within 1)."""
    a = torch.randn(60, 60, generator=_gen(13), dtype=torch.float64)
    op = H.matrix_operator(a + a.T)
    exact = float((a + a.T).trace())
    g = _gen(14)
    z = [(e.value - exact) / e.stderr for e in (H.hutchinson_trace(op, 30, generator=g) for _ in range(300))]
    within = sum(abs(v) < 1 for v in z) / len(z)
    assert 0.6 < within < 0.76
    diag = H.matrix_operator(torch.diag(torch.arange(5.0, dtype=torch.float64)))
    est = H.hutchinson_trace(diag, 4, generator=g)  # Rademacher: exact on a diagonal matrix
    assert est.value == 10.0 and est.stderr == 0.0
    with pytest.raises(ValueError, match="n_probes"):
        H.hutchinson_trace(op, 1)


def test_hutchpp_exact_on_low_rank():
    u = torch.randn(300, 4, generator=_gen(15), dtype=torch.float64)
    op = H.matrix_operator(u @ torch.diag(torch.tensor([9.0, 4.0, -2.0, 1.0], dtype=torch.float64)) @ u.T)
    est = H.hutchpp_trace(op, 15, generator=_gen(16))
    exact = float((u.square().sum(0) * torch.tensor([9.0, 4.0, -2.0, 1.0], dtype=torch.float64)).sum())
    assert abs(est.value - exact) < 1e-8 * abs(exact) and est.stderr < 1e-8


def test_spectral_density():
    values = torch.tensor([-1.0, 0.5, 2.0], dtype=torch.float64).repeat_interleave(torch.tensor([10, 20, 30]))
    op = H.matrix_operator(torch.diag(values))
    sd = H.spectral_density(op, n_vectors=5, steps=20, generator=_gen(17))
    kept = sd.weights > 1e-12
    nodes = sd.nodes[kept]
    assert torch.allclose(nodes.unsqueeze(-1).sub(torch.tensor([-1.0, 0.5, 2.0], dtype=torch.float64)).abs()
                          .min(-1).values, torch.zeros(len(nodes), dtype=torch.float64), atol=1e-10)
    torch.testing.assert_close(sd.weights.sum(-1), torch.ones(5, dtype=torch.float64))
    grid = torch.linspace(-3, 4, 2001, dtype=torch.float64)
    mass = float(torch.trapezoid(sd.density(grid, 0.05), grid))
    assert abs(mass - 1) < 1e-3
    assert abs(sd.trace() - float(values.sum())) < 0.2 * float(values.abs().sum())


def test_grad_eig_cosine(case):
    model, loss_fn, x, y, dense, _ = case
    op = H.hessian_operator(model, loss_fn, x, y)
    v = torch.linalg.eigh(dense).eigenvectors[:, -1]
    c = H.grad_eig_cosine(op.gradient, v)
    ref = abs(float(op.gradient @ v)) / float(op.gradient.norm())
    assert 0 <= c <= 1 and abs(c - ref) < 1e-12
    assert H.grad_eig_cosine(op.gradient, -v) == c
    assert math.isnan(H.grad_eig_cosine(torch.zeros(3), torch.ones(3)))


def test_regression_float32_model():
    """The regression control in float32: lambda_max to 1e-4 of the dense float64 truth."""
    ds = make_regression(0.7, 0, n=200)
    model = make_model(ds.in_dim, 16, ds.out_dim, 0)
    loss_fn = H.task_loss("regression")
    ev = torch.linalg.eigvalsh(H.dense_hessian(model.double(), loss_fn, ds.x_train.double(), ds.y_train.double()))
    model = model.float()
    op = H.hessian_operator(model, loss_fn, ds.x_train, ds.y_train)
    assert op.dtype == torch.float32
    top = H.lambda_max(op, tol=1e-5, generator=_gen(18))
    assert abs(top.value - float(ev[-1])) <= 1e-4 * float(ev[-1])


def test_both_paths_of_the_closed_form_are_checked_against_dense():
    """The module's cases take both ways to the gz terms of the whole product: p = 11 the matmuls,
    p = 23 the per-code sums (test_hvp_matches_dense and the Lanczos tests check each)."""
    for p, sums in ((11, False), (23, True)):
        ds = make_modular(p, "add", 0.7, 0)
        assert H._code_sums_pay(H.one_hot_columns(ds.x_train), ds.in_dim) is sums


def test_code_sums_are_not_formed_for_uneven_codes():
    """Zero-padded groups as wide as the commonest code: with one code on almost every row, S
    would cost in_dim times the rows, so the matmuls stay."""
    n, codes = 400, 20
    first = torch.zeros(n, dtype=torch.long)
    first[:10] = torch.arange(10)
    cols = torch.stack([first, 10 + torch.arange(n) % 10], 1)
    assert not H._code_sums_pay(cols, codes)
    assert H._code_sums_pay(torch.stack([torch.arange(n) % 10, 10 + torch.arange(n) % 10], 1), codes)


@pytest.mark.parametrize("ones", [1, 2, 3])
def test_code_sums_are_the_sums_they_name(ones):
    """Against the einsum definition, with uneven groups and a code that never occurs (the last)."""
    g = _gen(3)
    n, out, width, codes = 40, 5, 3, 3 * ones + 1
    cols = torch.stack([3 * t + torch.randint(0, 3, (n,), generator=g) ** 2 % 3 for t in range(ones)], 1)
    x = torch.zeros(n, codes, dtype=torch.float64).scatter_(1, cols, 1.0)
    assert torch.equal(H.one_hot_columns(x), cols) and x[:, -1].sum() == 0
    gz = torch.randn(n, out, generator=g, dtype=torch.float64)
    mask = (torch.randn(n, width, generator=g) > 0).double()
    torch.testing.assert_close(H._code_sums(gz, mask, cols, codes), torch.einsum("rj,rc,rk->kcj", x, gz, mask))
