"""The frozen, validated configuration of one training run, and its stable hash."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields

from .data import OPERATIONS, TASKS, is_prime

ENGINES: tuple[str, ...] = ("reference", "batched")

#: Fields that do not change a run's numbers, so they stay out of its hash.
_UNHASHED = frozenset({"device", "threads"})


class ConfigError(ValueError):
    """An invalid parameter: the message names the key and its allowed range."""


def _check(ok: bool, key: str, value: object, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {value!r} is invalid; allowed: {allowed}")


@dataclass(frozen=True)
class RunConfig:
    """One run: task, data split, model, optimiser and recording cadence.

    ``operation`` and ``modulus`` only matter for the modular task; for regression they are
    normalised to ``None`` so that equal runs hash equally.
    """

    task: str = "modular"
    operation: str | None = "add"
    modulus: int | None = 97
    frac: float = 0.7
    seed: int = 42
    epochs: int = 3000
    lr: float = 1e-3
    weight_decay: float = 0.1
    width: int = 64
    record_every: int = 1
    engine: str = "reference"
    probes: tuple[tuple[str, int], ...] = field(default=())
    device: str = "cpu"
    threads: int = 0

    def __post_init__(self) -> None:
        validate_run(self)
        if self.task == "regression":
            object.__setattr__(self, "operation", None)
            object.__setattr__(self, "modulus", None)
        object.__setattr__(self, "frac", float(self.frac))
        object.__setattr__(self, "lr", float(self.lr))
        object.__setattr__(self, "weight_decay", float(self.weight_decay))
        object.__setattr__(self, "probes", tuple(sorted((str(k), int(v)) for k, v in dict(self.probes).items())))

    def hashed_dict(self) -> dict:
        """The fields that determine the run's numbers (device and threads excluded)."""
        d = asdict(self)
        for k in _UNHASHED:
            d.pop(k)
        d["probes"] = [list(p) for p in self.probes]
        return d

    @property
    def key(self) -> str:
        """Stable 16-hex-digit hash of the canonical JSON of :meth:`hashed_dict`."""
        blob = json.dumps(self.hashed_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        """Short human-readable name, e.g. ``add p97 f0.70 s42``."""
        if self.task == "regression":
            return f"regression f{self.frac:.2f} s{self.seed}"
        return f"{self.operation} p{self.modulus} f{self.frac:.2f} s{self.seed}"

    @property
    def shape(self) -> tuple:
        """Runs with equal shape can be stacked and stepped together by the batched engine."""
        return (self.task, self.modulus, self.width, self.operation == "div")

    def replace(self, **changes) -> "RunConfig":
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d.update(changes)
        return RunConfig(**d)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{unknown[0]}: unknown key; allowed keys: {sorted(known)}")
        d = dict(d)
        if "probes" in d and d["probes"] is not None:
            d["probes"] = tuple(tuple(p) for p in (d["probes"].items() if isinstance(d["probes"], dict) else d["probes"]))
        return cls(**d)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def validate_run(c: RunConfig) -> None:
    """Raise :class:`ConfigError` for the first invalid field, naming it and its allowed range."""
    _check(c.task in TASKS, "task", c.task, f"one of {list(TASKS)}")
    if c.task == "modular":
        _check(c.operation in OPERATIONS, "operation", c.operation, f"one of {list(OPERATIONS)}")
        _check(_is_int(c.modulus) and c.modulus >= 2, "modulus", c.modulus, "an integer >= 2")
        if c.operation == "div":
            _check(is_prime(c.modulus), "modulus", c.modulus, "a prime (div needs every nonzero b invertible)")
    _check(_is_num(c.frac) and 0.0 < c.frac < 1.0, "frac", c.frac, "a number in the open interval (0, 1)")
    if _is_num(c.frac) and 0.0 < c.frac < 1.0 and (c.task == "regression" or _is_int(c.modulus)):
        n_total = 2000 if c.task == "regression" else c.modulus * (c.modulus - (c.operation == "div"))
        n_train = int(n_total * c.frac)
        _check(0 < n_train < n_total, "frac", c.frac,
               f"a fraction leaving at least one train and one test example of the {n_total}")
    _check(_is_int(c.seed) and c.seed >= 0, "seed", c.seed, "an integer >= 0")
    _check(_is_int(c.epochs) and c.epochs > 0, "epochs", c.epochs, "an integer > 0")
    _check(_is_num(c.lr) and c.lr > 0, "lr", c.lr, "a number > 0")
    _check(_is_num(c.weight_decay) and c.weight_decay >= 0, "weight_decay", c.weight_decay, "a number >= 0")
    _check(_is_int(c.width) and c.width > 0, "width", c.width, "an integer > 0")
    _check(_is_int(c.record_every) and c.record_every >= 1, "record_every", c.record_every, "an integer >= 1")
    _check(c.engine in ENGINES, "engine", c.engine, f"one of {list(ENGINES)}")
    _check(isinstance(c.device, str) and c.device != "", "device", c.device, "a torch device string such as 'cpu' or 'cuda:0'")
    _check(_is_int(c.threads) and c.threads >= 0, "threads", c.threads, "an integer >= 0 (0 = torch's default)")
