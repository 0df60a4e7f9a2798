"""Measure the online detector's false-alarm rate on stationary Gaussian noise.

Acceptance (issue: online detector): with k = 3, m = 10 (window 50, baseline = first 10%), fewer
than 1% of 1000 trials of 3000 steps raise an alarm. Prints the measured rate with a 95%
Clopper-Pearson interval for the default reading (band = k x raw baseline std) and, for
comparison, for the band on the sliding mean's standard error (k x s / sqrt(window)); checks on
a subset of trials that the streaming detector gives exactly the replay's events.

    .venv/bin/python benchmarks/online_false_alarms.py [--trials 1000] [--steps 3000] [--seed 0]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.stats import beta

from phaselib.detect.online import OnlineDetector, baseline_len, replay


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial confidence interval for a rate k / n."""
    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def measure(trials: int, steps: int, seed: int, **params) -> int:
    """Number of trials (fresh noise from one seeded generator) with at least one alarm."""
    rng = np.random.default_rng(seed)
    b = baseline_len(steps)
    return sum(bool(replay(rng.normal(size=steps), baseline=b, **params)) for _ in range(trials))


def check_streaming(trials: int, steps: int, seed: int, **params) -> None:
    """Streaming and replay must give identical events (on noise with a step, so there are some)."""
    rng = np.random.default_rng(seed)
    b = baseline_len(steps)
    for _ in range(trials):
        x = rng.normal(size=steps)
        x[rng.integers(b, steps):] += rng.uniform(2, 6)
        det = OnlineDetector(baseline=b, rearm=True, **params)
        streamed = [a for v in x if (a := det.update(v)) is not None]
        if streamed != replay(x, baseline=b, rearm=True, **params):
            raise SystemExit("streaming and replay disagree")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stream-trials", type=int, default=20)
    args = ap.parse_args()
    print(f"stationary N(0,1), {args.trials} trials x {args.steps} steps, "
          f"baseline {baseline_len(args.steps)}, window 50, persistence 10, seed {args.seed}")
    for sigma, k in [("raw", 3.0), ("window", 3.0), ("window", 4.0), ("window", 5.0)]:
        t0 = time.perf_counter()
        hits = measure(args.trials, args.steps, args.seed, k=k, persistence=10, sigma=sigma)
        lo, hi = clopper_pearson(hits, args.trials)
        tag = "  <- default" if (sigma, k) == ("raw", 3.0) else ""
        print(f"sigma={sigma:6s} k={k:.0f}: false-alarm rate {hits / args.trials:.4f} "
              f"({hits}/{args.trials}; 95% CI {lo:.4f}-{hi:.4f}) "
              f"[{time.perf_counter() - t0:.1f}s]{tag}")
    check_streaming(args.stream_trials, args.steps, args.seed + 1)
    print(f"streaming == replay on {args.stream_trials} noisy step series: ok")


if __name__ == "__main__":
    main()
