"""Budgets in the user's unit: ``2.5mJ``, ``0.4ms``, ``120M`` (MACs), ``1.2GFLOPs``, or a fraction ``0.5``."""
from __future__ import annotations

import re

from .errors import BudgetError

# unit -> (canonical unit, factor to it)
_UNITS = {
    "j": ("mJ", 1e3), "mj": ("mJ", 1.0), "uj": ("mJ", 1e-3), "nj": ("mJ", 1e-6),
    "s": ("ms", 1e3), "ms": ("ms", 1.0), "us": ("ms", 1e-3),
    "macs": ("MACs", 1.0), "mac": ("MACs", 1.0), "flops": ("MACs", 0.5), "flop": ("MACs", 0.5), "": ("MACs", 1.0),
}
_SCALE = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_budget(text: str | float, unit: str, base_cost: float) -> float:
    """The budget in ``unit`` (the target's). A bare number in (0, 1] is a fraction of ``base_cost``.

    MAC counts take K/M/G prefixes (``120M``); FLOPs are converted to MACs (1 MAC = 2 FLOPs).
    """
    if isinstance(text, (int, float)):
        text = repr(float(text))
    match = _PATTERN.match(text)
    if not match:
        raise BudgetError(f"cannot read budget {text!r}; write e.g. 0.5 (fraction), 2.5mJ, 0.4ms or 120M (MACs)")
    value, suffix = float(match.group(1)), match.group(2)
    if not suffix and 0 < value <= 1:
        return value * base_cost
    low = suffix.lower()
    scale = 1.0
    if low not in _UNITS and low[:1] in _SCALE and low[1:] in ("", "macs", "mac", "flops", "flop"):
        scale, low = _SCALE[low[:1]], low[1:]
    if low not in _UNITS:
        raise BudgetError(f"unknown budget unit {suffix!r}; use mJ, J, ms, us, MACs (K/M/G) or FLOPs")
    canonical, factor = _UNITS[low]
    if canonical != unit:
        raise BudgetError(f"budget {text!r} is in {canonical} but the target measures {unit}; "
                          f"give the budget in {unit} or as a fraction like 0.5")
    if value <= 0:
        raise BudgetError(f"budget must be positive, got {text!r}")
    return value * scale * factor
