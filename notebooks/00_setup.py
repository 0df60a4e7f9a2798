# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 00 · Setup: environment, determinism, data, model, and the cost of an epoch
#
# **Question.** Before any claim about grokking, can we trust the apparatus? This notebook
# records the software it runs on, checks that a run is bit-for-bit repeatable, shows the
# data and the model of the paper's protocol, and measures what one training epoch costs.
#
# **Method.** PROTOCOL.md §1: modular arithmetic on all pairs (a, b) mod p, one-hot inputs of
# dimension 2p, a 2-layer ReLU MLP of `width` hidden units initialised by PyTorch's defaults
# right after `torch.manual_seed(seed)`, full-batch AdamW (`lr`, `weight_decay`). The
# parameters cell below defaults to the protocol's values (p = 97, width 64, lr 1e-3, weight
# decay 0.1); a parameter file or papermill may set others.

# %% tags=["parameters"]
modulus = 97
width = 64
lr = 1e-3
weight_decay = 0.1
engine = "batched"
out_dir = "results/notebook"

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from phaselib import params
from phaselib.executors import train_batch
from phaselib.notebook import say, show
from phaselib.plots import save
from phaselib.record import environment
from phaselib.train import make_dataset

P = params.from_namespace(globals())

# %% [markdown]
# ## Environment
# Versions and platform (these differ between machines, so nbval does not compare them).

# %%
show(pd.DataFrame([environment()]).T.reset_index().rename(columns={"index": "component", 0: "version"}))

# %% [markdown]
# ## Determinism
# The same configuration, trained twice, must give an identical record: every signal at every
# epoch, compared exactly.

# %%
cfg = P.run_config(task="modular", operation="add", frac=0.7, seed=42, epochs=100)
first, second = train_batch([cfg])[0], train_batch([cfg])[0]
identical = first.table.equals(second.table)
say(f"Two trainings of `{cfg.label}` ({cfg.epochs} epochs, engine `{cfg.engine}`): "
    f"records of {len(first.table)} values each, **identical: {identical}**.")
assert identical

# %% [markdown]
# ## The data
# All p² pairs, enumerated a-major, split by the paper's seeded permutation (division has
# p(p − 1) pairs: b = 0 has no inverse mod p). The figure shows which pairs are in the training
# split (a 70% split, seed 42), and the label table itself.

# %% tags=["nbval-check-output"]
rows = []
for op in ("add", "sub", "mul", "div"):
    for frac in (0.5, 0.7, 0.9):
        d = make_dataset(P.run_config(task="modular", operation=op, frac=frac, seed=42, epochs=1))
        rows.append({"operation": op, "frac": frac, "pairs": d.n_total, "train": len(d.train_idx),
                     "test": len(d.test_idx), "input dim": d.in_dim, "classes": d.out_dim})
show(pd.DataFrame(rows))

# %%
frac, seed = 0.7, 42
d = make_dataset(P.run_config(task="modular", operation="add", frac=frac, seed=seed, epochs=1))
p = d.modulus
mask = np.zeros(p * p)
mask[d.train_idx] = 1
fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
image = axes[0].imshow(d.label.reshape(p, p), cmap="viridis")
fig.colorbar(image, ax=axes[0], label="class (a + b) mod p")
axes[0].set_title(f"label (a + b) mod {p}")
axes[1].imshow(mask.reshape(p, p), cmap="Greys", vmin=0, vmax=1)
axes[1].set_title(f"training pairs (black), {frac:.0%} split, seed {seed}")
for ax in axes:
    ax.set_xlabel("b")
    ax.set_ylabel("a")
fig.tight_layout()
save(fig, P.out_dir, "00_data")
plt.show()

# %% [markdown]
# ## The model

# %% tags=["nbval-check-output"]
from phaselib.models import make_model

m = make_model(d.in_dim, P.width, d.out_dim, seed=42)
show(pd.DataFrame([{"parameter": n, "shape": tuple(t.shape), "count": t.numel()} for n, t in m.named_parameters()]))
say(f"{sum(t.numel() for t in m.parameters()):,} parameters in all.")

# %% [markdown]
# ## The cost of one epoch
# Milliseconds per run-epoch of the paper's dense run-by-run loop (`reference`) on the primary
# sweep's three fractions against the batched engine stepping the same three together, measured
# side by side here (the machine is shared, so read the ratio, not the absolute times).
# `benchmarks/train_throughput.py` is the careful version of this measurement.

# %%
epochs = 60
cfgs = [P.run_config(task="modular", operation="add", frac=f, seed=42, epochs=epochs, engine="reference")
        for f in (0.5, 0.7, 0.9)]
for warm in (cfgs[:1], [c.replace(engine="batched") for c in cfgs]):  # first calls load code; not timed
    train_batch([c.replace(epochs=2) for c in warm])
t0 = time.perf_counter()
train_batch(cfgs)  # the reference loop trains them one after the other
ref_ms = (time.perf_counter() - t0) / (epochs * len(cfgs)) * 1e3
t0 = time.perf_counter()
train_batch([c.replace(engine="batched") for c in cfgs])
bat_ms = (time.perf_counter() - t0) / (epochs * len(cfgs)) * 1e3
show(pd.DataFrame([{"engine": "reference", "ms per run-epoch": ref_ms},
                   {"engine": "batched", "ms per run-epoch": bat_ms}]), floatfmt=".2f")
say(f"At p = {P.modulus}, the batched engine is **{ref_ms / bat_ms:.1f}x** faster per run-epoch in this measurement.")

# %% [markdown]
# **What it means.** The record is exactly repeatable on this machine, the data and model are
# the paper's, and the batched engine makes the sweeps of the next notebooks cheap.
