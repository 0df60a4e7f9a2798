"""lambda_min precursor of seed 003: an order-of-magnitude drop or a zero crossing that persists.

The baseline level ``L`` is the median of the first ``baseline`` samples (10% of the series by
default; the median resists a single bad Lanczos estimate). From then on a sample *qualifies* if

- ``L > 0``: ``x <= L / drop_factor`` (dropped tenfold towards zero; crossing zero included),
  direction ``"down"``;
- ``L < 0``: ``x <= L * drop_factor`` (ten times more negative), direction ``"down"``, or
  ``x > 0`` (crossed zero upwards), direction ``"up"``;
- ``L == 0``: ``x < 0``, direction ``"down"`` (no ratio is defined).

The alarm is raised at the ``persistence``-th consecutive qualifying sample of one direction
(causal: known at that sample). Hessian probes come every N epochs, so series are short and
``persistence`` counts probes (default 3, the seed's "3-5 evaluations"). A baseline level close
to zero relative to the estimator's noise makes the ratio test fire on noise: check ``L``
against the Lanczos error bars before trusting an alarm.
"""
from __future__ import annotations

import math

import numpy as np

from .online import Alarm, as_series, baseline_len, persistent_run_ends

NAME = "curvature"


def detect(series: np.ndarray, drop_factor: float = 10.0, persistence: int = 3,
           baseline: int | None = None, direction: str = "any") -> Alarm | None:
    """First persistent tenfold drop or zero crossing of ``series`` (e.g. lambda_min), or None;
    ``direction`` "down" or "up" keeps only the qualifying samples of that direction."""
    if direction not in ("any", "down", "up"):
        raise ValueError(f"direction must be one of ['any', 'down', 'up'], got {direction!r}")
    if isinstance(drop_factor, bool) or not isinstance(drop_factor, (int, float, np.floating)) \
            or not math.isfinite(drop_factor) or drop_factor <= 1:
        raise ValueError(f"drop_factor must be a finite number > 1, got {drop_factor!r}")
    for name, value in (("persistence", persistence), ("baseline", baseline)):
        if value is None and name == "baseline":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    x = as_series(series)
    b = baseline_len(len(x)) if baseline is None else int(baseline)
    if len(x) <= b:
        return None
    level = float(np.median(x[:b]))
    rest = x[b:]
    sign = np.zeros(len(rest), dtype=np.int8)
    if level > 0:
        sign[rest <= level / drop_factor] = -1
    elif level < 0:
        sign[rest <= level * drop_factor] = -1
        sign[rest > 0] = 1
    else:
        sign[rest < 0] = -1
    if direction != "any":
        sign[sign != (1 if direction == "up" else -1)] = 0
    fire = persistent_run_ends(sign, int(persistence))
    if not fire.size:
        return None
    i = int(fire[0])
    return Alarm(b + i, float(rest[i]), "up" if sign[i] > 0 else "down", NAME)
