"""Figures that align runs: only generalised modular runs are drawn, shifted to their event."""
import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402

from phaselib import plots  # noqa: E402
from phaselib.config import RunConfig  # noqa: E402
from phaselib.record import RunRecord, concat_tables, tidy  # noqa: E402


def record(task: str, event: int | None, seed: int = 0) -> RunRecord:
    n, t = 400, np.arange(400)
    metric = np.where(t >= event, 0.9, 0.05) if event is not None else np.full(n, 0.05)
    cfg = RunConfig(task=task, modulus=11, seed=seed, epochs=n, width=8)
    probes = np.arange(0, n, 50)
    return RunRecord(cfg, concat_tables([tidy(cfg.key, t, {("test_metric", "all"): metric}),
                                         tidy(cfg.key, probes, {("hessian_lmin", "all"): -0.01 * np.ones(len(probes))})]))


def test_event_aligned_draws_generalised_modular_runs_relative_to_their_event():
    recs = [record("modular", 200, 0), record("modular", 300, 1), record("modular", None, 2), record("regression", 0, 3)]
    ax = plots.event_aligned(recs, "hessian_lmin", "λ_min")
    lines = [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]  # not the axvline/axhline
    assert len(lines) == 2
    starts = sorted(float(ln.get_xdata()[0]) for ln in lines)
    assert starts == [-300.0, -200.0]  # first probe at epoch 0, events at 300 and 200


def test_event_aligned_says_so_when_nothing_generalised():
    ax = plots.event_aligned([record("modular", None)], "hessian_lmin", "λ_min")
    assert any("no generalised" in t.get_text() for t in ax.texts)


def test_metric_curves_one_line_per_run_and_the_threshold():
    ax = plots.metric_curves([record("modular", 200, s) for s in range(3)], threshold=0.5)
    assert len(ax.get_lines()) == 4 and ax.get_ylabel() == "test accuracy (fraction)"


def test_lag_distribution_averages_the_generalised_runs_only():
    import pandas as pd
    s = pd.DataFrame({"frac": [0.5] * 3 + [0.7] * 3, "lag": [900.0, 800.0, 700.0, 100.0, 200.0, 600.0],
                      "generalised": [False, False, False, True, True, False]})
    ax = plots.lag_distribution(s)
    bars = [c for c in ax.containers if hasattr(c, "lines")]  # errorbar containers
    assert len(bars) == 1  # none at 50%: nothing generalised there
    assert float(bars[0].lines[0].get_ydata()[0]) == 150.0  # (100 + 200) / 2, not with the 600
    assert [t.get_text() for t in ax.texts] == ["n=2"]


def test_signal_panels_tell_two_claims_on_one_signal_apart():
    """B_simple carries two claims (change point, 3σ rule): their alarms get a colour each, a
    triangle pointing the alarm's way, and a legend entry."""
    from types import SimpleNamespace

    import pandas as pd

    rec = record("modular", 300)
    cfg = rec.config
    rec = RunRecord(cfg, concat_tables([rec.table, tidy(cfg.key, np.arange(0, 400, 50),
                                                         {("b_simple", "all"): np.linspace(100.0, 10.0, 8)})]))
    alarms = pd.DataFrame({"run": cfg.label, "signal": "b_simple", "claim": ["B drops", "3σ rule flags it"],
                           "alarm_epoch": [100.0, 150.0], "direction": ["down", "up"]})
    marks_at = SimpleNamespace(gnorm_peak_epoch=50, metric_transition_epoch=300, generalisation_epoch=300)
    fig = plots.signal_panels(rec, marks_at, alarms)
    ax = next(a for a in fig.axes if a.get_ylabel().startswith("B_simple"))
    marks = {ln.get_label(): ln for ln in ax.get_lines() if ln.get_label() in ("B drops", "3σ rule flags it")}
    assert set(marks) == {"B drops", "3σ rule flags it"}
    assert marks["B drops"].get_marker() == "v" and marks["3σ rule flags it"].get_marker() == "^"
    assert marks["B drops"].get_color() != marks["3σ rule flags it"].get_color()
    assert ax.get_legend() is not None
