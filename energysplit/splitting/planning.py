"""One growth step's plan: the selector's neurons under the step budget (:func:`plan_step`), topped up by the
others in lambda / T order when the step fills the budget (:func:`fill_blocks`), and cut to the step's
limit by exact re-costing (:func:`fit_plan`). Used by the growth loop (:mod:`.growth`). The selection covers
``overselect`` x the step's headroom and the cut decides, so the plan lists the chosen blocks in the
selector's own order (lambda / T; lambda alone for cost-blind): sorted by lambda / T, a cost-blind
selection would be cut like an energy-aware one."""
from __future__ import annotations

import copy
import math
from itertools import accumulate

from torch import nn

from ..graph.inventory import Inventory
from ..graph.plan import Plan


def fit_plan(model: nn.Module, inventory: Inventory, ops: list, estimator, input_shape, limit: float,
             block_sizes: list[int] | None = None):
    """The longest prefix of ``ops`` (best first) whose applied cost stays within ``limit``, cut only
    between blocks when ``block_sizes`` (consecutive ops that go together) is given. Marginal costs are
    first-order (splitting a layer and its consumer adds a cross term): the applied plan is costed exactly
    (``estimator.predict`` on a copy) and trimmed by bisection."""
    from ..graph.surgery import apply_plan_

    cuts = [0] + list(accumulate(block_sizes or [1] * len(ops)))
    if cuts[-1] != len(ops):
        raise ValueError(f"block sizes add up to {cuts[-1]}, not to the {len(ops)} ops")

    def cost_of(k: int) -> float:
        trial = copy.deepcopy(model)
        apply_plan_(trial, inventory, Plan(ops[:cuts[k]]))
        return estimator.predict(trial, input_shape).total

    lo, hi = 0, len(cuts) - 1
    if hi and cost_of(hi) <= limit:
        return ops
    while lo < hi - 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if cost_of(mid) <= limit else (lo, mid)
    return ops[:cuts[lo]]


def plan_step(scores, costs: dict[str, float], step_budget: float, config,
              widths: dict[str, int], caps: dict[str, int] | None = None, step: int = 1,
              fill: bool = False, blocks: dict[str, int] | None = None) -> tuple[list, list[int]]:
    """One growth step's split ops under ``step_budget`` (:func:`~.selection.select_splits` with the
    growth config, a :class:`~.growth.GrowConfig`; ``random``: :func:`~.selection.random_selection`, any lambda), best block first, then
    with ``fill`` :func:`fill_blocks`; and the block sizes (all 1 without a channel multiple or ``blocks``,
    ``{group: G}`` for groups a grouped conv cuts into G blocks, which grow by units of G)."""
    from .selection import Selection, random_selection, ranked_by, select_splits

    if config.selector == "random":  # random order kept: a trimmed plan drops random blocks
        selection = random_selection(scores, costs, step_budget, seed=config.seed * 1000 + step, caps=caps,
                                     eps=config.eps, multiple=config.channel_multiple, widths=widths, blocks=blocks)
    else:
        selection = select_splits(scores, costs, step_budget, config.selector, eps=config.eps, caps=caps,
                                  threshold=config.threshold, multiple=config.channel_multiple, widths=widths,
                                  blocks=blocks, pad_blocks=config.pad_blocks)
        # best first, by the selector's own criterion (fit_plan keeps a prefix)
        selection.chosen.sort(key=lambda c: (getattr(c, ranked_by(config.selector)), c.eigval, c.ratio))
    if fill and config.selector != "random":
        more = fill_blocks(scores, costs, step_budget - selection.cost_used, config.channel_multiple, widths, caps,
                           selection.neurons(), blocks, by=ranked_by(config.selector))
        selection = Selection(selection.chosen + more, step_budget, config.eps, "fill")
    return list(selection.to_plan(scores).ops), [c.size for c in selection.chosen]


def fill_blocks(scores, costs: dict[str, float], budget: float, multiple: int, widths: dict[str, int],
                caps: dict[str, int] | None = None, chosen=(), blocks: dict[str, int] | None = None,
                by: str = "ratio") -> list:
    """The neurons of the scored groups not in ``chosen``, whatever their lambda, as blocks keeping the
    widths multiples (after the chosen ones; units of one neuron per block in groups cut into ``blocks``),
    in lambda / T order (``by="eigval"``: lambda order, for the cost-blind selector; a group's blocks stay
    in order), within the caps, until their marginal costs pass ``budget`` (one block more: :func:`fit_plan`
    cuts the list)."""
    from .selection import Candidate, aligned_blocks, unit_candidates

    taken = {(c.group, c.channel) for c in chosen}
    counts = {g: sum(c.group == g for c in chosen) for g in scores}
    pool = [Candidate(g, k, lam, float(costs[g])) for g, s in scores.items() if math.isfinite(costs[g])
            for k, lam in enumerate(s.eigvals.tolist()) if (g, k) not in taken]
    grown = {g: widths[g] + counts[g] for g in scores}
    ranked = aligned_blocks(unit_candidates(pool, widths, blocks) if blocks else pool, grown, multiple)
    key, worst = {}, {}
    for j, b in enumerate(ranked):  # a group's blocks come in order: its keys never decrease
        worst[b.group] = max(worst.get(b.group, -math.inf), getattr(b, by))
        key[id(b)] = (worst[b.group], b.group, j)
    ranked.sort(key=lambda b: key[id(b)])
    out, used = [], 0.0
    for b in ranked:
        if used <= budget and counts[b.group] + b.size <= (caps or {}).get(b.group, math.inf):
            out.append(b)
            used, counts[b.group] = used + b.cost, counts[b.group] + b.size
    return out
