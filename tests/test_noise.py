"""Gradient-noise signals against direct per-example computations."""
from __future__ import annotations

import math

import pytest
import torch

from phaselib import noise as N
from phaselib.data import make_modular, make_regression
from phaselib.hessian import task_loss
from phaselib.models import make_model


@pytest.fixture(autouse=True, scope="module")
def _one_thread():  # tiny models: one thread is faster, and robust to other jobs on the cores
    threads = torch.get_num_threads(); torch.set_num_threads(1); yield; torch.set_num_threads(threads)  # noqa: E702


def _setup(task: str):
    if task == "modular":
        ds = make_modular(11, "add", 0.6, 1)
    else:
        ds = make_regression(0.7, 1, n=120)
    model = make_model(ds.in_dim, 8, ds.out_dim, 1).double()
    return model, task_loss(task), ds.x_train.double(), (ds.y_train if task == "modular" else ds.y_train.double())


def _direct(model, loss_fn, x, y):
    """Per-example gradients by a plain loop of autograd calls: (n, n_params), and the layer slices."""
    rows = []
    for i in range(len(x)):
        model.zero_grad(set_to_none=True)
        loss_fn(model(x[i:i + 1]), y[i:i + 1]).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    model.zero_grad(set_to_none=True)
    sizes = [p.numel() for p in model.parameters()]
    names = [n for n, _ in model.named_parameters()]
    slices, start = {}, 0
    for n, s in zip(names, sizes):
        layer = n.split(".")[0]
        lo = slices.get(layer, slice(start, start)).start
        slices[layer] = slice(lo, start + s)
        start += s
    slices["all"] = slice(0, start)
    return torch.stack(rows), slices


@pytest.mark.parametrize("method", N.NOISE_METHODS)
@pytest.mark.parametrize("task", ["modular", "regression"])
def test_per_example_b_simple_equals_direct(task, method):
    """Acceptance: the per-example B_simple equals a direct computation (closed form and vmap)."""
    model, loss_fn, x, y = _setup(task)
    g, slices = _direct(model, loss_fn, x, y)
    if method == "auto":  # the closed form applies to this model and loss
        assert N._mlp_sq_norms(model, loss_fn, x, y) is not None
    got = N.per_example_noise_scales(model, loss_fn, x, y, chunk_size=7, method=method)  # chunks not dividing n
    assert set(got) == {"all", "fc1", "fc2"}
    for key, sl in slices.items():
        gk = g[:, sl]
        mean = gk.mean(0)
        trace = float((gk - mean).square().sum(1).mean())
        sq = float(mean.square().sum())
        ns = got[key]
        assert ns.method == "per_example" and ns.stderr is None and ns.n == len(x)
        assert ns.trace_sigma == pytest.approx(trace, rel=1e-10)
        assert ns.grad_sq_norm == pytest.approx(sq, rel=1e-10)
        assert ns.b_simple == pytest.approx(trace / sq, rel=1e-10)
    assert N.per_example_noise_scale(model, loss_fn, x, y).b_simple == pytest.approx(got["all"].b_simple)
    pe = N.per_example_grads(model, loss_fn, x, y)
    flat = torch.cat([pe[n].reshape(len(x), -1) for n, _ in model.named_parameters()], 1)
    torch.testing.assert_close(flat, g)


def test_other_models_and_losses_take_the_vmap_path():
    model, loss_fn, x, y = _setup("modular")
    seq = torch.nn.Sequential(model.fc1, torch.nn.ReLU(), model.fc2)  # same function, not an MLP

    def nll(out, target):
        return torch.nn.functional.nll_loss(torch.log_softmax(out, 1), target)  # cross-entropy, another function

    assert N._mlp_sq_norms(seq, loss_fn, x, y) is None and N._mlp_sq_norms(model, nll, x, y) is None
    want = N.per_example_noise_scales(model, loss_fn, x, y)["all"]
    for m, f in ((seq, loss_fn), (model, nll)):
        got = N.per_example_noise_scales(m, f, x, y)["all"]
        assert got.trace_sigma == pytest.approx(want.trace_sigma, rel=1e-10)
        assert got.b_simple == pytest.approx(want.b_simple, rel=1e-10)
    with pytest.raises(ValueError, match="method: 'fast' is invalid"):
        N.per_example_noise_scales(model, loss_fn, x, y, method="fast")


def test_two_batch_estimator_is_unbiased():
    """Averaged over many batch pairs, the two-batch estimates match the exact values (4 sigma)."""
    model, loss_fn, x, y = _setup("modular")
    exact = N.per_example_noise_scales(model, loss_fn, x, y)
    est = N.two_batch_noise_scales(model, loss_fn, x, y, b_small=4, b_big=32, n_pairs=1500,
                                   generator=torch.Generator().manual_seed(0))
    for key in ("all", "fc1", "fc2"):
        e, t = est[key], exact[key]
        assert e.method == "two_batch" and e.n == 1500
        assert abs(e.trace_sigma - t.trace_sigma) < 4 * e.trace_sigma_stderr
        assert abs(e.grad_sq_norm - t.grad_sq_norm) < 4 * e.grad_sq_norm_stderr
        assert abs(e.b_simple - t.b_simple) < 4 * e.stderr
    # fewer pairs: wider error bars
    small = N.two_batch_noise_scales(model, loss_fn, x, y, b_small=4, b_big=32, n_pairs=50,
                                     generator=torch.Generator().manual_seed(1))
    assert small["all"].stderr > est["all"].stderr
    with pytest.raises(ValueError, match="b_small"):
        N.two_batch_noise_scales(model, loss_fn, x, y, b_small=8, b_big=8)


def test_microbatch_variance_equals_direct():
    model, loss_fn, x, y = _setup("regression")
    got = N.microbatch_grad_variance(model, loss_fn, x, y, n_micro=5, generator=torch.Generator().manual_seed(3))
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(3))
    size = len(x) // 5
    grads = []
    for j in range(5):
        idx = perm[j * size:(j + 1) * size]
        model.zero_grad(set_to_none=True)
        loss_fn(model(x[idx]), y[idx]).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    model.zero_grad(set_to_none=True)
    g = torch.stack(grads)
    d = (g - g.mean(0)).square().sum(1) * 5 / 4
    assert got["all"].value == pytest.approx(float(d.mean()), rel=1e-10)
    assert got["all"].stderr == pytest.approx(float(d.std() / math.sqrt(5)), rel=1e-10)
    assert got["all"].micro_size == size
    assert got["fc1"].value + got["fc2"].value == pytest.approx(got["all"].value, rel=1e-10)
    with pytest.raises(ValueError, match="n_micro"):
        N.microbatch_grad_variance(model, loss_fn, x, y, n_micro=1)


def test_noise_leaves_model_and_rng_alone():
    model, loss_fn, x, y = _setup("modular")
    before = [p.detach().clone() for p in model.parameters()]
    state = torch.get_rng_state()
    N.per_example_noise_scales(model, loss_fn, x, y)
    N.microbatch_grad_variance(model, loss_fn, x, y, generator=torch.Generator().manual_seed(0))
    assert torch.equal(state, torch.get_rng_state())
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
