"""Progress bars that work in terminals and notebooks and stay quiet under CI=true."""
from __future__ import annotations

import os

from tqdm.auto import tqdm


def quiet() -> bool:
    """True where progress output would only be noise (CI, or PHASELIB_QUIET set)."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes") or bool(os.environ.get("PHASELIB_QUIET"))


def bar(total: int, desc: str, *, enabled: bool = True, unit: str = "it", leave: bool = False) -> tqdm:
    """A tqdm bar, disabled when :func:`quiet` or not ``enabled``."""
    return tqdm(total=total, desc=desc, unit=unit, leave=leave, disable=quiet() or not enabled, dynamic_ncols=True)
