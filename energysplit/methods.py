"""Compression methods, registered by name: energy-aware splitting and the pruning baselines.

Every method takes the same trained model, data, target and budget, and the same total fine-tuning
budget (``epochs``); they differ only in how they score and select channels. Surgery, fine-tuning and
evaluation are shared, so the comparison is like for like. Every training run goes through
``MethodContext.on_train`` (the benchmarks count epochs and MAC-epochs with it).

:func:`grow_from_seed` is the paper's own setting (no trained model): a small seed of an architecture,
trained from scratch, grown by splitting to the budget (:class:`SeedGrowth`, shared by ``energysplit grow``
and the benchmark's growth protocol).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from torch import nn

from .training.data import DataSplits
from .errors import BudgetError, ConfigError
from ._registry import Registry
from .training.loop import TrainConfig, train

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


def _finetune(model: nn.Module, ctx: MethodContext, epochs: float, desc: str = "fine-tune"):
    if epochs <= 0:
        return None
    return train_model(model, ctx, replace(ctx.train, epochs=epochs, seed=ctx.seed), desc, val=ctx.data.val)


def _prune(model, ctx: MethodContext, criterion: str, budget: float | None = None, best_effort: bool = False,
           keep: frozenset = frozenset()):
    from .pruning.prune import PruneConfig, prune_

    cfg = PruneConfig(min_fraction=ctx.prune_min_fraction, cost_aware=ctx.cost_aware,
                      channel_multiple=ctx.channel_multiple, best_effort=best_effort, keep=keep)
    batches = _taylor_batches(ctx) if criterion == "taylor" else None
    result = prune_(model, ctx.estimator, ctx.budget if budget is None else budget, ctx.input_shape, criterion,
                    batches, cfg, ctx.seed)
    ctx.log(f"pruned {sum(result.removed.values())} channels in {result.rounds} rounds: "
            f"{result.start_cost:.4g} -> {result.final_cost:.4g} {result.unit}")
    return result


def _taylor_batches(ctx: MethodContext):
    from .splitting.growth import scoring_batches

    return scoring_batches(ctx.data, 64 * ctx.score_batches, 64, ctx.seed)


def _register_pruner(name: str, doc: str):
    def method(model: nn.Module, ctx: MethodContext) -> nn.Module:
        _prune(model, ctx, name)
        _finetune(model, ctx, ctx.train.epochs)
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
    from .graph.trace import build_inventory
    from .pruning.importance import slimming_penalty

    inventory = build_inventory(model, ctx.input_shape)
    sparse_epochs = ctx.train.epochs / 3
    if sparse_epochs > 0:
        train_model(model, ctx, replace(ctx.train, epochs=sparse_epochs, seed=ctx.seed), "sparsity training",
                    penalty=slimming_penalty(model, inventory))
    _prune(model, ctx, "slimming")
    _finetune(model, ctx, ctx.train.epochs - sparse_epochs)
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
    from .graph.alignment import aligned_width, block_units

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

    from .graph.trace import build_inventory
    from .pruning.importance import l1_importance
    from .graph.plan import Plan, Remove
    from .graph.surgery import apply_plan_

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
    _finetune(model, ctx, ctx.train.epochs)
    return model


@METHODS.register("uniform-scratch")
def uniform_scratch(model: nn.Module, ctx: MethodContext) -> nn.Module:
    """Uniform width multiplier, trained from scratch with the same epochs (zoo architectures only)."""
    from .zoo import MODELS, create_model

    name = ctx.arch.get("name")
    if name not in MODELS:
        raise BudgetError("uniform-scratch needs a zoo architecture (--arch)")
    kwargs = {k: v for k, v in ctx.arch.get("kwargs", {}).items() if k != "width"}
    base_width = ctx.arch.get("kwargs", {}).get("width", 1.0)
    f, small = uniform_fraction(model, ctx, lambda f: create_model(name, width=max(f, 1e-3) * base_width, **kwargs))
    ctx.log(f"uniform width multiplier {f * base_width:.3f} from scratch")
    _finetune(small, ctx, ctx.train.epochs, desc="train from scratch")
    return small


@METHODS.register("splitting-grow")
def splitting_grow(model: nn.Module, ctx: MethodContext, seed_fraction: float = 0.7, seed_method: str = "taylor",
                   one_schedule: bool = True, grow_options: dict | None = None) -> nn.Module:
    """Seed and grow (the ``splitting`` default until reallocation beat it on validation data, README
    Results): shrink the trained model to a seed costing ``seed_fraction`` of the budget with the strongest
    pruning baseline (Taylor, keeping weights), then grow it back to the budget by energy-aware splitting
    (steps of at most x1.4). Fine-tuning epochs: 30% after seeding, 20% spread over the growth steps, 50%
    final, the same total as every baseline; with ``one_schedule`` the phases follow one learning-rate
    schedule (each covers its part of it, as the baselines' single fine-tune does) instead of restarting
    it. ``grow_options`` as in :func:`splitting`."""
    from .splitting.growth import Checkpoint, GrowConfig, grow

    seed_budget = seed_fraction * ctx.budget
    steps = max(1, math.ceil(math.log(1 / seed_fraction) / math.log(1.4) - 1e-9))
    epochs = ctx.train.epochs

    def phase(share: float, span: tuple) -> TrainConfig:
        return replace(ctx.train, epochs=share * epochs, span=span if one_schedule else (0.0, 1.0))

    resumed = ctx.resume and ctx.workdir is not None and (Path(ctx.workdir) / "model.es").exists()
    if not resumed:
        # the seed's budget can lie below the cheapest model pruning reaches (a latency target's fixed
        # overhead): seed there then, if that is still under the budget, and let the growth do less
        seed_cost = _prune(model, ctx, seed_method, budget=seed_budget, best_effort=True).final_cost
        if seed_cost > ctx.budget:
            raise BudgetError(f"budget {ctx.budget:.4g} {ctx.estimator.unit} is unreachable by pruning: the cheapest "
                              f"seed costs {seed_cost:.4g} {ctx.estimator.unit}; raise the budget or lower the "
                              f"channel multiple ({ctx.channel_multiple})")
        if seed_cost > seed_budget:
            ctx.log(f"seed budget {seed_budget:.4g} {ctx.estimator.unit} is below the cheapest pruned model: seeded "
                    f"at {seed_cost:.4g} ({seed_cost / ctx.budget:.0%} of the budget)")
        if epochs > 0:
            train_model(model, ctx, replace(phase(0.3, (0.0, 0.3)), seed=ctx.seed), "seed fine-tune", val=ctx.data.val)
    config = GrowConfig(step_growth=1.4, max_steps=steps + 2, planned_steps=steps, seed=ctx.seed,
                        channel_multiple=ctx.channel_multiple, finetune=phase(0.2 / steps, (0.3, 0.5)),
                        final_finetune=phase(0.5, (0.5, 1.0)), **(grow_options or {}))
    checkpoint = Checkpoint(ctx.workdir, ctx.arch, ctx.input_shape) if ctx.workdir is not None else None
    result = grow(model, ctx.data, ctx.estimator, ctx.budget, config, checkpoint=checkpoint, resume=resumed,
                  log=ctx.log, on_train=ctx.on_train)
    ctx.log(f"growth stopped: {result.stop_reason}")
    from dataclasses import asdict

    ctx.records["growth_steps"] = [asdict(s) for s in result.steps]
    ctx.records["stop_reason"] = result.stop_reason
    return result.model


@METHODS.register("splitting")
def splitting(model: nn.Module, ctx: MethodContext, rounds: int = 3, delta: float = 0.1,
              grow_options: dict | None = None, recalibrate: int = 20, prune_frozen: bool = False,
              prune_per_cost: bool = True, rounds_share: float | None = None,
              finetune_first: bool = False, judge_images: int = 0) -> nn.Module:
    """Energy-aware splitting for compression (the default method), by reallocation at constant budget:
    Taylor-prune to the budget, then ``rounds`` rounds of {prune ``delta`` of the budget by Taylor
    importance per unit of saving; split the same cost back by energy-aware splitting (LP on lambda / T,
    filled to the budget as the growth's last step does); fine-tune}, then a final fine-tune. The model
    stays at the budget and only moves width between layers.
    Pruning comes first in a round: the offspring of a fresh split are near-copies that each carry half of
    their parent's output weight, so a Taylor ranking right after a split would prune them back. Epochs:
    ``train.epochs`` cut into ``rounds + 1`` equal slices of one learning-rate schedule, the same total as
    every baseline. With ``ctx.workdir`` every finished round is checkpointed, and ``ctx.resume`` continues
    after the last one. ``grow_options``: other :class:`~energysplit.splitting.growth.GrowConfig` fields (the
    ablations' variants). ``recalibrate``: after every pruning, re-estimate the BatchNorm statistics on this
    many training batches (:mod:`energysplit.training.bn_stats`) so that the round's splitting scores see
    the pruned network as it computes, not with its parent's statistics (0: off; 20, the default, was
    chosen on validation data: benchmarks/results/tune-bn-medium-9352f2b). ``prune_frozen=False`` (the
    default, chosen on validation data: benchmarks/results/tune-keep-671b570): a round prunes only groups its
    split can grow back (not the residual streams that growth keeps frozen), so width moves only between
    growable groups; True lets the rounds prune every group. ``prune_per_cost``: a round's pruning ranks
    channels by Taylor importance per unit of the target's saving (the default) or by importance alone.
    ``rounds_share``: the part of the schedule the rounds' fine-tunes cover (None: rounds / (rounds + 1), equal
    slices); the final fine-tune gets the rest, so a small share splits early and trains the offspring longer.
    ``finetune_first``: each round fine-tunes its slice before it prunes and splits (not after), so the
    first round scores a network that has recovered from the pruning to the budget (at 10% of the energy
    that pruning leaves a network at chance accuracy); the final slice still follows the last round.
    ``judge_images``: when > 0, every round is judged: a copy of the network without the round's move
    trains the same slice (same seed, same batches) and the move is kept only if its cross-entropy on this
    many training images (a fixed, seeded draw) is lower; otherwise the round is undone, so a round can only
    move width where it measurably helps. The rejected copies' training is counted (``ctx.on_train``).
    Chosen over :func:`splitting_grow` on validation data (README, Results)."""
    import copy
    from dataclasses import asdict

    from .graph.trace import build_inventory
    from .splitting.growth import Checkpoint, GrowConfig, grow, growable
    from .training.bn_stats import recalibrate_on_
    from .training.loop import evaluate

    def pruned(seed: int) -> None:
        recalibrate_on_(model, ctx.data.train, recalibrate, ctx.train.batch_size, seed)

    if rounds_share is not None and not 0 < rounds_share < 1:
        raise ConfigError(f"rounds_share must be in (0, 1), got {rounds_share}")
    if judge_images and finetune_first:
        raise ConfigError("judge_images compares the two networks after the round's fine-tune; it needs "
                          "finetune_first=False")
    judge = _judge_set(ctx, judge_images) if judge_images > 0 else None
    epochs = ctx.train.epochs
    share = rounds / (rounds + 1) if rounds_share is None else rounds_share
    spans = [(share * r / rounds, share * (r + 1) / rounds) for r in range(rounds)] + [(share if rounds else 0.0, 1.0)]
    checkpoint = Checkpoint(ctx.workdir, ctx.arch, ctx.input_shape) if ctx.workdir is not None else None
    steps, done = [], 0
    if ctx.resume and checkpoint is not None and (restored := checkpoint.load()) is not None:
        model, steps, phase = restored
        done = int(phase.removeprefix("round "))
        ctx.log(f"resumed from {checkpoint.dir} after reallocation round {done}")
    else:
        _prune(model, ctx, "taylor")
    saving = replace(ctx, cost_aware=prune_per_cost)

    def tune(m: nn.Module, r: int, desc: str = "fine-tune") -> float:
        round_epochs = epochs * (spans[r][1] - spans[r][0])
        if round_epochs > 0:
            train_model(m, ctx, replace(ctx.train, epochs=round_epochs, span=spans[r], seed=ctx.seed + r),
                        f"round {r + 1} {desc}", val=ctx.data.val)
        return round_epochs

    judged = []

    for r in range(done, rounds):
        if finetune_first:
            round_epochs = tune(model, r)
        pruned(ctx.seed * 100 + r)  # after the first pruning, or after the last fine-tune
        unmoved = copy.deepcopy(model) if judge is not None else None
        still = replace(ctx.train, epochs=0.0)
        config = GrowConfig(step_growth=1.5 / (1 - delta), max_steps=1, planned_steps=1, seed=ctx.seed * 100 + r,
                            channel_multiple=ctx.channel_multiple, finetune=still, final_finetune=still,
                            **(grow_options or {}))
        keep = frozenset()
        if not prune_frozen:  # the groups this round's split cannot grow back keep their width
            inventory = build_inventory(model, ctx.input_shape)
            keep = frozenset(inventory.groups) - {g.id for g in growable(inventory, config)}
        _prune(model, saving, "taylor", budget=(1 - delta) * ctx.budget, best_effort=True, keep=keep)
        pruned(ctx.seed * 100 + r)
        result = grow(model, ctx.data, ctx.estimator, ctx.budget, config, log=ctx.log)
        if not finetune_first:
            round_epochs = tune(model, r)
        if unmoved is not None:
            tune(unmoved, r, "fine-tune without the move")
            losses = evaluate(model, judge).loss, evaluate(unmoved, judge).loss
            judged.append({"round": r + 1, "kept": losses[0] < losses[1], "loss_moved": losses[0],
                           "loss_unmoved": losses[1]})
            ctx.log(f"round {r + 1}: judge loss {losses[0]:.4f} with the move, {losses[1]:.4f} without: "
                    f"{'kept' if losses[0] < losses[1] else 'undone'}")
            if not losses[0] < losses[1]:
                model = unmoved
                result.steps = []
        steps += [replace(s, step=r + 1, epochs=round_epochs) for s in result.steps]
        if checkpoint is not None:
            checkpoint.save(model, steps, f"round {r + 1}")
    if epochs > 0:
        train_model(model, ctx, replace(ctx.train, epochs=epochs * (1.0 - spans[-1][0]), span=spans[-1],
                                        seed=ctx.seed + rounds), "final fine-tune", val=ctx.data.val)
    # one step record per round that split (the round's split and its cost after the fill), for the report
    ctx.records["growth_steps"] = [asdict(s) for s in steps]
    ctx.records["stop_reason"] = f"{rounds} reallocation rounds of {delta:.0%} of the budget"
    if judged:
        ctx.records["judged_rounds"] = judged
        ctx.records["stop_reason"] += (f", {sum(j['kept'] for j in judged)} of {len(judged)} judged moves kept "
                                       f"({judge_images} training images)")
    return model


def _judge_set(ctx: MethodContext, images: int):
    """``images`` training images drawn with a seed of their own (the rounds' judge)."""
    import torch
    from torch.utils.data import Subset

    gen = torch.Generator().manual_seed(ctx.seed * 100 + 99)
    return Subset(ctx.data.train, torch.randperm(len(ctx.data.train), generator=gen)[:images].tolist())
