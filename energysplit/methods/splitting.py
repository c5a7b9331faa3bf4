"""Compression by energy-aware splitting: reallocation at constant budget (``splitting``, the default) and
seed and grow (``splitting-grow``). Both start from the Taylor-pruned model and train the same epochs as
every baseline."""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

from torch import nn

from ..errors import BudgetError, ConfigError
from ..training.loop import TrainConfig
from .context import METHODS, MethodContext, prune_to_budget, train_model


@METHODS.register("splitting-grow")
def splitting_grow(model: nn.Module, ctx: MethodContext, seed_fraction: float = 0.7, seed_method: str = "taylor",
                   one_schedule: bool = True, carry_momentum: bool = False,
                   grow_options: dict | None = None) -> nn.Module:
    """Seed and grow (the ``splitting`` default until reallocation beat it on validation data, README
    Results): shrink the trained model to a seed costing ``seed_fraction`` of the budget with the strongest
    pruning baseline (Taylor, keeping weights), then grow it back to the budget by energy-aware splitting
    (steps of at most x1.4). Fine-tuning epochs: 30% after seeding, 20% spread over the growth steps, 50%
    final, the same total as every baseline; with ``one_schedule`` the phases follow one learning-rate
    schedule (each covers its part of it, as the baselines' single fine-tune does) instead of restarting
    it; with ``carry_momentum`` they continue one SGD momentum (as :func:`splitting`'s slices do) instead of
    restarting it in each. ``grow_options`` as in :func:`splitting`."""
    from ..splitting.checkpoint import Checkpoint
    from ..splitting.growth import GrowConfig, grow

    seed_budget = seed_fraction * ctx.budget
    steps = max(1, math.ceil(math.log(1 / seed_fraction) / math.log(1.4) - 1e-9))
    epochs = ctx.train.epochs

    def phase(share: float, span: tuple) -> TrainConfig:
        return replace(ctx.train, epochs=share * epochs, span=span if one_schedule else (0.0, 1.0))

    resumed = ctx.resume and ctx.workdir is not None and (Path(ctx.workdir) / "model.es").exists()
    momentum = {} if carry_momentum else None  # grow() restores it on resume
    if not resumed:
        # the seed's budget can lie below the cheapest model pruning reaches (a latency target's fixed
        # overhead): seed there then, if that is still under the budget, and let the growth do less
        seed_cost = prune_to_budget(model, ctx, seed_method, budget=seed_budget, best_effort=True).final_cost
        if seed_cost > ctx.budget:
            raise BudgetError(f"budget {ctx.budget:.4g} {ctx.estimator.unit} is unreachable by pruning: the cheapest "
                              f"seed costs {seed_cost:.4g} {ctx.estimator.unit}; raise the budget or lower the "
                              f"channel multiple ({ctx.channel_multiple})")
        if seed_cost > seed_budget:
            ctx.log(f"seed budget {seed_budget:.4g} {ctx.estimator.unit} is below the cheapest pruned model: seeded "
                    f"at {seed_cost:.4g} ({seed_cost / ctx.budget:.0%} of the budget)")
        if epochs > 0:
            train_model(model, ctx, replace(phase(0.3, (0.0, 0.3)), seed=ctx.seed), "seed fine-tune", val=ctx.data.val,
                        momentum=momentum)
    config = GrowConfig(step_growth=1.4, max_steps=steps + 2, planned_steps=steps, seed=ctx.seed,
                        channel_multiple=ctx.channel_multiple, finetune=phase(0.2 / steps, (0.3, 0.5)),
                        final_finetune=phase(0.5, (0.5, 1.0)), **(grow_options or {}))
    checkpoint = Checkpoint(ctx.workdir, ctx.arch, ctx.input_shape) if ctx.workdir is not None else None
    result = grow(model, ctx.data, ctx.estimator, ctx.budget, config, checkpoint=checkpoint, resume=resumed,
                  log=ctx.log, on_train=ctx.on_train, momentum=momentum)
    ctx.log(f"growth stopped: {result.stop_reason}")
    from dataclasses import asdict

    ctx.records["growth_steps"] = [asdict(s) for s in result.steps]
    ctx.records["stop_reason"] = result.stop_reason
    return result.model


