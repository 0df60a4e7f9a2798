"""benchmarks/engine_floor.py's phase timing: a build of kernels.c that times each phase of the fused
step computes what the engine's build computes, and its phase times add up within the call."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

from phaselib import kernels
from phaselib.config import RunConfig
from phaselib.engine import EXP_FLOOR

pytestmark = pytest.mark.skipif(kernels.library() is None, reason="native kernels did not build here")


@pytest.fixture
def bench(monkeypatch):
    """The benchmark module, imported with benchmarks/ on the path for this test only."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    return importlib.import_module("engine_floor")


def test_the_timing_build_gives_the_engine_builds_bits(bench):
    """PHASE wraps the calls and adds a clock around them; the results must not move by a bit."""
    p, width, N = 13, 16, 169
    n = 120
    g = torch.Generator().manual_seed(0)
    E, W2T = torch.randn(2 * p, width + 1, generator=g), torch.full((width + 1, 16), -torch.inf)
    E[:, width] = 0.5
    W2T[:, :p] = torch.randn(width + 1, p, generator=g)
    rows = torch.randperm(N, generator=g)
    a, b = rows // p, rows % p
    outs = []
    for lib in (None, bench.timing_kernels()):
        out = (torch.empty(width + 1, p), torch.empty(2 * p, width), torch.empty(width), torch.empty(N),
               torch.empty(N, dtype=torch.bool))
        kernels.modular_rows(E, W2T, a, b + p, (a + b) % p, 0, N, n, EXP_FLOOR, *out, block=32, lib=lib)
        outs.append(out)
    for engine, timed in zip(*outs):
        assert torch.equal(engine, timed)


def test_phases_are_each_timed_and_add_up_within_the_call(bench):
    """At p = 97, on one thread, the phases are nearly all of the call (the wrapper's checks, copies
    and log the rest: about 5%), so a phase counted twice would pass the call's time, and one left
    out would leave a large remainder. (The bounds are loose: timing, not a speed claim.)"""
    cfg = RunConfig(modulus=97, frac=0.7, seed=0, epochs=2, engine="reference")
    phases, whole = bench.phase_ms(cfg, 0.05)
    assert list(phases) == list(bench.PHASES)
    assert all(v > 0 for v in phases.values()), phases  # every phase runs (a train row range: all six)
    assert 0.5 * whole <= sum(phases.values()) <= whole, (phases, whole)


def test_another_build_takes_only_defines(tmp_path):
    with pytest.raises(ValueError, match="defines: .* allowed: -D flags only"):
        kernels.build(tmp_path, ("-O0",))
    assert not list(tmp_path.iterdir())  # refused before compiling
