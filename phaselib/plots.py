"""Figures of the study, each from the tidy record and the analysis; labelled, with units."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence


import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .detect.offline import Analysis, Settings, generalisation_epoch, smooth
from .models import LAYERS
from .record import RunRecord

LAYER_COLOURS = {"fc1": "tab:blue", "fc2": "tab:orange", "all": "black"}


def save(fig: plt.Figure, out_dir: str | Path | None, name: str) -> Path | None:
    """Save a figure as ``out_dir/figures/name.png`` (deterministic metadata), if out_dir is set."""
    if out_dir is None:
        return None
    path = Path(out_dir) / "figures" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    return path


def metric_label(record: RunRecord) -> str:
    return "test R² (1)" if record.config.task == "regression" else "test accuracy (fraction)"


def run_overlay(record: RunRecord, analysis: Analysis, settings: Settings = Settings(), ax: plt.Axes | None = None,
                smoothed: bool = True) -> plt.Axes:
    """Per-layer and combined gradient norms with the test metric; detected epochs marked."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.6))
    sk = {"window": settings.window, "order": settings.order}
    for layer in (*LAYERS, "all"):
        s = record.series("grad_norm", layer)
        y = smooth(s.to_numpy(), **sk) if smoothed else s.to_numpy()
        ax.plot(s.index, y, color=LAYER_COLOURS[layer], lw=1.6 if layer == "all" else 1.0,
                label="combined" if layer == "all" else layer)
    ax.set_xlabel("epoch")
    ax.set_ylabel("gradient L2 norm" + (" (smoothed)" if smoothed else ""))
    ax2 = ax.twinx()
    m = record.series("test_metric")
    ax2.plot(m.index, m.to_numpy(), color="tab:green", lw=1.2, label="test metric")
    ax2.set_ylabel(metric_label(record), color="tab:green")
    ax2.set_ylim(-0.05, 1.05)
    ax.axvline(analysis.gnorm_peak_epoch, color="black", ls="--", lw=1, label=f"grad peak {analysis.gnorm_peak_epoch}")
    ax.axvline(analysis.metric_transition_epoch, color="tab:green", ls=":", lw=1.4,
               label=f"steepest metric rise {analysis.metric_transition_epoch}")
    if analysis.generalisation_epoch is not None:
        ax.axvline(analysis.generalisation_epoch, color="tab:red", ls="-.", lw=1,
                   label=f"generalised (≥{settings.threshold:g}) {analysis.generalisation_epoch}")
    title = f"{record.config.label}: lag {analysis.lag} epochs"
    ax.set_title(title + ("" if analysis.generalised else " (did not generalise)"), fontsize=10)
    ax.legend(loc="upper right", fontsize=7, framealpha=0.8)
    return ax


