"""The paper's offline analysis (PROTOCOL.md section 1, Analysis), as pure functions on arrays.

Gradient transition: argmax of the Savitzky-Golay-smoothed combined gradient norm after
skipping the first 2% of epochs. Metric transition: argmax of ``numpy.gradient`` of the
smoothed test metric (steepest increase). Lag = metric transition - gradient peak, so a
positive lag means the gradient leads. Unlike the paper, a lag only counts as a finding
when the run generalised (:func:`generalisation_epoch`); see PROTOCOL.md section 3.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats
from scipy.signal import savgol_filter

SG_WINDOW = 51
SG_ORDER = 3
SKIP_FRAC = 0.02
THRESHOLD = 0.5
XCORR_MAX_LAG = 500


@dataclass(frozen=True)
class Settings:
    """Knobs of the paper's analysis; the defaults are the paper's."""

    window: int = SG_WINDOW
    order: int = SG_ORDER
    skip_frac: float = SKIP_FRAC
    threshold: float = THRESHOLD
    max_lag: int = XCORR_MAX_LAG

    def __post_init__(self) -> None:
        if not (isinstance(self.window, int) and self.window >= 1):
            raise ValueError(f"window: {self.window!r} is invalid; allowed: an integer >= 1")
        if not (isinstance(self.order, int) and self.order >= 0):
            raise ValueError(f"order: {self.order!r} is invalid; allowed: an integer >= 0")
        if not 0 <= self.skip_frac < 1:
            raise ValueError(f"skip_frac: {self.skip_frac!r} is invalid; allowed: a number in [0, 1)")
        if not 0 < self.threshold <= 1:
            raise ValueError(f"threshold: {self.threshold!r} is invalid; allowed: a number in (0, 1]")
        if not (isinstance(self.max_lag, int) and self.max_lag >= 0):
            raise ValueError(f"max_lag: {self.max_lag!r} is invalid; allowed: an integer >= 0")


def smooth(x: np.ndarray, window: int = SG_WINDOW, order: int = SG_ORDER) -> np.ndarray:
    """Savitzky-Golay smoothing; the window shrinks to the largest odd length <= len(x).

    If the shrunk window cannot hold a polynomial of ``order`` (window <= order), the order
    drops to window - 1; a series of length < 3 is returned unchanged.
    """
    x = np.asarray(x, dtype=float)
    n = len(x)
    w = min(window, n if n % 2 == 1 else n - 1)
    if w < 3:
        return x.copy()
    if w % 2 == 0:
        w -= 1
    return savgol_filter(x, w, min(order, w - 1))


def _first_max(x: np.ndarray) -> int:
    """Earliest index whose value ties the maximum to 1e-9 relative (rounding in the filter
    must not turn a flat stretch into a spurious late peak)."""
    top = x.max()
    return int(np.flatnonzero(x >= top - 1e-9 * max(1.0, abs(top)))[0])


def peak_index(x: np.ndarray, skip_frac: float = SKIP_FRAC, **smooth_kw) -> int:
    """Index of the maximum of the smoothed series, ignoring the first ``skip_frac`` of it.

    Ties go to the earliest index.
    """
    s = smooth(x, **smooth_kw)
    skip = search_start(len(s), skip_frac)
    return skip + _first_max(s[skip:])


def search_start(n: int, skip_frac: float = SKIP_FRAC) -> int:
    """The first index :func:`peak_index` searches in a series of ``n`` samples."""
    return min(int(n * skip_frac), n - 1)


def steepest_increase_index(x: np.ndarray, **smooth_kw) -> int:
    """Index of the largest ``numpy.gradient`` of the smoothed series (earliest on ties).

    Like the paper's, this always returns an index, even for a flat or falling series: pair it
    with :func:`generalisation_epoch` before calling it a transition.
    """
    s = smooth(x, **smooth_kw)
    if len(s) < 2:
        return 0
    return _first_max(np.gradient(s))


def generalisation_epoch(metric: np.ndarray, threshold: float = THRESHOLD) -> int | None:
    """First index i with ``metric[i:] >= threshold`` everywhere, or None if there is none.

    This is the generalisation event: reaching the threshold and staying there to the end.
    """
    m = np.asarray(metric, dtype=float)
    if len(m) == 0:
        return None
    below = np.flatnonzero(~(m >= threshold))
    if len(below) == 0:
        return 0
    i = int(below[-1]) + 1
    return i if i < len(m) else None


def _zscore(x: np.ndarray) -> np.ndarray:
    sd = x.std()
    return (x - x.mean()) / sd if sd > 0 else np.zeros_like(x)


def xcorr_lag(grad: np.ndarray, metric: np.ndarray, max_lag: int = XCORR_MAX_LAG,
              **smooth_kw) -> tuple[int, float]:
    """Lag (samples) maximising |corr| between the z-scored derivatives of the smoothed signals.

    corr(k) = (1/n) sum_t z_g[t] * z_m[t + k] over the overlap (the standard biased estimator,
    which does not favour long lags), for |k| <= min(max_lag, n // 2);
    positive k means the metric's change follows the gradient's (the gradient leads). Ties in
    |corr| (to 1e-12) go to the smallest |k|, then to the positive k.
    """
    g = _zscore(np.gradient(smooth(grad, **smooth_kw)) if len(grad) > 1 else np.zeros(len(grad)))
    m = _zscore(np.gradient(smooth(metric, **smooth_kw)) if len(metric) > 1 else np.zeros(len(metric)))
    n = len(g)
    if n == 0:
        return 0, float("nan")
    lim = min(max_lag, n // 2)
    best_k, best_c = 0, -np.inf
    best_signed = 0.0
    for k in sorted(range(-lim, lim + 1), key=lambda k: (abs(k), -k)):
        c = float(np.dot(g[: n - k], m[k:])) / n if k >= 0 else float(np.dot(g[-k:], m[: n + k])) / n
        if abs(c) > best_c + 1e-12:
            best_k, best_c, best_signed = k, abs(c), c
    return best_k, best_signed


def pearson(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Pearson r and its two-sided p; NaN for constant or too-short inputs."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return float("nan"), float("nan")
    r, p = stats.pearsonr(x, y)
    return float(r), float(p)


def combined_norm(per_layer: dict[str, np.ndarray]) -> np.ndarray:
    """sqrt of the sum over layers of squared per-layer norms."""
    return np.sqrt(sum(np.asarray(v, float) ** 2 for v in per_layer.values()))


@dataclass(frozen=True)
class Analysis:
    """The paper's per-run findings, plus the honest generalisation verdict."""

    gnorm_peak_epoch: int
    metric_transition_epoch: int
    lag: int
    generalised: bool
    generalisation_epoch: int | None
    pearson_r: float
    pearson_p: float
    xcorr_lag: int
    xcorr_corr: float
    gnorm_search_start_epoch: int = 0  # the first epoch the peak search sees (after skip_frac)
    layer_peak_epochs: dict = field(default_factory=dict)
    layer_lags: dict = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        """``generalised`` or ``did not generalise`` (whose lag is kept out of every claim)."""
        return "generalised" if self.generalised else "did not generalise"


def analyse(epochs: np.ndarray, grad_norms: dict[str, np.ndarray], test_metric: np.ndarray,
            settings: Settings = Settings()) -> Analysis:
    """Run the paper's analysis on one run's recorded series (indices mapped to epochs)."""
    epochs = np.asarray(epochs)
    sk = {"window": settings.window, "order": settings.order}
    combined = combined_norm(grad_norms)
    g_i = peak_index(combined, settings.skip_frac, **sk)
    m_i = steepest_increase_index(test_metric, **sk)
    gen_i = generalisation_epoch(test_metric, settings.threshold)
    r, p = pearson(combined, test_metric)
    step = int(epochs[1] - epochs[0]) if len(epochs) > 1 else 1
    xk, xc = xcorr_lag(combined, test_metric, max(settings.max_lag // step, 0), **sk)
    layer_peaks = {l: int(epochs[peak_index(v, settings.skip_frac, **sk)]) for l, v in grad_norms.items()}
    m_epoch = int(epochs[m_i])
    return Analysis(
        gnorm_peak_epoch=int(epochs[g_i]), metric_transition_epoch=m_epoch,
        lag=m_epoch - int(epochs[g_i]), generalised=gen_i is not None,
        generalisation_epoch=None if gen_i is None else int(epochs[gen_i]),
        pearson_r=r, pearson_p=p, xcorr_lag=int(xk * step), xcorr_corr=xc,
        gnorm_search_start_epoch=int(epochs[search_start(len(combined), settings.skip_frac)]),
        layer_peak_epochs=layer_peaks, layer_lags={l: m_epoch - e for l, e in layer_peaks.items()},
    )