@METHODS.register("splitting")
def splitting(model: nn.Module, ctx: MethodContext, rounds: int = 3, delta: float = 0.1,
              grow_options: dict | None = None, recalibrate: int = 20, prune_frozen: bool = False,
              prune_per_cost: bool = True, rounds_share: float | None = None,
              finetune_first: bool = False, judge_images: int = 2048,
              carry_momentum: bool = True) -> nn.Module:
    """Energy-aware splitting for compression (the default method), by reallocation at constant budget:
    Taylor-prune to the budget, then ``rounds`` rounds of {prune ``delta`` of the budget by Taylor
    importance per unit of saving; split the same cost back by energy-aware splitting (LP on lambda / T,
    filled to the budget as the growth's last step does); fine-tune; keep the move only if it lowered the
    loss (``judge_images``)}, then a final fine-tune. The model stays at the budget and only moves width
    between layers, and only where a round measured that it helps.
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
    ``judge_images``: when > 0 (2,048, the default, chosen on validation data:
    benchmarks/results/tune-judged-0cbfeb2), every round is judged: a copy of the network without the
    round's move trains the same slice (same seed, same batches) and the move is kept only if its
    cross-entropy on this many training images (a fixed, seeded draw) is lower; otherwise the round is
    undone. The copies' training is extra compute (7 slices instead of 4 with 3 rounds), counted by
    ``ctx.on_train``; 0 moves every round unjudged (the default before). ``carry_momentum`` (the default,
    chosen on validation data: benchmarks/results/tune-carry-9858151): the slices continue one SGD momentum
    (``train(momentum=...)``) for the parameters a round's surgery left untouched, instead of restarting it
    in each slice (False: restart, the default before).
    Chosen over :func:`splitting_grow` on validation data (README, Results)."""
    import copy
    from dataclasses import asdict

    from ..graph.trace import build_inventory
    from ..splitting.checkpoint import Checkpoint
    from ..splitting.growth import GrowConfig, grow, growable
    from ..training.bn_stats import recalibrate_on_
    from ..training.loop import evaluate

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
    momentum = {} if carry_momentum else None
    if ctx.resume and checkpoint is not None and (restored := checkpoint.load()) is not None:
        model, steps, phase = restored
        done = int(phase.removeprefix("round "))
        if carry_momentum:
            momentum = checkpoint.momentum(model, phase, steps)
        ctx.log(f"resumed from {checkpoint.dir} after reallocation round {done}")
    else:
        prune_to_budget(model, ctx, "taylor")
    saving = replace(ctx, cost_aware=prune_per_cost)

    def tune(m: nn.Module, r: int, carried: dict | None, desc: str = "fine-tune") -> float:
        round_epochs = epochs * (spans[r][1] - spans[r][0])
        if round_epochs > 0:
            train_model(m, ctx, replace(ctx.train, epochs=round_epochs, span=spans[r], seed=ctx.seed + r),
                        f"round {r + 1} {desc}", val=ctx.data.val, momentum=carried)
        return round_epochs

    for r in range(done, rounds):
        if finetune_first:
            round_epochs = tune(model, r, momentum)
        pruned(ctx.seed * 100 + r)  # after the first pruning, or after the last fine-tune
        unmoved, unmoved_momentum = copy.deepcopy((model, momentum)) if judge is not None else (None, None)
        still = replace(ctx.train, epochs=0.0)
        config = GrowConfig(step_growth=1.5 / (1 - delta), max_steps=1, planned_steps=1, seed=ctx.seed * 100 + r,
                            channel_multiple=ctx.channel_multiple, finetune=still, final_finetune=still,
                            **(grow_options or {}))
        keep = frozenset()
        if not prune_frozen:  # the groups this round's split cannot grow back keep their width
            inventory = build_inventory(model, ctx.input_shape)
            keep = frozenset(inventory.groups) - {g.id for g in growable(inventory, config)}
        prune_to_budget(model, saving, "taylor", budget=(1 - delta) * ctx.budget, best_effort=True, keep=keep)
        pruned(ctx.seed * 100 + r)
        result = grow(model, ctx.data, ctx.estimator, ctx.budget, config, log=ctx.log)
        if not finetune_first:
            round_epochs = tune(model, r, momentum)
        note = ""
        if unmoved is not None:
            tune(unmoved, r, unmoved_momentum, "fine-tune without the move")
            moved_loss, unmoved_loss = evaluate(model, judge).loss, evaluate(unmoved, judge).loss
            kept = moved_loss < unmoved_loss
            note = (f"move {'kept' if kept else 'undone'}: judge loss {moved_loss:.4f} with it, "
                    f"{unmoved_loss:.4f} without")
            ctx.log(f"round {r + 1}: {note}")
            if not kept:
                model, momentum = unmoved, unmoved_momentum
        steps += [replace(s, step=r + 1, epochs=round_epochs, note=note or s.note) for s in result.steps]
        if checkpoint is not None:
            checkpoint.save(model, steps, f"round {r + 1}", momentum)
    if epochs > 0:
        train_model(model, ctx, replace(ctx.train, epochs=epochs * (1.0 - spans[-1][0]), span=spans[-1],
                                        seed=ctx.seed + rounds), "final fine-tune", val=ctx.data.val,
                    momentum=momentum)
    # one step record per round that split (the round's split and its cost after the fill; an undone move's
    # record says so in its note), for the report
    ctx.records["growth_steps"] = [asdict(s) for s in steps]
    ctx.records["stop_reason"] = f"{rounds} reallocation rounds of {delta:.0%} of the budget"
    verdicts = [s.note for s in steps if s.note.startswith("move ")]  # also those of rounds before a resume
    if verdicts:
        kept = sum(v.startswith("move kept") for v in verdicts)
        ctx.records["stop_reason"] += f", {kept} of {len(verdicts)} judged moves kept ({judge_images} training images)"
    return model


def _judge_set(ctx: MethodContext, images: int):
    """``images`` training images drawn with a seed of their own (the rounds' judge)."""
    import torch
    from torch.utils.data import Subset

    gen = torch.Generator().manual_seed(ctx.seed * 100 + 99)
    return Subset(ctx.data.train, torch.randperm(len(ctx.data.train), generator=gen)[:images].tolist())
