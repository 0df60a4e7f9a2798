"""benchmarks/sparse_hidden.py still builds against phaselib/kernels.c, and its sparse step gives
the dense step's results (the script stops when they differ), so the timing it reports compares
equal work."""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from phaselib import kernels

pytestmark = pytest.mark.skipif(kernels.library() is None, reason="native kernels did not build here")


@pytest.fixture
def bench(monkeypatch):
    """The benchmark module, imported with benchmarks/ on the path for this test only."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    return importlib.import_module("sparse_hidden")


def test_sparse_step_matches_the_dense_step_and_the_json_says_so(bench, tmp_path):
    out = tmp_path / "sparse.json"
    result = bench.main(["--train-epochs", "2", "--repeats", "1", "--calls", "1", "--json", str(out)])
    assert json.loads(out.read_text())["step_ratio"] == pytest.approx(result["step_ratio"])
    assert 0.3 < result["active_fraction"]["init"] < 0.7  # ReLU of symmetric random pre-activations
    for name, p in result["passes"].items():  # (agreement within TOLERANCE: main stops otherwise)
        assert p["max_rel_diff"]["shift"] == 0.0, name  # the logits: the same FMA chain less exact zeros


def test_the_sparse_benchmark_stops_on_steps_that_disagree(bench, monkeypatch):
    real = bench.max_rel_diff
    monkeypatch.setattr(bench, "max_rel_diff", lambda *a: {**real(*a), "dW2": 0.5})
    with pytest.raises(SystemExit, match="differs from the dense one"):
        bench.main(["--train-epochs", "0", "--repeats", "1", "--calls", "1"])
