"""The reference trainer: the paper's dense, run-by-run full-batch AdamW loop.

Every epoch e records, at the parameters *before* step e: per-layer gradient and weight L2
norms (weight and bias of a layer together), train loss/metric from the forward pass that
produced the gradient, and test loss/metric from a forward pass at the same parameters.
Values accumulate in a preallocated device buffer and reach the host once at the end, so
there is no per-epoch host synchronisation unless callbacks ask for values every epoch.
This loop is also the oracle that the batched engine is tested against.
"""
from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .config import RunConfig
from .data import Dataset, make_modular, make_regression
from .models import LAYERS, layer_params, make_model
from .record import RunRecord, concat_tables, environment, rows_table, tidy

#: The per-epoch signals every engine records, as (signal, layer) columns in buffer order.
BASE_COLUMNS: tuple[tuple[str, str], ...] = (
    *((("grad_norm", l) for l in LAYERS)), ("grad_norm", "all"),
    *((("weight_norm", l) for l in LAYERS)), ("weight_norm", "all"),
    ("train_loss", "all"), ("test_loss", "all"), ("train_metric", "all"), ("test_metric", "all"), ("lr", "all"),
)


def make_dataset(cfg: RunConfig) -> Dataset:
    """The dataset and split a config describes."""
    if cfg.task == "regression":
        return make_regression(cfg.frac, cfg.seed)
    return make_modular(cfg.modulus, cfg.operation, cfg.frac, cfg.seed)


def make_prober(cfg: RunConfig, data: Dataset | None = None):
    """The run's :class:`~phaselib.probes.Prober`, or None when its config asks for no probes.

    ``cfg.probes`` holds the cadences (``hessian_every``, ``noise_every``, ``cka_every``) and
    ``cheap_signals`` (1 = the representation signals every epoch). The fixed probe set is a
    seeded subset of the whole table (train and test), drawn by the prober's own generator.
    """
    probes = dict(cfg.probes)
    if not probes:
        return None
    from .probes import CHEAP_SIGNALS, ProbeSchedule, Prober
    data = data or make_dataset(cfg)
    schedule = ProbeSchedule(every_epoch=CHEAP_SIGNALS if probes.get("cheap_signals") else (),
                             cka_every=probes.get("cka_every", 0), noise_every=probes.get("noise_every", 0),
                             hessian_every=probes.get("hessian_every", 0))
    device = torch.device(cfg.device)
    x = torch.cat([data.x_train, data.x_test]).to(device)
    y = torch.cat([data.y_train, data.y_test]).to(device)
    return Prober(schedule, cfg.task, x, y, seed=cfg.seed)


