"""The probe schedule and the stateful prober: cadences, tidy rows, warm starts, no side effects."""
from __future__ import annotations

import math

import pytest
import torch

from phaselib import hessian as H
from phaselib.config import ConfigError
from phaselib.data import make_modular, make_regression
from phaselib.models import make_model
from phaselib.probes import CHEAP_SIGNALS, ProbeSchedule, Prober
from phaselib.representation import effective_rank, linear_cka


@pytest.fixture(autouse=True, scope="module")
def _one_thread():  # tiny models: one thread is faster, and robust to other jobs on the cores
    threads = torch.get_num_threads(); torch.set_num_threads(1); yield; torch.set_num_threads(threads)  # noqa: E702

KEYS = {"epoch", "signal", "layer", "value", "stderr"}


def _modular():
    ds = make_modular(11, "add", 0.6, 2)
    return ds, make_model(ds.in_dim, 8, ds.out_dim, 2)


def _train_step(model, ds, lr=1e-2):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    opt.zero_grad()
    H.task_loss(ds.task)(model(ds.x_train), ds.y_train).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


@pytest.mark.parametrize("field", ["cka_every", "noise_every", "hessian_every"])
def test_negative_cadence_is_rejected(field):
    with pytest.raises(ValueError, match=rf"{field}: -1 .*>= 0"):
        ProbeSchedule(**{field: -1})
    assert getattr(ProbeSchedule(**{field: 0}), field) == 0


