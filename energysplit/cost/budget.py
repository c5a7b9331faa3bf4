"""Budgets in the user's unit: ``2.5mJ``, ``0.4ms``, ``120M`` (MACs), ``1.2GFLOPs``, or a fraction ``0.5``.

A value with a unit is converted to the target's unit when both measure the same quantity (energy:
J, mJ, uJ, nJ; time: s, ms, us, ns; work: MACs, FLOPs with 1 MAC = 2 FLOPs, as fvcore and most papers
count a multiply-add). A bare number in (0, 1] is a fraction of the input model's cost.
"""
from __future__ import annotations

import re

from ..errors import BudgetError

# unit (lower case) -> (quantity, value in the quantity's base unit)
_UNITS = {
    "j": ("energy", 1.0), "mj": ("energy", 1e-3), "uj": ("energy", 1e-6), "nj": ("energy", 1e-9),
    "s": ("time", 1.0), "ms": ("time", 1e-3), "us": ("time", 1e-6), "ns": ("time", 1e-9),
    "macs": ("work", 1.0), "mac": ("work", 1.0), "flops": ("work", 0.5), "flop": ("work", 0.5),
}
_COUNTS = ("macs", "mac", "flops", "flop")  # the units that take a K/M/G prefix
_PREFIX = {"k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_NUMBER = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")
_HELP = "write e.g. 0.5 (a fraction of the input model's cost), 2.5mJ, 0.4ms, 120M (MACs) or 1.2GFLOPs"
DEFAULT_BUDGET = "0.5"  # half of the input model's cost on the target
# the fewest channels a pruned group keeps (``PruneConfig.min_channels``): below two a depthwise conv would
# stop being one
MIN_CHANNELS = 2


def _unit(suffix: str) -> tuple[str, float] | None:
    """(quantity, factor to its base unit) of a unit suffix, with K/M/G/T prefixes on MAC/FLOP counts."""
    low = suffix.lower()
    if low == "":
        return "work", 1.0  # a bare count: MACs
    if low in _UNITS:
        return _UNITS[low]
    if low[:1] in _PREFIX and (low[1:] in _COUNTS or low[1:] == ""):
        quantity, factor = _UNITS.get(low[1:], ("work", 1.0))
        return quantity, factor * _PREFIX[low[:1]]
    return None


def parse_budget(text: str | float, unit: str, base_cost: float) -> float:
    """The budget in ``unit`` (the target's). A bare number in (0, 1] is a fraction of ``base_cost``.

    >>> parse_budget("2.5mJ", "mJ", 10.0), parse_budget("0.5", "ms", 3.0), parse_budget("1GFLOPs", "MACs", 1e9)
    (2.5, 1.5, 500000000.0)
    """
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise BudgetError(f"cannot read budget {text!r}; {_HELP}")
    raw = repr(float(text)) if isinstance(text, (int, float)) else text.replace("µ", "u").replace("μ", "u")
    match = _NUMBER.match(raw)
    if not match:
        raise BudgetError(f"cannot read budget {text!r}; {_HELP}")
    value, suffix = float(match.group(1)), match.group(2)
    if not value > 0 or value == float("inf"):
        raise BudgetError(f"budget must be positive, got {text!r}; {_HELP}")
    if not suffix and value <= 1:
        return value * base_cost
    given = _unit(suffix)
    if given is None:
        if suffix.lower() == unit.lower():  # a plugin target's own unit (e.g. "cycles")
            return value
        raise BudgetError(f"unknown budget unit {suffix!r} in {text!r}; use mJ, J, uJ, ms, s, us, MACs (with K/M/G) "
                          f"or FLOPs, or the target's unit {unit}")
    wanted = _unit(unit) if unit.lower() in _UNITS else None
    if wanted is None or wanted[0] != given[0]:
        shown = f"{given[0]} (a bare number above 1 counts MACs)" if not suffix else given[0]
        raise BudgetError(f"budget {text!r} is {shown} but the target measures {unit}; give the budget in "
                          f"{unit} or as a fraction of the input model's cost like 0.5")
    return value * given[1] / wanted[1]


def min_cost(model, estimator, input_shape, keep: int = MIN_CHANNELS) -> float:
    """The cost with ``keep`` channels left in every prunable group (fewer where a group has fewer): the
    pruning floor (:data:`MIN_CHANNELS`, ``PruneConfig.min_channels``)."""
    import copy

    from ..graph.trace import build_inventory
    from ..graph.plan import Plan, Remove
    from ..graph.surgery import apply_plan_

    trial = copy.deepcopy(model)
    inventory = build_inventory(trial, input_shape)
    apply_plan_(trial, inventory, Plan([Remove(g.id, tuple(range(keep, g.width))) for g in inventory.prunable()
                                        if g.width > keep]))
    return estimator.predict(trial, input_shape).total


def check_budget(model, estimator, budget: float, input_shape, where: str = "the target") -> float:
    """Raise BudgetError when ``budget`` is already met or below :func:`min_cost` (splitting's seed may
    sit above its usual fraction of the budget when that is below the floor). Returns the input model's
    cost."""
    unit = estimator.unit
    base_cost = estimator.predict(model, input_shape).total
    if budget >= base_cost:
        raise BudgetError(f"budget {budget:.4g} {unit} is already met: the input model costs {base_cost:.4g} {unit} "
                          f"on {where}; give a smaller budget (e.g. 0.5)")
    floor = min_cost(model, estimator, input_shape)
    if budget < floor:
        raise BudgetError(f"budget {budget:.4g} {unit} is unreachable on {where}: even two channels per layer cost "
                          f"{floor:.4g} {unit}; raise the budget")
    return base_cost
