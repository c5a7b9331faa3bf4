"""What every compression method shares: the registry, the context it runs in (data, target, budget, one
fine-tuning budget), and the training and pruning calls every method makes (every training run is
reported to ``MethodContext.on_train``)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from torch import nn

from ..training.data import DataSplits
from .._registry import Registry
from ..training.loop import TrainConfig, train

METHODS = Registry("method")


@dataclass
class MethodContext:
    """What every method gets: data, the target's estimator, the budget in its unit, and the recipe."""

    data: DataSplits
    estimator: object
    budget: float
    train: TrainConfig  # the total fine-tuning budget: train.epochs is shared by all of a method's phases
    arch: dict = field(default_factory=dict)  # how to rebuild the model (for uniform-scratch and archives)
    seed: int = 0
    prune_min_fraction: float = 0.1
    channel_multiple: int = 1  # every changed width stays a multiple of this (:mod:`energysplit.graph.alignment`)
    cost_aware: bool = False  # pruners rank channels by importance / the target's saving
    score_batches: int = 8
    workdir: Path | None = None  # checkpoints (splitting)
    resume: bool = False
    log: Callable[[str], None] = print
    records: dict = field(default_factory=dict)  # what a method reports back (e.g. its growth steps)
    on_train: Callable | None = None  # on_train(desc, model, TrainResult) after every training run

    @property
    def input_shape(self):
        return self.data.input_shape


def train_model(model: nn.Module, ctx: MethodContext, config: TrainConfig, desc: str, **kwargs):
    """:func:`~energysplit.training.loop.train` on the context's data, reported to ``ctx.on_train``."""
    result = train(model, ctx.data.train, config, desc=desc, **kwargs)
    if ctx.on_train is not None:
        ctx.on_train(desc, model, result)
    return result


def finetune(model: nn.Module, ctx: MethodContext, epochs: float, desc: str = "fine-tune"):
    """``epochs`` of the context's recipe and seed (a method's fine-tune), validated after."""
    if epochs <= 0:
        return None
    return train_model(model, ctx, replace(ctx.train, epochs=epochs, seed=ctx.seed), desc, val=ctx.data.val)


def prune_to_budget(model, ctx: MethodContext, criterion: str, budget: float | None = None, best_effort: bool = False,
                    keep: frozenset = frozenset()):
    """Prune ``model`` in place by ``criterion`` to ``budget`` (the context's by default) with the context's
    pruning settings (Taylor scores on the context's scoring batches); returns the prune result."""
    from ..pruning.prune import PruneConfig, prune_

    cfg = PruneConfig(min_fraction=ctx.prune_min_fraction, cost_aware=ctx.cost_aware,
                      channel_multiple=ctx.channel_multiple, best_effort=best_effort, keep=keep)
    batches = _taylor_batches(ctx) if criterion == "taylor" else None
    result = prune_(model, ctx.estimator, ctx.budget if budget is None else budget, ctx.input_shape, criterion,
                    batches, cfg, ctx.seed)
    ctx.log(f"pruned {sum(result.removed.values())} channels in {result.rounds} rounds: "
            f"{result.start_cost:.4g} -> {result.final_cost:.4g} {result.unit}")
    return result


def _taylor_batches(ctx: MethodContext):
    from ..splitting.growth import scoring_batches

    return scoring_batches(ctx.data, 64 * ctx.score_batches, 64, ctx.seed)
