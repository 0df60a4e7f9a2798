import subprocess
import sys

import numpy as np
import torch
import torch.nn.functional as F

from phaselib.config import RunConfig
from phaselib.models import make_model
from phaselib.train import TrainControl, make_dataset, train_reference


def hand_loop(cfg: RunConfig, epochs: int):
    """An independent re-implementation: per epoch, the norms and metrics before the step."""
    d = make_dataset(cfg)
    m = make_model(d.in_dim, cfg.width, d.out_dim, cfg.seed)
    opt = torch.optim.AdamW(m.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    out = []
    for _ in range(epochs):
        loss = F.cross_entropy(m(d.x_train), d.y_train)
        g = torch.autograd.grad(loss, list(m.parameters()))
        g1 = torch.sqrt(g[0].pow(2).sum() + g[1].pow(2).sum())
        g2 = torch.sqrt(g[2].pow(2).sum() + g[3].pow(2).sum())
        with torch.no_grad():
            test_acc = (m(d.x_test).argmax(1) == d.y_test).float().mean()
        out.append((g1.item(), g2.item(), loss.item(), test_acc.item()))
        for p, gi in zip(m.parameters(), g):
            p.grad = gi
        opt.step()
    return np.array(out)


def test_recorded_norms_and_metrics_are_taken_before_the_step(tiny):
    rec = train_reference(tiny)
    hand = hand_loop(tiny, tiny.epochs)
    np.testing.assert_allclose(rec.series("grad_norm", "fc1").to_numpy(), hand[:, 0], rtol=1e-6)
    np.testing.assert_allclose(rec.series("grad_norm", "fc2").to_numpy(), hand[:, 1], rtol=1e-6)
    np.testing.assert_allclose(rec.series("train_loss").to_numpy(), hand[:, 2], rtol=1e-6)
    np.testing.assert_allclose(rec.series("test_metric").to_numpy(), hand[:, 3], rtol=1e-6)
    comb = np.sqrt(hand[:, 0] ** 2 + hand[:, 1] ** 2)
    np.testing.assert_allclose(rec.series("grad_norm").to_numpy(), comb, rtol=1e-6)


def test_epoch_zero_is_the_initial_model(tiny):
    rec = train_reference(tiny)
    d = make_dataset(tiny)
    m = make_model(d.in_dim, tiny.width, d.out_dim, tiny.seed)
    with torch.no_grad():
        w = torch.sqrt(sum(p.pow(2).sum() for p in m.parameters()))
        loss = F.cross_entropy(m(d.x_test), d.y_test)
    assert np.isclose(rec.series("weight_norm").iloc[0], w.item(), rtol=1e-6)
    assert np.isclose(rec.series("test_loss").iloc[0], loss.item(), rtol=1e-6)


def test_same_config_gives_a_bit_identical_record(tiny):
    a, b = train_reference(tiny), train_reference(tiny)
    assert a.table.equals(b.table)
    c = train_reference(tiny.replace(seed=4))
    assert not a.table["value"].equals(c.table["value"])


def test_record_cadence_and_layout(tiny):
    rec = train_reference(tiny.replace(record_every=7))
    assert list(rec.series("test_metric").index) == [0, 7, 14, 21, 28, 29]
    assert set(rec.table.columns) == {"run", "epoch", "signal", "layer", "value", "stderr"}
    assert (rec.table["run"] == tiny.replace(record_every=7).key).all()
    assert rec.meta["config_hash"] == tiny.replace(record_every=7).key and rec.meta["torch"].startswith("2.13")


def test_regression_records_r2():
    cfg = RunConfig(task="regression", frac=0.5, seed=1, epochs=20, width=8)
    rec = train_reference(cfg)
    d = make_dataset(cfg)
    m = make_model(1, 8, 1, 1)
    with torch.no_grad():
        pred = m(d.x_test)
        r2 = 1 - ((d.y_test - pred) ** 2).sum() / ((d.y_test - d.y_test.mean()) ** 2).sum()
    assert np.isclose(rec.series("test_metric").iloc[0], r2.item(), rtol=1e-5)


def test_callback_halves_lr_at_the_flagged_epoch(tiny):
    def halve_at_10(epoch, signals, control: TrainControl):
        assert "grad_norm/fc1" in signals and "test_metric" in signals
        if epoch == 10:
            control.scale_lr(0.5, reason="test")
    rec = train_reference(tiny, callbacks=[halve_at_10])
    lr = rec.series("lr")
    # the record is float32, so compare to float32 precision
    assert np.allclose(lr.loc[:9], tiny.lr, rtol=1e-6) and np.allclose(lr.loc[10:], tiny.lr / 2, rtol=1e-6)
    assert rec.meta["events"][0]["event"] == "scale_lr" and rec.meta["events"][0]["epoch"] == 10
    # the run diverges from the plain run only after the flagged epoch's step
    plain = train_reference(tiny)
    assert np.allclose(plain.series("train_loss").loc[:10], rec.series("train_loss").loc[:10])
    assert not np.allclose(plain.series("train_loss").loc[12:], rec.series("train_loss").loc[12:])


def test_callback_stops_early_and_says_why(tiny):
    def stop_at_12(epoch, signals, control):
        if epoch == 12:
            control.stop("flagged")
    rec = train_reference(tiny, callbacks=[stop_at_12])
    assert rec.series("test_metric").index.max() == 12
    assert rec.meta["stop_reason"] == "flagged" and rec.meta["epochs_run"] == 13


def test_deterministic_sets_and_restores_the_flag_without_loading_inductor():
    """In a fresh process (inductor not yet imported): the flag is on inside, warn_only and the
    flag come back after, and torch._inductor (1.3-1.5 s to import) stays unloaded; with inductor
    already loaded, its config gets the flag too, as torch.use_deterministic_algorithms does."""
    code = """
import sys, torch
from phaselib.train import deterministic
torch._C._set_deterministic_algorithms(False, warn_only=True)
with deterministic(threads=1):
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()
    assert torch.get_num_threads() == 1
assert not torch.are_deterministic_algorithms_enabled()
assert torch.is_deterministic_algorithms_warn_only_enabled()
assert "torch._inductor" not in sys.modules, "deterministic() imported inductor"
import torch._inductor.config as ic
with deterministic():
    assert ic.deterministic and torch.are_deterministic_algorithms_enabled()
assert not ic.deterministic
threads = torch.get_num_threads()
with deterministic(threads=1):
    with deterministic():
        assert torch.are_deterministic_algorithms_enabled()
    assert torch.are_deterministic_algorithms_enabled()  # the inner exit restores the outer state
try:
    with deterministic(threads=1):
        raise KeyError
except KeyError:
    pass
assert not torch.are_deterministic_algorithms_enabled() and torch.get_num_threads() == threads
try:
    with deterministic(threads=-1):  # a setup step that raises still restores the flag
        pass
except RuntimeError:
    pass
assert not torch.are_deterministic_algorithms_enabled() and torch.get_num_threads() == threads
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
