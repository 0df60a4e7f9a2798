"""Shared fixtures: tiny configs that train in well under a second."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("PHASELIB_QUIET", "1")

from phaselib.config import RunConfig  # noqa: E402


@pytest.fixture
def tiny() -> RunConfig:
    """A modular-addition run small enough to train in a blink (p = 11, 30 epochs)."""
    return RunConfig(task="modular", operation="add", modulus=11, frac=0.6, seed=3, epochs=30, width=16)