def loss_and_metric(task: str, out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy and accuracy (modular), or MSE and R^2 = 1 - SS_res/SS_tot (regression)."""
    if task == "regression":
        loss = F.mse_loss(out, y)
        ss_res = ((y - out) ** 2).sum()
        ss_tot = ((y - y.mean()) ** 2).sum()
        return loss, 1.0 - ss_res / ss_tot
    loss = F.cross_entropy(out, y)
    return loss, (out.argmax(dim=-1) == y).float().mean()


def recorded_epochs(cfg: RunConfig) -> np.ndarray:
    """Epochs at which signals are recorded: 0, k, 2k, ... and always the last one."""
    e = np.arange(0, cfg.epochs, cfg.record_every)
    if e[-1] != cfg.epochs - 1:
        e = np.append(e, cfg.epochs - 1)
    return e


# ---------------------------------------------------------------- callbacks


@dataclass
class TrainControl:
    """What a callback may do at an epoch: log an event, scale the lr, or stop the run."""

    epoch: int = 0
    lr_scale: float = 1.0
    stop_reason: str | None = None
    events: list[dict] = field(default_factory=list)

    def log_event(self, name: str, **detail) -> None:
        self.events.append({"epoch": self.epoch, "event": name, **detail})

    def scale_lr(self, factor: float, reason: str = "") -> None:
        if not factor > 0:
            raise ValueError(f"factor: {factor!r} is invalid; allowed: a number > 0")
        self.lr_scale *= factor
        self.log_event("scale_lr", factor=factor, reason=reason)

    def stop(self, reason: str) -> None:
        self.stop_reason = reason
        self.log_event("stop", reason=reason)


class Callback(Protocol):
    """Called once per recorded epoch with that epoch's signals (host floats)."""

    def __call__(self, epoch: int, signals: Mapping[str, float], control: TrainControl) -> None: ...


def signal_name(signal: str, layer: str) -> str:
    """Key under which callbacks see a signal: ``grad_norm`` (whole model) or ``grad_norm/fc1``."""
    return signal if layer == "all" else f"{signal}/{layer}"


def set_deterministic(mode: bool, warn_only: bool = False) -> None:
    """``torch.use_deterministic_algorithms(mode, warn_only=...)`` without its first-call cost.

    The public function imports ``torch._inductor`` (1.3-1.5 s on the first call of every
    process here: each sweep worker, notebook kernel and test subprocess) only to copy the flag
    into inductor's config, which matters to ``torch.compile`` alone. So it is called when
    inductor is already loaded; otherwise torch's own setter of the flag is. A process that
    imports inductor later, inside :func:`deterministic`, gets the eager flag but not
    inductor's copy (phaselib never compiles)."""
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if "torch._inductor.config" in sys.modules or setter is None:
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
    else:
        setter(mode, warn_only=warn_only)


@contextlib.contextmanager
def deterministic(threads: int = 0) -> Iterator[None]:
    """Deterministic algorithms on (PROTOCOL.md), optional thread count; restores both after."""
    prev = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    prev_threads = torch.get_num_threads()
    try:
        set_deterministic(True)
        if threads:
            torch.set_num_threads(threads)
        yield
    finally:
        set_deterministic(*prev)
        torch.set_num_threads(prev_threads)


def layer_norms(groups: Mapping[str, Sequence[torch.Tensor]], grad: bool) -> torch.Tensor:
    """Per-layer L2 norms (weight and bias together), then the combined norm, as one tensor."""
    per = [torch.sqrt(sum(((p.grad if grad else p.detach()) ** 2).sum() for p in ps)) for ps in groups.values()]
    per_t = torch.stack(per)
    return torch.cat([per_t, torch.sqrt((per_t ** 2).sum()).reshape(1)])


def run_metadata(cfg: RunConfig, wall: float, control: TrainControl, epochs_run: int, engine: str) -> dict:
    return {"config_hash": cfg.key, "engine": engine, "wall_time_s": wall, "epochs_run": epochs_run,
            "stop_reason": control.stop_reason, "events": control.events, "deterministic": True,
            "config": cfg.hashed_dict(), **environment()}


def train_reference(cfg: RunConfig, callbacks: Sequence[Callback] = (), prober=None,
                    progress: Callable[[int], None] | None = None) -> RunRecord:
    """Train one run with the paper's dense loop and return its record.

    ``prober`` (see :mod:`phaselib.probes`) adds extra signals at its own cadence;
    ``progress`` is called with the number of epochs just completed.
    """
    t0 = time.perf_counter()
    device = torch.device(cfg.device)
    data = make_dataset(cfg)
    if prober is None:
        prober = make_prober(cfg, data)
    with deterministic(cfg.threads):
        model = make_model(data.in_dim, cfg.width, data.out_dim, cfg.seed, device)
        xtr, ytr = data.x_train.to(device), data.y_train.to(device)
        xte, yte = data.x_test.to(device), data.y_test.to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        groups = layer_params(model)
        rec = recorded_epochs(cfg)
        is_rec = np.zeros(cfg.epochs, dtype=bool)
        is_rec[rec] = True
        buf = torch.empty(len(rec), len(BASE_COLUMNS), device=device)
        control = TrainControl()
        extra_rows: list[dict] = []
        row = 0
        last = cfg.epochs - 1
        for epoch in range(cfg.epochs):
            out = model(xtr)
            loss, metric = loss_and_metric(cfg.task, out, ytr)
            opt.zero_grad(set_to_none=False)
            loss.backward()
            if is_rec[epoch]:
                with torch.no_grad():
                    gn = layer_norms(groups, grad=True)
                    wn = layer_norms(groups, grad=False)
                    te_loss, te_metric = loss_and_metric(cfg.task, model(xte), yte)
                    lr_now = torch.tensor(cfg.lr * control.lr_scale, device=device)
                    buf[row] = torch.cat([gn, wn, torch.stack([loss.detach(), te_loss, metric, te_metric, lr_now])])
                if prober is not None:
                    extra_rows.extend(prober.rows(model, epoch, xtr, ytr))
                if callbacks:
                    control.epoch = epoch
                    host = buf[row].tolist()  # the one host sync callbacks need
                    sig = {signal_name(s, l): v for (s, l), v in zip(BASE_COLUMNS, host)}
                    for r in extra_rows:
                        if r["epoch"] == epoch:
                            sig[signal_name(r["signal"], r["layer"])] = r["value"]
                    scale_before = control.lr_scale
                    for cb in callbacks:
                        cb(epoch, sig, control)
                    if control.lr_scale != scale_before:
                        for g in opt.param_groups:
                            g["lr"] = cfg.lr * control.lr_scale
                        buf[row, BASE_COLUMNS.index(("lr", "all"))] = cfg.lr * control.lr_scale
                row += 1
                if control.stop_reason is not None:
                    last = epoch
                    break
            opt.step()
            if progress is not None:
                progress(1)
        values = buf[:row].cpu().numpy().astype(np.float64)
    wall = time.perf_counter() - t0
    epochs = rec[:row]
    table = tidy(cfg.key, epochs, {c: values[:, i] for i, c in enumerate(BASE_COLUMNS)})
    if extra_rows:
        table = concat_tables([table, rows_table(cfg.key, extra_rows)])
    meta = run_metadata(cfg, wall, control, last + 1, "reference")
    return RunRecord(cfg, table, meta)
