"""An interactive threshold explorer: pick a run and the detection knobs, see the detections.

Besides the paper's knobs it offers an event detector on any recorded signal: the online
k-sigma protocol (k, window, persistence) or change points (method, cost model, penalty);
its events are drawn on the plot and listed in :attr:`ThresholdExplorer.events`.

Moving a control recomputes the analysis (:func:`phaselib.detect.offline.analyse`) for the
run shown and for the lag table of every run, then redraws. All state lives in the widgets,
so tests can set ``.value`` in Python and read :attr:`ThresholdExplorer.analyses`. Headless
execution (papermill, nbval, HTML export) cannot show a live widget: :meth:`static_view`
renders the current settings as a plain figure and table instead.
"""
from __future__ import annotations

from typing import Sequence

import ipywidgets as W
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

from .detect import changepoint, online
from .detect.offline import Analysis, Settings
from .plots import run_overlay
from .record import RunRecord
from .sweep import analyse_record


class ThresholdExplorer:
    """Controls: run, Savitzky-Golay window and order, skip fraction, generalisation threshold."""

    def __init__(self, records: Sequence[RunRecord], settings: Settings = Settings()) -> None:
        if not records:
            raise ValueError("records: need at least one run to explore")
        self.records = list(records)
        self.run = W.Dropdown(options=[(r.config.label, i) for i, r in enumerate(self.records)], value=0,
                              description="run")
        self.window = W.IntSlider(value=settings.window, min=3, max=301, step=2, description="SG window")
        self.order = W.IntSlider(value=settings.order, min=0, max=7, description="SG order")
        self.skip_frac = W.FloatSlider(value=settings.skip_frac, min=0.0, max=0.3, step=0.01, description="skip frac")
        self.threshold = W.FloatSlider(value=settings.threshold, min=0.05, max=1.0, step=0.05, description="threshold")
        self.max_lag = settings.max_lag
        pairs = sorted({sl for r in self.records for sl in r.signals()})
        signals = [(s if l == "all" else f"{s}/{l}", (s, l)) for s, l in pairs]
        self.detector = W.Dropdown(options=["none", "online", "changepoint"], value="none", description="detector")
        self.signal = W.Dropdown(options=signals, value=dict(signals).get("grad_norm", signals[0][1]),
                                 description="signal")
        self.k = W.FloatSlider(value=3.0, min=0.5, max=8.0, step=0.5, description="k (sigma)")
        self.det_window = W.IntSlider(value=50, min=1, max=300, description="window")
        self.persistence = W.IntSlider(value=10, min=1, max=100, description="persistence")
        self.method = W.Dropdown(options=list(changepoint.METHODS), value="pelt", description="method")
        self.cost = W.Dropdown(options=list(changepoint.COSTS), value="l2", description="cost")
        self.penalty = W.FloatText(value=0.0, description="penalty (0=default)")
        self.events: list[int] = []
        self.plot_out = W.Output()
        self.table_out = W.Output()
        self.analyses: list[Analysis] = []
        for w in self.controls:
            w.observe(self._on_change, names="value")
        self._recompute()

    @property
    def controls(self) -> list[W.ValueWidget]:
        return [self.run, self.window, self.order, self.skip_frac, self.threshold, self.detector, self.signal,
                self.k, self.det_window, self.persistence, self.method, self.cost, self.penalty]

    @property
    def settings(self) -> Settings:
        """The detection settings the controls describe (order clipped below the window)."""
        return Settings(window=self.window.value, order=min(self.order.value, self.window.value - 1),
                        skip_frac=float(self.skip_frac.value), threshold=float(self.threshold.value),
                        max_lag=self.max_lag)

    @property
    def current(self) -> Analysis:
        """The analysis of the run on view."""
        return self.analyses[self.run.value]

    def table(self) -> pd.DataFrame:
        """The lag table of every run at the current settings."""
        return pd.DataFrame([{
            "run": r.config.label, "grad peak": a.gnorm_peak_epoch, "metric transition": a.metric_transition_epoch,
            "lag": a.lag, "verdict": a.verdict, "generalised at": a.generalisation_epoch,
        } for r, a in zip(self.records, self.analyses)])

    def _recompute(self) -> None:
        s = self.settings
        self.analyses = [analyse_record(r, s) for r in self.records]
        self.events = self._detect()

    def _detect(self) -> list[int]:
        """Epochs of the chosen detector's events on the chosen signal of the run on view."""
        if self.detector.value == "none":
            return []
        series = self.records[self.run.value].series(*self.signal.value).dropna()
        if len(series) < 4:
            return []
        x = series.to_numpy()
        if self.detector.value == "online":
            alarms = online.replay(x, window=min(self.det_window.value, len(x)), k=float(self.k.value),
                                   persistence=self.persistence.value, rearm=True)
            idx = [a.index for a in alarms]
        else:
            pen = float(self.penalty.value) if self.penalty.value and self.penalty.value > 0 else None
            idx = list(changepoint.detect(x, method=self.method.value, cost=self.cost.value, penalty=pen).indices)
        return [int(series.index[i]) for i in idx]

    def _on_change(self, change=None) -> None:
        self._recompute()
        self._redraw()

    def figure(self) -> plt.Figure:
        fig, ax = plt.subplots(figsize=(7.5, 3.6))
        run_overlay(self.records[self.run.value], self.current, self.settings, ax=ax)
        for i, e in enumerate(self.events):
            ax.axvline(e, color="tab:red", lw=1.2, alpha=0.8,
                       label=f"{self.detector.value} on {'/'.join(self.signal.value)}" if i == 0 else None)
        if self.events:
            ax.legend(loc="upper right", fontsize=7, framealpha=0.8)
        fig.tight_layout()
        return fig

    def _redraw(self) -> None:
        with self.plot_out:
            self.plot_out.clear_output(wait=True)
            fig = self.figure()
            display(fig)
            plt.close(fig)
        with self.table_out:
            self.table_out.clear_output(wait=True)
            display(self.table())

    def widget(self) -> W.Widget:
        """The live explorer (controls, plot, lag table)."""
        self._redraw()
        return W.VBox([W.HBox([self.run, self.threshold]), W.HBox([self.window, self.order, self.skip_frac]),
                       W.HBox([self.detector, self.signal]), W.HBox([self.k, self.det_window, self.persistence]),
                       W.HBox([self.method, self.cost, self.penalty]), self.plot_out, self.table_out])

    def static_view(self) -> None:
        """Plain figure and table at the current settings, for headless runs and HTML exports."""
        fig = self.figure()
        display(fig)
        plt.close(fig)
        display(self.table())