def _norm(x: np.ndarray) -> np.ndarray:
    lo, hi = np.nanmin(x), np.nanmax(x)
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def summary_grid(records: Sequence[RunRecord], analyses: Sequence[Analysis], settings: Settings = Settings(),
                 ncols: int = 3) -> plt.Figure:
    """All runs side by side: min-max normalised smoothed gradient norm and test metric."""
    n = len(records)
    nrows = max(1, int(np.ceil(n / ncols)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 2.4 * nrows), squeeze=False, sharey=True)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    for ax, rec, a in zip(axes.ravel(), records, analyses):
        g = rec.series("grad_norm")
        m = rec.series("test_metric")
        ax.plot(g.index, _norm(smooth(g.to_numpy(), settings.window, settings.order)), color="black", lw=1,
                label="grad norm")
        ax.plot(m.index, _norm(m.to_numpy()), color="tab:green", lw=1, label="test metric")
        ax.axvline(a.gnorm_peak_epoch, color="black", ls="--", lw=0.8)
        ax.axvline(a.metric_transition_epoch, color="tab:green", ls=":", lw=0.8)
        ax.set_title(f"{rec.config.label}\nlag {a.lag}" + ("" if a.generalised else ", no gen."), fontsize=8)
        ax.tick_params(which="both", labelsize=7)  # minor labels too (the log axis labels its minor ticks)
    axes[0, 0].legend(fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("epoch", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("normalised (0-1)", fontsize=8)
    fig.tight_layout()
    return fig


def lag_bars(summary: pd.DataFrame, ax: plt.Axes | None = None) -> plt.Axes:
    """Lag per run (epochs); hatched bars did not generalise, so their lag is no finding."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.2))
    labels = [f"{r.task[:3]} {r.operation or ''} {r.frac:.0%} s{r.seed}".replace("  ", " ") for r in summary.itertuples()]
    colours = ["tab:blue" if t == "modular" else "tab:grey" for t in summary["task"]]
    bars = ax.bar(range(len(summary)), summary["lag"], color=colours)
    for b, gen in zip(bars, summary["generalised"]):
        if not gen:
            b.set_hatch("//")
            b.set_alpha(0.5)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(summary)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("lag = metric transition − grad peak (epochs)")
    ax.set_title("Gradient-peak lead per run (hatched: did not generalise)", fontsize=10)
    return ax


def weight_norms(records: Sequence[RunRecord], ax: plt.Axes | None = None) -> plt.Axes:
    """Total weight L2 norm over training, one line per run."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.2))
    for rec in records:
        w = rec.series("weight_norm")
        ax.plot(w.index, w.to_numpy(), lw=1, label=rec.config.label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("weight L2 norm (all layers)")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("Total weight norm over training", fontsize=10)
    return ax


def lag_distribution(summary: pd.DataFrame, ax: plt.Axes | None = None) -> plt.Axes:
    """Lags per fraction: one dot per seed (hollow: did not generalise, so its lag is no finding)
    and the mean of the generalised runs' lags with its t 95% CI, labelled with their number."""
    from .tables import mean_ci
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.4))
    fracs = sorted(summary["frac"].unique())
    for i, f in enumerate(fracs):
        g = summary[summary["frac"] == f]
        jitter = np.linspace(-0.12, 0.12, len(g)) if len(g) > 1 else np.zeros(1)
        gen = g["generalised"].astype(bool).to_numpy()
        ax.scatter(i + jitter[gen], g["lag"].to_numpy()[gen], color="tab:blue", s=18, zorder=3)
        ax.scatter(i + jitter[~gen], g["lag"].to_numpy()[~gen], facecolors="none", edgecolors="tab:blue", s=18, zorder=3)
        lags = g["lag"].to_numpy(float)[gen]
        if len(lags):
            mean = lags.mean()
            lo, hi = mean_ci(lags)
            ax.errorbar(i + 0.25, mean, yerr=[[mean - lo], [hi - mean]] if np.isfinite(lo) else None, fmt="s",
                        color="black", capsize=3, ms=4)
            ax.annotate(f"n={len(lags)}", (i + 0.25, mean), textcoords="offset points", xytext=(6, -3), fontsize=7)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(fracs)), [f"{f:.0%}" for f in fracs])
    ax.set_xlabel("training fraction")
    ax.set_ylabel("lag (epochs)")
    ax.set_title("Lag per seed (hollow: did not generalise); generalised runs' mean ± t 95% CI", fontsize=10)
    return ax


#: The probed signals of notebook 03: (signal, axis label, log scale). The Hessian's are in units of the
#: loss (nats for cross-entropy, squared targets for MSE) per squared parameter unit: "loss/θ²".
PROBE_PANELS: tuple[tuple[str, str, bool], ...] = (
    ("hessian_lmax", "Hessian λ_max (loss/θ²)", False), ("hessian_lmin", "Hessian λ_min (loss/θ²)", False),
    ("hessian_trace", "Hessian trace (loss/θ², ±1 s.e.)", False), ("b_simple", "B_simple (examples, log)", True),
    ("erank", "effective rank of hidden layer", False), ("cka_prev", "CKA to previous probe", False),
    ("active_frac", "active-neuron fraction", False),
)


ALARM_COLORS = ("tab:red", "tab:purple", "tab:brown")
"""Alarm markers, one colour per claim on a signal (B_simple carries two: the change point and the 3σ rule)."""


