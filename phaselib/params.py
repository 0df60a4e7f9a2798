"""Study parameters: one flat, validated set shared by the CLI, papermill and the notebooks.

A YAML file in ``params/`` holds a subset of these keys; missing keys take the defaults
below, which are the small fast set a notebook runs with interactively. Unknown keys and
out-of-range values fail here, before any training, naming the key and its allowed range.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

from .config import ENGINES, ConfigError, RunConfig
from .data import OPERATIONS, TASKS


@dataclass(frozen=True)
class StudyParams:
    """Everything a study run needs. Defaults: the small fast set (mod 97, 1200 epochs) for notebooks."""

    # model and optimiser (PROTOCOL.md section 1)
    modulus: int = 97
    width: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.1
    engine: str = "batched"
    device: str = "cpu"
    threads: int = 0
    record_every: int = 1
    # primary sweep (Table 1)
    primary_tasks: tuple[str, ...] = ("modular", "regression")
    primary_operations: tuple[str, ...] = ("add",)
    primary_fracs: tuple[float, ...] = (0.5, 0.7, 0.9)
    primary_seeds: tuple[int, ...] = (42,)
    primary_epochs: int = 1200
    # seed-variance sweep (Table 2)
    variance_tasks: tuple[str, ...] = ("modular",)
    variance_operations: tuple[str, ...] = ("add",)
    variance_fracs: tuple[float, ...] = (0.5, 0.7, 0.9)
    variance_seeds: tuple[int, ...] = (42, 123, 7)
    variance_epochs: int = 1200
    # long-horizon runs (0 epochs = none)
    long_fracs: tuple[float, ...] = ()
    long_seeds: tuple[int, ...] = ()
    long_epochs: int = 0
    # analysis (PROTOCOL.md section 1, Analysis)
    sg_window: int = 51
    sg_order: int = 3
    skip_frac: float = 0.02
    threshold: float = 0.5
    xcorr_max_lag: int = 500
    max_false_alarms: float = 1.0  # per 1000 epochs, for the detector ranking
    min_hit_rate: float = 0.5  # share of generalised runs a ranked detector must announce
    # probing runs (notebook 03): primary tasks and operations at these fractions and seeds,
    # with the cheap representation signals every epoch and the others at their cadence (0 = off)
    probe_fracs: tuple[float, ...] = (0.9,)
    probe_seeds: tuple[int, ...] = (42,)
    probe_epochs: int = 1200
    probe_hessian_every: int = 100
    probe_noise_every: int = 50
    probe_cka_every: int = 10
    # where the study writes
    out_dir: str = "results/notebook"

    def __post_init__(self) -> None:
        validate_params(self)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def probes(self) -> dict[str, int]:
        """The probe cadences of the probing runs (part of their config, and so of their hash)."""
        d = {"hessian_every": self.probe_hessian_every, "noise_every": self.probe_noise_every,
             "cka_every": self.probe_cka_every, "cheap_signals": 1}
        return {k: v for k, v in d.items() if v}

    def run_config(self, **overrides: Any) -> RunConfig:
        base = dict(modulus=self.modulus, width=self.width, lr=self.lr, weight_decay=self.weight_decay,
                    engine=self.engine, device=self.device, threads=self.threads,
                    record_every=self.record_every)
        base.update(overrides)
        return RunConfig(**base)


_SEQUENCES = {f.name for f in fields(StudyParams) if str(f.type).startswith("tuple")}


def _fail(key: str, value: object, allowed: str) -> None:
    raise ConfigError(f"{key}: {value!r} is invalid; allowed: {allowed}")


def validate_params(p: StudyParams) -> None:
    """Check every key's type and range; build one RunConfig per group to reuse its checks."""
    for key in _SEQUENCES:
        v = getattr(p, key)
        if not isinstance(v, tuple):
            _fail(key, v, "a list")
    for key in ("primary_tasks", "variance_tasks"):
        for t in getattr(p, key):
            if t not in TASKS:
                _fail(key, t, f"a list drawn from {list(TASKS)}")
    for key in ("primary_operations", "variance_operations"):
        for o in getattr(p, key):
            if o not in OPERATIONS:
                _fail(key, o, f"a list drawn from {list(OPERATIONS)}")
    for key in ("primary_fracs", "variance_fracs", "long_fracs", "probe_fracs"):
        for f in getattr(p, key):
            if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1:
                _fail(key, f, "a list of numbers in the open interval (0, 1)")
    for key in ("primary_seeds", "variance_seeds", "long_seeds", "probe_seeds"):
        for s in getattr(p, key):
            if isinstance(s, bool) or not isinstance(s, int) or s < 0:
                _fail(key, s, "a list of integers >= 0")
    for key in ("primary_epochs", "variance_epochs", "probe_epochs"):
        v = getattr(p, key)
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            _fail(key, v, "an integer > 0")
    for key in ("long_epochs", "probe_hessian_every", "probe_noise_every", "probe_cka_every"):
        v = getattr(p, key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            _fail(key, v, "an integer >= 0 (0 = off)")
    if isinstance(p.sg_window, bool) or not isinstance(p.sg_window, int) or p.sg_window < 3 or p.sg_window % 2 == 0:
        _fail("sg_window", p.sg_window, "an odd integer >= 3")
    if isinstance(p.sg_order, bool) or not isinstance(p.sg_order, int) or not 0 <= p.sg_order < p.sg_window:
        _fail("sg_order", p.sg_order, f"an integer in [0, sg_window) = [0, {p.sg_window})")
    if isinstance(p.skip_frac, bool) or not isinstance(p.skip_frac, (int, float)) or not 0 <= p.skip_frac < 1:
        _fail("skip_frac", p.skip_frac, "a number in [0, 1)")
    if isinstance(p.threshold, bool) or not isinstance(p.threshold, (int, float)) or not 0 < p.threshold <= 1:
        _fail("threshold", p.threshold, "a number in (0, 1]")
    if isinstance(p.xcorr_max_lag, bool) or not isinstance(p.xcorr_max_lag, int) or p.xcorr_max_lag < 0:
        _fail("xcorr_max_lag", p.xcorr_max_lag, "an integer >= 0")
    if isinstance(p.max_false_alarms, bool) or not isinstance(p.max_false_alarms, (int, float)) or p.max_false_alarms < 0:
        _fail("max_false_alarms", p.max_false_alarms, "a number >= 0 (alarms per 1000 epochs)")
    if isinstance(p.min_hit_rate, bool) or not isinstance(p.min_hit_rate, (int, float)) or not 0 <= p.min_hit_rate <= 1:
        _fail("min_hit_rate", p.min_hit_rate, "a number in [0, 1] (share of generalised runs)")
    if not isinstance(p.out_dir, str) or not p.out_dir:
        _fail("out_dir", p.out_dir, "a non-empty path")
    if p.engine not in ENGINES:
        _fail("engine", p.engine, f"one of {list(ENGINES)}")
    # the remaining model/optimiser keys and per-run combinations are checked by RunConfig itself,
    # with the study key named in the message
    for task in set(p.primary_tasks) | set(p.variance_tasks):
        for op in set(p.primary_operations) | set(p.variance_operations):
            for frac in set(p.primary_fracs) | set(p.variance_fracs) | set(p.long_fracs):
                try:
                    p.run_config(task=task, operation=op, frac=frac, seed=0, epochs=1)
                except ConfigError as exc:
                    raise ConfigError(str(exc)) from None


def from_mapping(values: Mapping[str, Any], *, source: str = "parameters") -> StudyParams:
    """Validated :class:`StudyParams` from a mapping; unknown keys are an error."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source}: expected a mapping of key: value, got {type(values).__name__}")
    known = {f.name for f in fields(StudyParams)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown key in {source}; allowed keys: {sorted(known)}")
    d = {k: tuple(v) if k in _SEQUENCES and isinstance(v, list) else v for k, v in values.items()}
    for k in ("lr", "weight_decay", "skip_frac", "threshold", "max_false_alarms", "min_hit_rate"):
        if k in d and isinstance(d[k], int) and not isinstance(d[k], bool):
            d[k] = float(d[k])
    return StudyParams(**d)


def load(path: str | Path) -> StudyParams:
    """Read and validate a YAML parameter file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params: no such file {str(path)!r}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"params: {path} is not valid YAML: {exc}") from None
    return from_mapping(data, source=str(path))


#: Set, it replaces every notebook's ``out_dir`` (and so its run store). ``make test`` points it at
#: a fresh directory, so nbval retrains instead of reading runs a developer's earlier session left
#: in ``notebooks/results`` (runs are keyed by config, not by how they were computed).
OUT_DIR_ENV = "PHASELIB_NOTEBOOK_OUT"


def from_namespace(ns: Mapping[str, Any]) -> StudyParams:
    """Validated params from a notebook's globals: picks the known keys, ignores the rest
    (``out_dir`` replaced by ``$PHASELIB_NOTEBOOK_OUT`` when that is set)."""
    known = {f.name for f in fields(StudyParams)}
    values = {k: v for k, v in ns.items() if k in known}
    if os.environ.get(OUT_DIR_ENV):
        values["out_dir"] = os.environ[OUT_DIR_ENV]
    return from_mapping(values, source="notebook parameters")
