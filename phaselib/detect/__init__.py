"""Transition detectors: the paper's offline heuristics, online alarms, change points, curvature."""
from __future__ import annotations

from typing import Sequence

from .changepoint import ChangePoints
from .online import Alarm

NO_TRANSITION = "no transition"


def describe(result: Alarm | Sequence[Alarm] | ChangePoints | None, epochs: Sequence[int] | None = None) -> str:
    """One line for what a detector found, and ``"no transition"`` when it found nothing.

    ``result`` is any detector's return value: an :class:`Alarm` or None (``curvature.detect``), a
    list of alarms (``online.replay``: the first is the transition) or :class:`ChangePoints` (its
    ``transition``). ``epochs`` maps series positions to epochs (e.g. a record's probe epochs);
    without it the line gives the position."""
    def at(i: int) -> str:
        return f"epoch {epochs[i]}" if epochs is not None else f"index {i}"

    if isinstance(result, ChangePoints):
        what = f"{result.method}, {result.cost} cost"
        if result.transition is None:
            why = "change points only within the start-up transient" if result.indices else "no change point"
            return f"{NO_TRANSITION} ({what}: {why})"
        return f"transition at {at(result.transition)} ({what}; {len(result.indices)} change point(s) in all)"
    if result is not None and not isinstance(result, Alarm):
        alarms = list(result) if isinstance(result, (list, tuple)) else [result]
        if not all(isinstance(a, Alarm) for a in alarms):
            raise TypeError(f"result: {type(result).__name__} of {[type(a).__name__ for a in alarms][:3]} is "
                            "invalid; allowed: an Alarm, None, a sequence of Alarms or ChangePoints")
        result = alarms[0] if alarms else None
    if result is None:
        return NO_TRANSITION
    return f"transition flagged at {at(result.index)} ({result.detector}, {result.direction})"