def signal_panels(record: RunRecord, analysis: Analysis, alarms: pd.DataFrame | None = None,
                  panels: Sequence[tuple[str, str, bool]] = PROBE_PANELS) -> plt.Figure:
    """One panel per probed signal against epoch, the test metric in the last panel; the gradient
    peak (dashed), steepest metric rise (dotted), generalisation (dash-dot) and the claims'
    detector alarms marked (a triangle pointing the alarm's way, one colour per claim, in the
    panel's legend)."""
    present = [p for p in panels if len(record.series(p[0]))]
    fig, axes = plt.subplots(len(present) + 1, 1, figsize=(7.5, 1.55 * (len(present) + 1)), sharex=True)
    for ax, (sig, label, log) in zip(axes, present):
        s = record.series(sig)
        ax.plot(s.index, s.to_numpy(), lw=1, marker="." if len(s) < 100 else None, ms=3)
        if sig == "hessian_trace":
            t = record.table
            se = t[(t["signal"] == sig) & (t["layer"] == "all")]["stderr"].to_numpy()
            ax.fill_between(s.index, s.to_numpy() - se, s.to_numpy() + se, alpha=0.3)
        if sig == "hessian_lmin":
            ax.axhline(0, color="grey", lw=0.6)
        if log:
            ax.set_yscale("log")
        ax.set_ylabel(label, fontsize=7)
        if alarms is not None:
            a = alarms[(alarms["run"] == record.config.label) & (alarms["signal"] == sig) & alarms["alarm_epoch"].notna()]
            claims = list(dict.fromkeys(alarms.loc[alarms["signal"] == sig, "claim"]))  # every run's panel alike
            for r in a.itertuples():
                ax.plot([r.alarm_epoch], [s.loc[:r.alarm_epoch].iloc[-1]], "v" if r.direction == "down" else "^",
                        color=ALARM_COLORS[claims.index(r.claim) % len(ALARM_COLORS)], ms=7,
                        label=r.claim if len(r.claim) <= 48 else r.claim[:47] + "…")
            if len(a):
                ax.legend(fontsize=6, loc="best")
    m = record.series("test_metric")
    axes[-1].plot(m.index, m.to_numpy(), color="tab:green")
    axes[-1].set_ylabel(metric_label(record), fontsize=7)
    axes[-1].set_xlabel("epoch")
    for ax in axes:
        ax.axvline(analysis.gnorm_peak_epoch, color="black", ls="--", lw=0.8)
        ax.axvline(analysis.metric_transition_epoch, color="tab:green", ls=":", lw=1)
        if analysis.generalisation_epoch is not None:
            ax.axvline(analysis.generalisation_epoch, color="tab:red", ls="-.", lw=0.8)
        ax.tick_params(which="both", labelsize=7)  # minor labels too (the log axis labels its minor ticks)
    axes[0].set_title(f"{record.config.label}: probed signals (dashed: grad peak, dotted: steepest rise, "
                      f"dash-dot: generalised)", fontsize=9)
    fig.tight_layout()
    return fig


def event_aligned(records: Sequence[RunRecord], signal: str, label: str, threshold: float = 0.5,
                  ax: plt.Axes | None = None) -> plt.Axes:
    """A probed signal of every generalised modular run against epochs relative to its generalisation
    event (0 = test metric at ``threshold`` to the end), so runs of different fractions line up."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.2))
    drawn = 0
    for rec in records:
        s = rec.series(signal).dropna()
        m = rec.series("test_metric")
        gi = generalisation_epoch(m.to_numpy(), threshold)
        if rec.config.task != "modular" or gi is None or len(s) == 0:
            continue
        ax.plot(s.index - int(m.index[gi]), s.to_numpy(), marker=".", ms=3, lw=0.9, label=rec.config.label)
        drawn += 1
    ax.axvline(0, color="tab:red", ls="-.", lw=0.8)
    if signal == "hessian_lmin":
        ax.axhline(0, color="grey", lw=0.6)
    ax.set_xlabel("epochs relative to generalisation")
    ax.set_ylabel(label, fontsize=8)
    if drawn == 0:
        ax.text(0.5, 0.5, "no generalised probed run", ha="center", va="center", transform=ax.transAxes)
    elif drawn <= 10:
        ax.legend(fontsize=6)
    return ax


def metric_curves(records: Sequence[RunRecord], threshold: float = 0.5, ax: plt.Axes | None = None) -> plt.Axes:
    """Test metric against epoch for a set of runs, with the generalisation threshold."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 3.2))
    for rec in records:
        m = rec.series("test_metric")
        ax.plot(m.index, m.to_numpy(), lw=0.8, alpha=0.8)
    ax.axhline(threshold, color="black", ls="--", lw=0.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric_label(records[0]) if records else "test metric")
    return ax
