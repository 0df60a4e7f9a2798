"""The paper's published figures, held as data (PROTOCOL.md section 2).

Source: Du & Ji, "Gradient Norm Phase Transitions as Early Indicators of Generalization in
Grokking", paper 2603.00392 (2026), Tables 1 and 2; torch 2.6.0 on Apple Silicon.
"""
from __future__ import annotations

import pandas as pd

SOURCE = ("Du & Ji (2026), 'Gradient Norm Phase Transitions as Early Indicators of Generalization "
          "in Grokking', paper 2603.00392, Tables 1-2 (torch 2.6.0, Apple Silicon)")

#: The primary sweep's seed (Table 1) and the seed-variance seeds (Table 2).
PRIMARY_SEED = 42
SEEDS = (42, 123, 7)

#: Table 1: (task, frac) -> grad peak, metric transition, lag, Pearson r.
TABLE1 = pd.DataFrame(
    [("modular", 0.5, 562, 1261, 699, -0.929), ("modular", 0.7, 501, 693, 192, -0.821),
     ("modular", 0.9, 362, 374, 12, -0.662), ("regression", 0.5, 60, 0, -60, -0.946),
     ("regression", 0.7, 60, 0, -60, -0.947), ("regression", 0.9, 60, 0, -60, -0.948)],
    columns=["task", "frac", "gnorm_peak_epoch", "metric_transition_epoch", "lag", "pearson_r"],
)

#: Final test accuracy the paper reports for modular addition (fractions not listed: not given).
FINAL_TEST_ACCURACY = {0.5: 0.066, 0.7: 0.762}

#: Table 2: frac -> mean, std, min, max of the lag over seeds {42, 123, 7}.
TABLE2 = pd.DataFrame(
    [(0.5, 641.7, 197.3, 422, 804), (0.7, 199.0, 24.3, 179, 226), (0.9, 54.3, 37.2, 12, 82)],
    columns=["frac", "mean", "std", "min", "max"],
)

#: The lag range the abstract claims for the primary seed-42 sweep.
PRIMARY_LAG_RANGE = (12, 699)
#: Published wall time of the 15-run recipe (seconds, Apple Silicon).
WALL_TIME_S = 309.6
