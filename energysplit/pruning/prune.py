"""Prune a network down to a budget in the target's units, by any channel-importance criterion.

Global ranking across layers (importance normalised per group, optionally divided by the channel's
saving for a cost-aware order), per-group minimum widths, and rounds that refresh the target's marginal
savings so the final cost lands within one channel's saving under the budget.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..cost.budget import MIN_CHANNELS
from ..errors import BudgetError, ConfigError
from ..graph.inventory import Inventory
from ..graph.plan import Plan, Remove
from ..graph.surgery import apply_plan_


@dataclass(frozen=True)
class PruneConfig:
    min_fraction: float = 0.1  # every group keeps at least this fraction of its starting width
    min_channels: int = MIN_CHANNELS  # the floor budget checks assume (cost.budget)
    cost_aware: bool = False  # rank by importance / saving instead of importance
    max_rounds: int = 50
    channel_multiple: int = 1  # remove channels in blocks that keep widths multiples of this (:mod:`.alignment`)
    best_effort: bool = False  # stop at the cheapest reachable model instead of raising BudgetError
    keep: frozenset = frozenset()  # ids of groups left at their width

    def __post_init__(self):
        if not 0 <= self.min_fraction <= 1 or self.min_channels < 1:
            raise ConfigError("min_fraction must be in [0, 1] and min_channels >= 1")
        if self.channel_multiple < 1:
            raise ConfigError(f"channel_multiple must be >= 1, got {self.channel_multiple}")


@dataclass
class PruneResult:
    start_cost: float
    final_cost: float
    budget: float
    unit: str
    removed: dict[str, int]
    rounds: int


def min_widths(inventory: Inventory, config: PruneConfig) -> dict[str, int]:
    return {g.id: min(g.width, max(config.min_channels, math.ceil(config.min_fraction * g.width)))
            for g in inventory}


def removal_units(score: torch.Tensor, group, floor: int, multiple: int) -> list[list[int]]:
    """The channels of ``group`` that may go, least important first, in the units that are removed together:
    aligned blocks of ``multiple``, or, where a grouped conv cuts the group into blocks (``group.blocks``),
    one channel of every block (each keeps at least 2 channels, or the conv would turn depthwise)."""
    from ..graph.alignment import block_units, blocks

    order = score.argsort(stable=True).tolist()
    if group.blocks > 1:
        per_block = group.width // group.blocks
        keep = max(2, math.ceil(floor / group.blocks))
        return block_units(order, group.width, group.blocks)[: max(0, per_block - keep)]
    return blocks(order[: group.width - floor], group.width, multiple, grow=False)


def prune_to_budget_(model: nn.Module, inventory: Inventory, estimator, budget: float, input_shape,
                     importance: dict[str, torch.Tensor], config: PruneConfig = PruneConfig(),
                     floor: dict[str, int] | None = None) -> tuple[Inventory, PruneResult]:
    """Remove the least important channels until ``estimator.predict`` is at most ``budget``.

    ``importance`` maps prunable group ids to per-channel scores (higher = keep); it is consumed.
    With ``config.channel_multiple = m`` channels go in blocks (ranked by their mean score) that leave
    every changed width a multiple of m, so the cost lands within one block's saving under the budget.
    Raises BudgetError when the minimum widths cannot reach the budget (with ``config.best_effort``,
    stops there instead: the result's ``final_cost`` is then above ``budget``).
    """
    from ..cost.estimator import marginal_costs_of

    floor = floor or min_widths(inventory, config)
    floor = {**floor, **{g: inventory[g].width for g in config.keep if g in inventory.groups}}
    scores = {k: v.clone().double() for k, v in importance.items()}
    start = cost = estimator.predict(model, input_shape).total
    removed: dict[str, int] = {}
    rounds = 0
    while cost > budget:
        if rounds >= config.max_rounds:
            raise BudgetError(f"pruning did not converge to {budget:.4g} {estimator.unit} in {rounds} rounds")
        rounds += 1
        saving = marginal_costs_of(estimator, model, inventory, input_shape, config.channel_multiple)
        candidates = []
        for gid, score in scores.items():
            group = inventory[gid]
            s = saving[gid].remove
            if group.width <= floor[gid] or not (s > 0):
                continue
            for j, block in enumerate(removal_units(score, group, floor[gid], config.channel_multiple)):
                key = float(score[block].mean()) / (s if config.cost_aware else 1.0)
                candidates.append((key, gid, j, block, s * len(block)))
        if not candidates:
            if config.best_effort:
                break
            raise BudgetError(f"budget {budget:.4g} {estimator.unit} is unreachable by pruning: at {cost:.4g} "
                              f"{estimator.unit} every group is at its minimum width or no single channel removal "
                              "lowers the cost any more; raise the budget"
                              + (f" or lower the channel multiple ({config.channel_multiple})"
                                 if config.channel_multiple > 1 else ""))
        candidates.sort(key=lambda c: c[:3])
        chosen: dict[str, list[int]] = {}
        excess = cost - budget
        for _, gid, _, block, s in candidates:
            if excess <= 0:
                break
            chosen.setdefault(gid, []).extend(block)
            excess -= s
        plan = Plan([Remove(gid, tuple(sorted(chs))) for gid, chs in chosen.items()])
        inventory = apply_plan_(model, inventory, plan)
        for gid, chs in chosen.items():
            keep = torch.ones(len(scores[gid]), dtype=torch.bool)
            keep[chs] = False
            scores[gid] = scores[gid][keep]
            removed[gid] = removed.get(gid, 0) + len(chs)
        cost = estimator.predict(model, input_shape).total
    return inventory, PruneResult(start, cost, budget, estimator.unit, removed, rounds)


def prune_(model: nn.Module, target, budget: float, input_shape, criterion: str = "l1", batches=None,
           config: PruneConfig = PruneConfig(), seed: int = 0) -> PruneResult:
    """Prune ``model`` in place to ``budget`` (in the unit of ``target``, a name or an Estimator) by a
    named importance criterion (:data:`~.importance.CRITERIA`; ``taylor`` needs ``batches``), ranking
    channels globally with per-group normalised scores: the pruning baselines' own path."""
    from ..cost.estimator import resolve_estimator
    from ..graph.trace import build_inventory
    from .importance import channel_importance, normalise_per_group

    estimator = resolve_estimator(target)
    inventory = build_inventory(model, input_shape)
    scores = normalise_per_group(channel_importance(criterion, model, inventory, batches, seed))
    return prune_to_budget_(model, inventory, estimator, budget, input_shape, scores, config)[1]
