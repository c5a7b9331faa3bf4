"""Energy-aware selection of the neurons to split (Wang et al. 2019, arXiv 1910.03103, section 4).

    minimise   sum_i beta_i lambda_i
    subject to sum_i beta_i T_i <= budget,   sum_{i in group l} beta_i <= cap_l,   0 <= beta_i <= 1

lambda_i is neuron i's minimum splitting eigenvalue and T_i the cost of one more channel in its group,
in the target estimator's own units. Only neurons with lambda_i < 0 are candidates (a split with
lambda >= 0 cannot lower the loss at second order), so a step may use less than its budget; the
:class:`Selection` says how much it used and why it stopped. Selectors, by name in ``SELECTORS``:

- ``lp``: the relaxed LP (``scipy.optimize.linprog``, method ``highs``); split where beta >= threshold,
  then repair to the budget (drop the lowest-beta picks if rounding up overshoots) and fill what is left
  in ratio order. With a single budget row this equals ``greedy`` (the LP optimum is the ratio-ordered
  prefix plus one fractional item).
- ``greedy``: Dantzig's order, lambda_i / T_i most negative first (free or cost-saving neurons first),
  skipping neurons that no longer fit.
- ``cost-blind``: most negative lambda first, ignoring cost except for the same budget (ablation; the
  k most negative lambda of S2D, Liu et al. 2019, under the same cost per step).

:func:`random_selection` (``GrowConfig.selector = "random"``, not in ``SELECTORS``: it ignores lambda, so no
selector contract holds for it) picks random neurons of any lambda under the same budget: the control
that tells whether the splitting index carries signal.

With ``multiple = m > 1`` (:mod:`energysplit.graph.alignment`) the items are blocks instead of neurons: each
group's negative-lambda neurons, most negative first, cut into blocks that keep its width a multiple of m
(value = sum of lambda, cost = sum of T); a group's chosen blocks are always its first ones.

A group that a grouped conv cuts into G blocks (``Group.blocks``) grows by **units** of G neurons, one
per block (:func:`energysplit.graph.alignment.block_units`: the k-th most negative lambda of every block),
so every block keeps the same width and the conv its group count: value = sum of lambda, cost = sum of T.
Such a group's width changes by G per unit and is not re-aligned to the channel multiple.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from ..errors import BudgetError, ConfigError
from ..graph.plan import Plan, Split
from .._registry import Registry

SELECTORS = Registry("selector")
TOLERANCE = 1e-9  # relative slack on the budget, for floating-point sums only


@dataclass(frozen=True)
class Candidate:
    group: str
    channel: int
    eigval: float
    cost: float
    members: tuple = ()  # a block of neurons (channel multiples): its Candidates; () for one neuron

    @property
    def size(self) -> int:
        return len(self.members) or 1

    def neurons(self) -> tuple:
        return self.members or (self,)

    @property
    def ratio(self) -> float:
        """lambda / T, most negative = best value per unit cost; free (T <= 0) neurons come first."""
        return -math.inf if self.cost <= 0 else self.eigval / self.cost


@dataclass
class Selection:
    """The chosen neurons and the step's accounting (costs in the estimator's units)."""

    chosen: list[Candidate]
    budget: float
    eps: float
    selector: str
    note: str = ""
    lp_objective: float | None = None  # relaxed LP optimum sum beta_i lambda_i (lp only)
    candidates: int = 0
    caps: dict = field(default_factory=dict)

    def neurons(self) -> list[Candidate]:
        """The chosen neurons (blocks expanded), in the order chosen."""
        return [n for c in self.chosen for n in c.neurons()]

    @property
    def cost_used(self) -> float:
        return sum(c.cost for c in self.chosen)

    @property
    def objective(self) -> float:
        """sum of the chosen lambda_min (the LP's objective at the rounded solution)."""
        return sum(c.eigval for c in self.chosen)

    @property
    def predicted_change(self) -> float:
        """Second-order loss change of splitting all chosen neurons: (eps^2 / 2) * sum lambda (< 0)."""
        return 0.5 * self.eps ** 2 * self.objective

    @property
    def under_budget(self) -> bool:
        return self.cost_used < self.budget * (1 - 1e-6)

    def to_plan(self, scores) -> Plan:
        """Split(group, channel, direction = unit eigenvector, eps) for every chosen neuron."""
        ops = []
        for c in self.neurons():
            v = scores[c.group].eigvecs[c.channel].detach()
            ops.append(Split(c.group, c.channel, v / v.norm(), float(self.eps)))
        return Plan(ops)

    def rows(self) -> list[dict]:
        return [asdict(c) for c in self.neurons()]

    def summary(self) -> dict:
        return {"selector": self.selector, "chosen": len(self.neurons()), "candidates": self.candidates,
                "budget": self.budget, "cost_used": self.cost_used, "under_budget": self.under_budget,
                "predicted_loss_change": self.predicted_change, "eps": self.eps, "note": self.note}


def candidates(scores, costs: dict[str, float], negative: bool = True) -> list[Candidate]:
    """Every neuron with lambda_min < 0 (``negative=False``: every neuron) of the scored groups (those without
    a cost are an error)."""
    missing = [g for g in scores if g not in costs]
    if missing:
        raise BudgetError(f"no cost for group(s) {', '.join(missing)}; the estimator must cost every scored group")
    out = []
    for gid, s in scores.items():
        cost = float(costs[gid])
        if not math.isfinite(cost):
            raise BudgetError(f"cost of group {gid} is {cost}; costs must be finite numbers")
        for k, lam in enumerate(s.eigvals.tolist()):
            if lam < 0 or not negative:
                out.append(Candidate(gid, k, lam, cost))
    return out


def _by_group(pool: list[Candidate]) -> dict[str, list[Candidate]]:
    by_group: dict[str, list[Candidate]] = {}
    for c in pool:
        by_group.setdefault(c.group, []).append(c)
    return by_group


def unit_candidates(pool: list[Candidate], widths: dict[str, int], blocks: dict[str, int],
                    ranked: bool = True) -> list[Candidate]:
    """The candidates of groups cut into ``blocks[g] > 1`` blocks as units of one neuron per block (the
    k-th most negative lambda of every block when ``ranked``, else the given order); others unchanged."""
    from ..graph.alignment import block_units

    out = [c for c in pool if blocks.get(c.group, 1) <= 1]
    for gid, members in _by_group([c for c in pool if blocks.get(c.group, 1) > 1]).items():
        if ranked:
            members.sort(key=lambda c: (c.eigval, c.channel))
        index = {c.channel: c for c in members}
        for unit in block_units([c.channel for c in members], widths[gid], blocks[gid]):
            cs = [index[k] for k in unit]
            out.append(Candidate(gid, cs[0].channel, sum(c.eigval for c in cs), sum(c.cost for c in cs), tuple(cs)))
    return out


def aligned_blocks(pool: list[Candidate], widths: dict[str, int], multiple: int,
                   ranked: bool = True) -> list[Candidate]:
    """Each group's candidates, most negative lambda first (``ranked``; else in the given order), as blocks
    keeping its width a multiple (units of a group cut into blocks pass unchanged)."""
    from ..graph.alignment import blocks

    out = [c for c in pool if c.members]
    for gid, members in _by_group([c for c in pool if not c.members]).items():
        if ranked:
            members.sort(key=lambda c: (c.eigval, c.channel))
        for block in blocks(members, widths[gid], multiple, grow=True):
            out.append(Candidate(gid, block[0].channel, sum(c.eigval for c in block), sum(c.cost for c in block),
                                 tuple(block)))
    return out


def _first_blocks(chosen: list[Candidate], pool: list[Candidate], only: set | None = None) -> list[Candidate]:
    """Replace each group's chosen blocks by as many of its first blocks (no dearer: the first block of
    a group is its smallest, the others are equal; no worse: they hold its most negative lambdas).
    ``only``: regroup these groups only (units of grouped-conv groups), keep the other choices."""
    counts: dict[str, int] = {}
    for c in chosen:
        if only is None or c.group in only:
            counts[c.group] = counts.get(c.group, 0) + 1
    out, seen = [c for c in chosen if c.group not in counts], dict.fromkeys(counts, 0)
    for c in pool:  # pool keeps each group's blocks in order
        if seen.get(c.group, 0) < counts.get(c.group, 0):
            out.append(c)
            seen[c.group] += 1
    return sorted(out, key=lambda c: (c.ratio, c.eigval, c.group, c.channel))


def select_splits(scores, costs: dict[str, float], budget: float, method: str = "lp", *,
                  caps: dict[str, int] | None = None, eps: float = 1e-2, threshold: float = 0.9,
                  multiple: int = 1, widths: dict[str, int] | None = None,
                  blocks: dict[str, int] | None = None, pad_blocks: bool = False) -> Selection:
    """Choose neurons to split under ``budget`` (same units as ``costs``: one more channel per group).

    scores: ``{group: GroupScores}`` from :func:`energysplit.splitting_scores`; caps: optional
    ``{group: max channels split this step}``; eps: the split step (reported in the predicted change and
    used by :meth:`Selection.to_plan`); threshold: LP beta above which a neuron is split; multiple: split
    in blocks that keep every changed width a multiple of it (needs ``widths``, the current group widths);
    blocks: ``{group: G}`` for groups a grouped conv cuts into G blocks (``Group.blocks``; needs ``widths``).
    pad_blocks: with ``multiple > 1``, a group's blocks are cut from all its neurons (most negative lambda
    first) and a block is a candidate when its lambdas sum below zero, so a group with fewer negative
    lambdas than a block (but very negative ones) can still grow; by default blocks hold negative lambdas only.
    """
    if not (isinstance(budget, (int, float)) and math.isfinite(budget)) or budget < 0:
        raise BudgetError(f"step budget must be a finite number >= 0, got {budget!r}")
    if not 0 < threshold <= 1:
        raise ConfigError(f"threshold must be in (0, 1], got {threshold}")
    if eps < 0:
        raise ConfigError(f"eps must be >= 0, got {eps}")
    caps = dict(caps or {})
    if any(int(v) < 0 for v in caps.values()):
        raise ConfigError("caps must be >= 0")
    pool = candidates(scores, costs, negative=not (pad_blocks and multiple > 1))
    if (multiple > 1 or blocks) and widths is None:
        raise ValueError("select_splits(multiple > 1 or blocks) needs the current group widths")
    if blocks:
        pool = unit_candidates(pool, widths, blocks)
    if multiple > 1:
        pool = [b for b in aligned_blocks(pool, widths, multiple) if b.eigval < 0]
    elif multiple < 1:
        raise ConfigError(f"multiple must be >= 1, got {multiple}")
    chosen, lp_value = SELECTORS.get(method)(pool, float(budget), caps, threshold)
    if multiple > 1 or blocks:
        chosen = _first_blocks(chosen, pool, None if multiple > 1 else set(blocks))
    sel = Selection(chosen, float(budget), float(eps), method, lp_objective=lp_value, candidates=len(pool),
                    caps=caps)
    sel.note = _why(sel, pool, caps)
    return sel


def random_selection(scores, costs: dict[str, float], budget: float, *, seed: int = 0, caps: dict | None = None,
                     eps: float = 1e-2, multiple: int = 1, widths: dict[str, int] | None = None,
                     blocks: dict[str, int] | None = None) -> Selection:
    """Random neurons of the scored groups, whatever their lambda, under the same ``budget`` (and caps and
    blocks) as :func:`select_splits`: the control for the splitting index. Reproducible from ``seed``."""
    import random

    if not (isinstance(budget, (int, float)) and math.isfinite(budget)) or budget < 0:
        raise BudgetError(f"step budget must be a finite number >= 0, got {budget!r}")
    caps, rng = dict(caps or {}), random.Random(seed)
    pool = [Candidate(gid, k, float(lam), float(costs[gid])) for gid, s in scores.items()
            for k, lam in enumerate(s.eigvals.tolist())]
    rng.shuffle(pool)
    if (multiple > 1 or blocks) and widths is None:
        raise ValueError("random_selection(multiple > 1 or blocks) needs the current group widths")
    if blocks:
        pool = unit_candidates(pool, widths, blocks, ranked=False)
    if multiple > 1:
        pool = aligned_blocks(pool, widths, multiple, ranked=False)
    order = list(pool)
    rng.shuffle(order)
    chosen = _take_in_order(order, float(budget), caps)
    if multiple > 1 or blocks:
        chosen = _first_blocks(chosen, pool, None if multiple > 1 else set(blocks))
        rng.shuffle(chosen)  # no order by lambda: a trimmed plan drops random blocks
    sel = Selection(chosen, float(budget), float(eps), "random", candidates=len(pool), caps=caps)
    sel.note = "random neurons (control)"
    return sel


def ranked_by(selector: str) -> str:
    """The :class:`Candidate` attribute a selector ranks by, best (lowest) first: ``eigval`` for cost-blind,
    ``ratio`` (lambda / T) for the energy-aware selectors."""
    return "eigval" if selector == "cost-blind" else "ratio"


def _fits(c: Candidate, used: float, budget: float, counts: dict, caps: dict) -> bool:
    within = used + c.cost <= budget + TOLERANCE * max(1.0, abs(budget))
    return within and counts.get(c.group, 0) + c.size <= caps.get(c.group, math.inf)


def _take_in_order(order, budget, caps, chosen=()) -> list[Candidate]:
    chosen = list(chosen)
    used = sum(c.cost for c in chosen)
    counts: dict[str, int] = {}
    for c in chosen:
        counts[c.group] = counts.get(c.group, 0) + c.size
    taken = set(chosen)
    for c in order:
        if c not in taken and _fits(c, used, budget, counts, caps):
            chosen.append(c)
            taken.add(c)
            used += c.cost
            counts[c.group] = counts.get(c.group, 0) + c.size
    return chosen


@SELECTORS.register("greedy")
def greedy(pool, budget, caps, threshold):
    """Dantzig: by lambda / T ascending; ties broken by lambda, then (group, channel)."""
    order = sorted(pool, key=lambda c: (c.ratio, c.eigval, c.group, c.channel))
    return _take_in_order(order, budget, caps), None


@SELECTORS.register("cost-blind")
def cost_blind(pool, budget, caps, threshold):
    """Most negative lambda first, cost ignored in the order (still within the same budget)."""
    order = sorted(pool, key=lambda c: (c.eigval, c.group, c.channel))
    return _take_in_order(order, budget, caps), None


@SELECTORS.register("lp")
def linear_program(pool, budget, caps, threshold):
    """Relaxed LP with HiGHS, threshold, repair to the budget, fill in ratio order."""
    if not pool:
        return [], 0.0
    import numpy as np
    from scipy.optimize import linprog

    groups = sorted({c.group for c in pool if c.group in caps})
    rows = [[c.cost for c in pool]] + [[float(c.size) if c.group == g else 0.0 for c in pool] for g in groups]
    bounds = [budget] + [float(caps[g]) for g in groups]
    res = linprog(np.array([c.eigval for c in pool]), A_ub=np.array(rows), b_ub=np.array(bounds),
                  bounds=(0.0, 1.0), method="highs")
    if res.status != 0:
        raise BudgetError(f"the selection LP failed: {res.message}")
    beta = res.x
    picked = sorted((i for i in range(len(pool)) if beta[i] >= threshold), key=lambda i: -beta[i])
    chosen = _take_in_order([pool[i] for i in picked], budget, caps)  # drops the lowest beta on overshoot
    order = sorted(pool, key=lambda c: (c.ratio, c.eigval, c.group, c.channel))
    return _take_in_order(order, budget, caps, chosen), float(res.fun)


def _why(sel: Selection, pool: list[Candidate], caps: dict) -> str:
    if not sel.under_budget:
        return "budget used"
    if not pool:
        return "no neuron has lambda_min < 0: no split can lower the loss at second order"
    rest = [c for c in pool if c not in set(sel.chosen)]
    if not rest:
        return f"all {len(pool)} neurons with lambda_min < 0 chosen; the rest would not lower the loss"
    counts: dict[str, int] = {}
    for c in sel.chosen:
        counts[c.group] = counts.get(c.group, 0) + c.size
    capped = sorted({c.group for c in rest if counts.get(c.group, 0) + c.size > caps.get(c.group, math.inf)})
    left = sel.budget - sel.cost_used
    cheapest = min((c.cost for c in rest if c.group not in capped), default=None)
    parts = []
    if cheapest is not None:
        parts.append(f"the cheapest remaining candidate costs {cheapest:.6g} > leftover {left:.6g}")
    if capped:
        parts.append(f"per-group caps reached for {', '.join(capped)}")
    return "; ".join(parts)