@pytest.mark.parametrize("kwargs, field", [
    ({"every_epoch": ("erank", "loss")}, "every_epoch"),
    ({"probe_size": 0}, "probe_size"),
    ({"lanczos_iters": 1}, "lanczos_iters"),
    ({"hutchinson_probes": 1}, "hutchinson_probes"),
    ({"hessian_every": 2.5}, "hessian_every"),
    ({"per_layer": 1}, "per_layer"),
])
def test_invalid_schedule(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        ProbeSchedule(**kwargs)


def test_schedule_defaults():
    s = ProbeSchedule(every_epoch=["erank"])
    assert s.every_epoch == ("erank",)
    d = ProbeSchedule()
    assert d.every_epoch == CHEAP_SIGNALS and (d.cka_every, d.noise_every, d.hessian_every) == (10, 50, 100)


def test_rows_follow_the_cadences():
    ds, model = _modular()
    sched = ProbeSchedule(cka_every=2, noise_every=3, hessian_every=4, probe_size=40, lanczos_iters=60,
                          hutchinson_probes=4)
    prober = Prober(sched, "modular", ds.x_test, ds.y_test, seed=0)
    assert len(prober.probe_x) == 40
    seen = {}
    for epoch in range(9):
        rows = prober.rows(model, epoch, ds.x_train, ds.y_train)
        for r in rows:
            assert set(r) == KEYS and r["epoch"] == epoch
            assert isinstance(r["value"], float) and isinstance(r["stderr"], float)
            assert r["layer"] in ("all", "fc1", "fc2")
        seen[epoch] = {(r["signal"], r["layer"]) for r in rows}
        _train_step(model, ds)
    cheap = {(s, "all") for s in CHEAP_SIGNALS}
    assert seen[1] == cheap
    assert ("cka_prev", "all") not in seen[0]  # nothing to compare with yet
    assert ("cka_prev", "all") in seen[2] and ("cka_prev", "all") not in seen[3]
    noise = {"b_simple", "grad_trace_sigma", "grad_sq_norm", "grad_microbatch_var"}
    assert {(s, l) for s in noise for l in ("all", "fc1", "fc2")} <= seen[3]
    assert not any(s in noise for s, _ in seen[4])
    hess = {(s, "all") for s in ("hessian_lmax", "hessian_lmin", "hessian_trace", "grad_eig_cos",
                                   "hessian_lmax_residual", "hessian_lmax_converged", "hessian_lmin_residual",
                                   "hessian_lmin_converged", "hessian_lmax_iters", "hessian_lmin_iters")}
    assert hess <= seen[4] and hess <= seen[8] and not any(s.startswith("hessian") for s, _ in seen[5])
    assert ("hessian_lmax", "fc1") in seen[4] and ("hessian_lmin", "fc1") not in seen[4]
    assert {("hessian_trace_exact", l) for l in ("all", "fc1", "fc2")} <= seen[4]
    assert seen[0] >= cheap | hess  # epoch 0 is due for everything


def test_values_match_the_library_and_uncertainties_are_present():
    ds, model = _modular()
    sched = ProbeSchedule(cka_every=1, noise_every=1, hessian_every=1, probe_size=1000, hutchinson_probes=6)
    prober = Prober(sched, "modular", ds.x_test, ds.y_test, seed=1)
    h0 = model.hidden(ds.x_test).detach()
    prober.rows(model, 0, ds.x_train, ds.y_train)
    _train_step(model, ds)
    rows = {(r["signal"], r["layer"]): r for r in prober.rows(model, 1, ds.x_train, ds.y_train)}
    h1 = model.hidden(ds.x_test).detach()
    assert rows[("erank", "all")]["value"] == pytest.approx(float(effective_rank(h1)), rel=1e-6)
    assert rows[("cka_prev", "all")]["value"] == pytest.approx(float(linear_cka(h1, h0)), rel=1e-6)
    assert rows[("hessian_trace", "all")]["stderr"] > 0
    exact = H.exact_block_traces(model, H.task_loss("modular"), ds.x_train, ds.y_train)
    for layer in ("all", "fc1", "fc2"):
        assert rows[("hessian_trace_exact", layer)]["value"] == exact[layer].value
        assert math.isnan(rows[("hessian_trace_exact", layer)]["stderr"])
    assert rows[("grad_microbatch_var", "fc1")]["stderr"] > 0
    assert math.isnan(rows[("b_simple", "all")]["stderr"])  # exact over the train split
    op = H.hessian_operator(model, H.task_loss("modular"), ds.x_train, ds.y_train)
    ref = H.lambda_max(op, tol=1e-8, max_iter=300)
    assert rows[("hessian_lmax", "all")]["value"] == pytest.approx(ref.value, rel=1e-3)
    assert rows[("hessian_lmax_converged", "all")]["value"] == 1.0


def test_warm_start_reuses_previous_vectors():
    ds, model = _modular()
    sched = ProbeSchedule(every_epoch=(), cka_every=0, noise_every=0, hessian_every=1, per_layer=False,
                          hutchinson_probes=2, lanczos_iters=300)
    prober = Prober(sched, "modular", ds.x_test, ds.y_test, seed=2)
    first = {r["signal"]: r["value"] for r in prober.rows(model, 0, ds.x_train, ds.y_train)}
    second = {r["signal"]: r["value"] for r in prober.rows(model, 1, ds.x_train, ds.y_train)}  # same params
    assert second["hessian_lmax_iters"] < first["hessian_lmax_iters"]
    assert second["hessian_lmin_iters"] < first["hessian_lmin_iters"]
    assert second["hessian_lmin"] == pytest.approx(first["hessian_lmin"], rel=2e-2)


def test_prober_has_no_side_effects():
    ds, model = _modular()
    sched = ProbeSchedule(cka_every=1, noise_every=1, hessian_every=1, hutchinson_probes=3, lanczos_iters=30)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    before = [p.detach().clone() for p in model.parameters()]
    prober = Prober(sched, "modular", ds.x_test, ds.y_test, seed=3)
    for epoch in range(2):
        prober.rows(model, epoch, ds.x_train, ds.y_train)
    with torch.no_grad():  # callers may probe inside no_grad: torch.func still differentiates
        rows = prober.rows(model, 2, ds.x_train, ds.y_train)
    assert {r["signal"] for r in rows} >= {"hessian_lmax", "b_simple"}
    assert all(math.isfinite(r["value"]) for r in rows)
    assert torch.equal(state, torch.get_rng_state())
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_regression_task_and_disabled_cadences():
    ds = make_regression(0.7, 0, n=100)
    model = make_model(ds.in_dim, 8, ds.out_dim, 0)
    sched = ProbeSchedule(every_epoch=(), cka_every=0, noise_every=0, hessian_every=0)
    prober = Prober(sched, "regression", ds.x_test, ds.y_test, seed=0)
    assert prober.rows(model, 0, ds.x_train, ds.y_train) == []
    sched = ProbeSchedule(every_epoch=("active_frac",), cka_every=0, noise_every=5, hessian_every=0,
                          per_layer=False)
    rows = Prober(sched, "regression", ds.x_test, ds.y_test, seed=0).rows(model, 5, ds.x_train, ds.y_train)
    assert {(r["signal"], r["layer"]) for r in rows} == {
        ("active_frac", "all"), ("b_simple", "all"), ("grad_trace_sigma", "all"), ("grad_sq_norm", "all"),
        ("grad_microbatch_var", "all")}
