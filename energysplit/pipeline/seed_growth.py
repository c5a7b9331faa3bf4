"""Growing a network from a small seed, the splitting paper's own setting (Wang et al. 2019, arXiv
1910.03103, section 5; Liu et al. 2019, Alg. 1): a uniform width multiplier of an architecture whose cost is
a fraction of the budget, trained from scratch, then score -> energy-aware selection -> split -> train
(:func:`energysplit.splitting.growth.grow`, the loop ``compress`` uses) until the budget, then the result
is trained. One total of epochs is shared by the phases (seed, growth steps, final), so a grown network
costs the same training epochs as a network trained from scratch.

The architecture at its given width is the design space: no group grows past its width there (the
caps), and residual streams, which growth keeps frozen (``GrowConfig.residual``), keep the seed's width.
Used by ``energysplit grow`` (:mod:`.design`) and the benchmark's growth protocol (:mod:`.protocols`).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from pathlib import Path

from torch import nn

from ..errors import BudgetError, ConfigError
from ..methods import MethodContext, train_model, width_fraction

SELECTOR_NAMES = {"lp": "splitting", "cost-blind": "splitting-blind", "random": "splitting-random"}


@dataclass(frozen=True)
class SeedGrowth:
    """The growth recipe. The defaults were set before any tuning; a first tuning run on validation data
    (benchmarks/results/tune-grow-7827303: seed fraction, step growth, eps, seed share) kept them. The
    carried momentum (the phases continue one SGD momentum instead of restarting it in each) is the default
    since a second one (tune-grow-carry-baef3d7: +0.25 points over 12 runs, 7 better).

    ``seed_fraction`` 0.85 since a third one (tune-seed-fraction-881e53c: 0.4 / 0.55 / 0.7 / 0.85 of the
    budget over 12 runs each, validation accuracy rising with the seed, +0.7 points from 0.4 to 0.85,
    inside the runs' spread): at this training length a network grown mostly from near-copies trains worse
    than one that starts wide, so growth does the last step (one x1.5 step reaches the budget). 0.4 was
    the issue's pilot (a x0.056 MobileNetV2 seed, 3 steps), chosen for feasibility only.

    ``eps`` 0.3 since a fourth one (tune-eps0.3-seed85-3ded921: +0.24 points over eps 0.1 over 12 runs, 7
    better, inside the spread): with eps 0.1 a split's offspring stay near-copies through the training that
    follows (benchmarks/results/offspring-similarity)."""

    seed_fraction: float = 0.85  # the seed's cost as a fraction of the budget (a uniform width, bisection)
    seed_width: float | None = None  # or this width multiplier of the architecture
    step_growth: float = 1.5  # step k may raise the cost to seed cost x step_growth^k
    eps: float = 0.3  # the split step size (offspring theta +- eps v, v a unit vector)
    selector: str = "lp"  # lp: energy-aware; cost-blind: S2D's most negative lambda; random: the control
    seed_share: float = 0.4  # of the epochs: training the seed from scratch
    step_share: float = 0.2  # spread over the planned growth steps; the rest trains the result
    score_samples: int = 1024  # training images that score each step
    one_schedule: bool = True  # the phases follow one learning-rate schedule (else each restarts it)
    carry_momentum: bool = True  # the phases continue one SGD momentum (else each fine-tune restarts it)
    offspring_share: float = 0.5  # a split's kept offspring's share of the outgoing weights (GrowConfig.share)

    def __post_init__(self):
        if not 0 < self.seed_fraction < 1:
            raise ConfigError(f"seed fraction must be in (0, 1), got {self.seed_fraction}")
        if self.seed_width is not None and self.seed_width <= 0:
            raise ConfigError(f"seed width must be > 0, got {self.seed_width}")
        if self.step_growth <= 1 or self.eps <= 0 or self.score_samples < 1:
            raise ConfigError("step growth must be > 1, eps > 0 and score samples >= 1")
        if not 0 < self.offspring_share < 1:
            raise ConfigError(f"offspring share must be in (0, 1), got {self.offspring_share}")
        if self.seed_share < 0 or self.step_share < 0 or self.seed_share + self.step_share > 1:
            raise ConfigError("seed share and step share must be >= 0 and add up to at most 1")
        if self.selector not in SELECTOR_NAMES:
            raise ConfigError(f"unknown growth selector {self.selector!r}; use one of {', '.join(SELECTOR_NAMES)}")


@dataclass
class SeedPlan:
    """The seed and what growth can reach from it (every figure in the target's unit)."""

    width: float  # the seed's width multiplier (absolute)
    cost: float
    max_widths: dict  # the caps: every group's width in the architecture at its given width
    reachable: float  # the seed with every splittable group at its cap
    steps: int  # planned growth steps


def build(arch: dict, width: float) -> nn.Module:
    from ..zoo import create_model

    return create_model(arch["name"], **{**arch.get("kwargs", {}), "width": width})


def plan_seed(arch: dict, estimator, budget: float, input_shape, recipe: SeedGrowth) -> SeedPlan:
    """The seed of ``arch`` for ``budget``; BudgetError when the budget cannot be reached from it (the seed
    costs more, or the budget lies above what the caps allow)."""
    from ..graph.archive import resize_
    from ..graph.trace import build_inventory
    from ..splitting.growth import GrowConfig, growable

    full = arch.get("kwargs", {}).get("width", 1.0)
    unit = estimator.unit
    if recipe.seed_width is not None:
        width = recipe.seed_width
        if width > full:
            raise ConfigError(f"seed width {width:g} is above the architecture's width {full:g}")
        seed = build(arch, width)
    else:
        smallest = build(arch, 1e-3 * full)
        try:
            f, seed = width_fraction(lambda f: build(arch, max(f, 1e-3) * full), estimator,
                                     recipe.seed_fraction * budget, input_shape)
            width = max(f, 1e-3) * full
        except BudgetError:  # the narrowest model (the zoo's minimum channels) is over the seed's share
            width, seed = 1e-3 * full, smallest
    cost = estimator.predict(seed, input_shape).total
    if cost >= budget:
        raise BudgetError(f"budget {budget:.4g} {unit} is unreachable by growth: the seed (width {width:.3g}) "
                          f"already costs {cost:.4g} {unit}; raise the budget or give a smaller --seed-width")
    inventory = build_inventory(seed, input_shape)
    max_widths = build_inventory(build(arch, full), input_shape).widths()
    reach = copy.deepcopy(seed)
    splittable = {g.id for g in growable(inventory, GrowConfig())}  # what the growth steps may split
    resize_(reach, {g: max_widths[g] if g in splittable else w for g, w in inventory.widths().items()}, input_shape)
    reachable = estimator.predict(reach, input_shape).total
    if budget > reachable:
        raise BudgetError(f"budget {budget:.4g} {unit} is above what growth can reach: {arch['name']} x{full:g} "
                          f"grown from this seed costs at most {reachable:.4g} {unit} (groups grow to their width "
                          "at --width, residual streams keep the seed's); lower the budget or raise --width")
    steps = max(1, math.ceil(math.log(budget / cost) / math.log(recipe.step_growth) - 1e-9))
    return SeedPlan(width, cost, max_widths, reachable, steps)


def grow_from_seed(ctx: MethodContext, recipe: SeedGrowth, plan: SeedPlan | None = None) -> nn.Module:
    """Seed of ``ctx.arch`` (trained from scratch) grown to ``ctx.budget``; ``ctx.train.epochs`` is the total
    over the phases. Checkpoints in ``ctx.workdir`` (``seed.es``: the trained seed; the growth's own),
    ``ctx.resume`` continues from them. ``ctx.records`` gets the growth steps, the stop reason, the seed's
    width and the trained seed (``seed_model``)."""
    from ..graph.archive import load_model, save_model
    from ..splitting.checkpoint import Checkpoint
    from ..splitting.growth import GrowConfig, grow
    from ..training.loop import TrainConfig, seed_everything

    plan = plan or plan_seed(ctx.arch, ctx.estimator, ctx.budget, ctx.input_shape, recipe)
    epochs, shares = ctx.train.epochs, (recipe.seed_share, recipe.seed_share + recipe.step_share)

    def phase(start: float, end: float) -> TrainConfig:
        return replace(ctx.train, epochs=(end - start) * epochs, span=(start, end) if recipe.one_schedule else (0, 1))

    work = Path(ctx.workdir) if ctx.workdir is not None else None
    checkpoint = Checkpoint(work, ctx.arch, ctx.input_shape) if work is not None else None
    resumed = ctx.resume and work is not None and (work / "model.es").exists()
    momentum = {} if recipe.carry_momentum else None  # grow() restores it on resume
    if resumed:
        seed = load_model(work / "seed.es")[0]
    else:
        seed_everything(ctx.seed)
        seed = build(ctx.arch, plan.width)
        ctx.log(f"seed: {ctx.arch['name']} x{plan.width:.3g}, {plan.cost:.4g} {ctx.estimator.unit} "
                f"({plan.cost / ctx.budget:.0%} of the budget), {plan.steps} growth steps planned")
        if shares[0] > 0 and epochs > 0:
            train_model(seed, ctx, replace(phase(0.0, shares[0]), seed=ctx.seed), "train seed", val=ctx.data.val,
                        momentum=momentum)
        if work is not None:
            save_model(seed, work / "seed.es", ctx.arch, ctx.input_shape)
            checkpoint.save(seed, [], "grow", momentum)  # resume from here: the growth starts from the trained seed
    config = GrowConfig(step_growth=recipe.step_growth, eps=recipe.eps, selector=recipe.selector,
                        score_samples=recipe.score_samples, share=recipe.offspring_share, geometric=True,
                        max_steps=plan.steps + 2, planned_steps=plan.steps, seed=ctx.seed,
                        channel_multiple=ctx.channel_multiple,
                        finetune=phase(*shares) if plan.steps else phase(0, 0),
                        final_finetune=phase(shares[1], 1.0))
    config = replace(config, finetune=replace(config.finetune, epochs=config.finetune.epochs / plan.steps))
    result = grow(copy.deepcopy(seed), ctx.data, ctx.estimator, ctx.budget, config, checkpoint=checkpoint,
                  resume=resumed, log=ctx.log, max_widths=plan.max_widths, on_train=ctx.on_train, momentum=momentum)
    ctx.log(f"growth stopped: {result.stop_reason}")
    from dataclasses import asdict

    seed_epochs = phase(0.0, shares[0]).epochs
    steps = [s.epochs for s in result.steps]
    ctx.records.update(growth_steps=[asdict(s) for s in result.steps], stop_reason=result.stop_reason,
                       seed_width=plan.width, seed_cost=plan.cost, seed_model=seed,
                       epochs={"seed": seed_epochs, "steps": sum(steps), "final": result.final_epochs,
                               "total": seed_epochs + sum(steps) + result.final_epochs})
    return result.model


def with_bn_stats(ctx, batches: int, then):
    """``ctx`` whose ``on_train`` re-estimates the BatchNorm statistics on ``batches`` training batches after
    every training run (:func:`~energysplit.training.bn_stats.recalibrating`), then calls ``then``: a model
    trained from scratch for a few epochs is otherwise evaluated, scored and pruned (all in eval mode) with
    stale running statistics."""
    from ..training.bn_stats import recalibrating

    if batches <= 0:
        return replace(ctx, on_train=then)
    return replace(ctx, on_train=recalibrating(then, ctx.data.train, ctx.data.val, batches, ctx.train.batch_size,
                                               ctx.seed))


class Ledger:
    """``on_train`` that records every training run: its epochs and MAC-epochs (the model's MACs x epochs,
    the training compute of a method)."""

    def __init__(self, input_shape):
        from ..cost.estimator import create_target

        self.rows: list[dict] = []
        self.flops, self.input_shape = create_target("flops"), tuple(input_shape)

    def __call__(self, desc: str, model: nn.Module, result) -> None:
        macs = self.flops.predict(model, self.input_shape).total
        self.rows.append({"phase": desc, "epochs": result.epochs, "macs": macs, "mac_epochs": macs * result.epochs})

    @property
    def epochs(self) -> float:
        return sum(r["epochs"] for r in self.rows)

    @property
    def mac_epochs(self) -> float:
        return sum(r["mac_epochs"] for r in self.rows)
