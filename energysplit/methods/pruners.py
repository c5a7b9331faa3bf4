"""The pruning baselines: L1, Taylor, random, network slimming, uniform width (from the trained weights or
from scratch). Each prunes the trained model to the budget with the shared surgery, then fine-tunes it
with the whole fine-tuning budget."""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

from torch import nn

from ..errors import BudgetError
from .context import METHODS, MethodContext, finetune, prune_to_budget, train_model


def _register_pruner(name: str, doc: str):
    def method(model: nn.Module, ctx: MethodContext) -> nn.Module:
        prune_to_budget(model, ctx, name)
        finetune(model, ctx, ctx.train.epochs)
        return model

    method.__doc__ = doc
    METHODS.register(name, method)


_register_pruner("l1", "L1-norm filter pruning (Li et al., ICLR 2017), global with per-group normalisation.")
_register_pruner("taylor", "First-order Taylor importance (Molchanov et al., CVPR 2019).")
_register_pruner("random", "Random channels (a sanity floor for every criterion).")


@METHODS.register("slimming")
def slimming(model: nn.Module, ctx: MethodContext) -> nn.Module:
    """Network slimming (Liu et al., ICCV 2017): L1 on BN scales for a third of the epochs, prune by
    |gamma|, fine-tune for the rest (the sparsity training counts against the same budget)."""
    from ..graph.trace import build_inventory
    from ..pruning.importance import slimming_penalty

    inventory = build_inventory(model, ctx.input_shape)
    sparse_epochs = ctx.train.epochs / 3
    if sparse_epochs > 0:
        train_model(model, ctx, replace(ctx.train, epochs=sparse_epochs, seed=ctx.seed), "sparsity training",
                    penalty=slimming_penalty(model, inventory))
    prune_to_budget(model, ctx, "slimming")
    finetune(model, ctx, ctx.train.epochs - sparse_epochs)
    return model


def uniform_fraction(model, ctx: MethodContext, resize: Callable[[float], nn.Module]) -> tuple[float, nn.Module]:
    """The largest width fraction f (bisection) whose model ``resize(f)`` fits the budget."""
    return width_fraction(resize, ctx.estimator, ctx.budget, ctx.input_shape)


def width_fraction(resize: Callable[[float], nn.Module], estimator, budget: float, input_shape):
    """(f, resize(f)) for the largest f in (0, 1) (bisection, 14 halvings) whose cost fits ``budget``."""
    lo, hi = 0.0, 1.0
    best = None
    for _ in range(14):
        mid = (lo + hi) / 2
        candidate = resize(mid)
        if estimator.predict(candidate, input_shape).total <= budget:
            lo, best = mid, candidate
        else:
            hi = mid
    if best is None:
        raise BudgetError(f"budget {budget:.4g} {estimator.unit} is unreachable by uniform width scaling")
    return lo, best


def _uniform_drop(group, score, f: float, multiple: int) -> list[int]:
    """The lowest-scored channels a group drops to keep the fraction ``f`` of its width (aligned to the
    channel multiple; in a group a grouped conv cuts into blocks, the same number from every block)."""
    from ..graph.alignment import aligned_width, block_units

    order = score.argsort().tolist()
    if group.blocks > 1:
        per_block = group.width // group.blocks
        keep = min(per_block, max(2, round(f * per_block)))
        return [c for unit in block_units(order, group.width, group.blocks)[: per_block - keep] for c in unit]
    return order[: group.width - aligned_width(max(1, round(f * group.width)), group.width, multiple)]


@METHODS.register("uniform")
def uniform(model: nn.Module, ctx: MethodContext) -> nn.Module:
    """Uniform width scaling from the trained weights: every prunable group keeps the same fraction
    of its channels (its largest-L1 filters; rounded to the channel multiple), then fine-tune."""
    import copy

    from ..graph.trace import build_inventory
    from ..pruning.importance import l1_importance
    from ..graph.plan import Plan, Remove
    from ..graph.surgery import apply_plan_

    inventory = build_inventory(model, ctx.input_shape)
    scores = l1_importance(model, inventory)

    def resize(f: float) -> nn.Module:
        trial = copy.deepcopy(model)
        ops = []
        for g in inventory.prunable():
            drop = _uniform_drop(g, scores[g.id], f, ctx.channel_multiple)
            if drop:
                ops.append(Remove(g.id, tuple(sorted(drop))))
        apply_plan_(trial, inventory, Plan(ops))
        return trial

    f, pruned = uniform_fraction(model, ctx, resize)
    ctx.log(f"uniform width fraction {f:.3f}")
    model = pruned
    finetune(model, ctx, ctx.train.epochs)
    return model


@METHODS.register("uniform-scratch")
def uniform_scratch(model: nn.Module, ctx: MethodContext) -> nn.Module:
    """Uniform width multiplier, trained from scratch with the same epochs (zoo architectures only)."""
    from ..zoo import MODELS, create_model

    name = ctx.arch.get("name")
    if name not in MODELS:
        raise BudgetError("uniform-scratch needs a zoo architecture (--arch)")
    kwargs = {k: v for k, v in ctx.arch.get("kwargs", {}).items() if k != "width"}
    base_width = ctx.arch.get("kwargs", {}).get("width", 1.0)
    f, small = uniform_fraction(model, ctx, lambda f: create_model(name, width=max(f, 1e-3) * base_width, **kwargs))
    ctx.log(f"uniform width multiplier {f * base_width:.3f} from scratch")
    finetune(small, ctx, ctx.train.epochs, desc="train from scratch")
    return small
