"""Shipped trainer callbacks: act on an online detector's flag (seed 002, "act on the flag").

A callback is called once per recorded epoch with that epoch's signals and a
:class:`~phaselib.train.TrainControl`; these feed one signal into an
:class:`~phaselib.detect.online.OnlineDetector` and, at its first alarm, log the event and
halve the learning rate or stop the run. Both engines accept them (the batched engine takes
one list per run), and the run's record shows the effect: the ``lr`` signal from the flagged
epoch on, or a record that ends at the flagged epoch with ``meta["stop_reason"]``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from .detect.online import OnlineDetector, baseline_len
from .train import TrainControl

ACTIONS: tuple[str, ...] = ("log", "halve_lr", "stop")


@dataclass
class OnlineFlag:
    """Watch ``signal`` (a callback key, e.g. ``grad_norm`` or ``grad_norm/fc1``) and act once.

    ``baseline`` defaults to the first 10% of ``epochs`` (:func:`baseline_len`); ``window``,
    ``k``, ``persistence`` and ``direction`` are the detector's. ``action``: ``log`` only,
    ``halve_lr`` (scale the lr by ``factor``) or ``stop``. Epochs are the recorded ones, so the
    detector's sample index counts recorded epochs.
    """

    signal: str
    epochs: int
    action: str = "halve_lr"
    window: int = 50
    k: float = 3.0
    persistence: int = 10
    direction: str = "both"
    baseline: int | None = None
    factor: float = 0.5
    flagged_epoch: int | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"action: {self.action!r} is invalid; allowed: one of {list(ACTIONS)}")
        b = baseline_len(self.epochs) if self.baseline is None else self.baseline
        self.detector = OnlineDetector(b, self.window, self.k, self.persistence, self.direction)

    def __call__(self, epoch: int, signals: Mapping[str, float], control: TrainControl) -> None:
        if self.signal not in signals:
            raise KeyError(f"signal: {self.signal!r} is not recorded; available: {sorted(signals)}")
        alarm = self.detector.update(signals[self.signal])
        if alarm is None or self.flagged_epoch is not None:
            return
        self.flagged_epoch = epoch
        reason = (f"online detector on {self.signal}: sliding mean {alarm.value:.4g} left the baseline band "
                  f"({alarm.direction}) for {self.persistence} epochs")
        control.log_event("flag", signal=self.signal, direction=alarm.direction, value=alarm.value)
        if self.action == "halve_lr":
            control.scale_lr(self.factor, reason=reason)
        elif self.action == "stop":
            control.stop(reason)


def halve_lr_on_flag(signal: str, epochs: int, **detector) -> OnlineFlag:
    """Halve the learning rate at the first flag of ``signal``."""
    return OnlineFlag(signal, epochs, action="halve_lr", **detector)


def stop_on_flag(signal: str, epochs: int, **detector) -> OnlineFlag:
    """Stop the run at the first flag of ``signal``; the record says why."""
    return OnlineFlag(signal, epochs, action="stop", **detector)
