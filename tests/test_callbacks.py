import numpy as np
import pytest

from phaselib.callbacks import OnlineFlag, halve_lr_on_flag, stop_on_flag
from phaselib.config import RunConfig
from phaselib.detect.online import replay
from phaselib.engine import train_batched
from phaselib.train import train_reference

CFG = RunConfig(task="modular", operation="add", modulus=11, frac=0.6, seed=3, epochs=120, width=16)
# grad_norm grows steadily early in training, so a short baseline and window flag it quickly
KW = dict(baseline=10, window=5, k=3.0, persistence=3)


def expected_flag(cfg):
    """Where the offline replay of the plain run flags: the callback must act exactly there."""
    plain = train_reference(cfg).series("grad_norm")
    alarms = replay(plain.to_numpy(), **KW)
    assert alarms, "the test signal must flag"
    return int(plain.index[alarms[0].index])


def test_halve_lr_at_the_flagged_epoch_reference_and_batched():
    e = expected_flag(CFG)
    for train in (lambda cb: train_reference(CFG, callbacks=[cb]),
                  lambda cb: train_batched([CFG.replace(engine="batched")], callbacks=[[cb]])[0]):
        cb = halve_lr_on_flag("grad_norm", CFG.epochs, **KW)
        rec = train(cb)
        lr = rec.series("lr")
        assert cb.flagged_epoch == e
        assert np.allclose(lr.loc[:e - 1], CFG.lr, rtol=1e-6) and np.allclose(lr.loc[e:], CFG.lr / 2, rtol=1e-6)
        assert [ev["event"] for ev in rec.meta["events"]] == ["flag", "scale_lr"]


def test_stop_early_ends_the_record_at_the_flag_and_says_why():
    e = expected_flag(CFG)
    cb = stop_on_flag("grad_norm", CFG.epochs, **KW)
    rec = train_reference(CFG, callbacks=[cb])
    assert rec.series("test_metric").index.max() == e
    assert "online detector on grad_norm" in rec.meta["stop_reason"]


def test_bad_action_and_missing_signal():
    with pytest.raises(ValueError, match="action"):
        OnlineFlag("grad_norm", 100, action="explode")
    cb = OnlineFlag("nope", 100, action="log")
    with pytest.raises(KeyError, match="nope"):
        train_reference(CFG.replace(epochs=3), callbacks=[cb])
