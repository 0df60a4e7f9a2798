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


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tiny models gain nothing from a second thread and lose a lot when cores are shared."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
