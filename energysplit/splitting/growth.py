"""The growth loop of energy-aware splitting steepest descent (Wang et al. 2019, arXiv 1910.03103, Alg. 1).

    repeat: score (splitting eigenpairs) -> costs T_i (target's marginal costs) -> select under the step
            budget -> split with eps -> fine-tune
    until the next step would pass the budget; then a final fine-tune.

The last step fills the budget (``fill``) as the pruners do: a step whose limit is the budget (under
``min_step_fraction`` of a step: without a fine-tune of its own) takes after the selector's neurons the
others, any lambda, in lambda / T order, cut by :func:`~.planning.fit_plan`: the cost lands within one block of it.

Epochs: with ``planned_steps`` the run trains exactly ``planned_steps x finetune.epochs + final_finetune.epochs``:
what the steps did not spend (steps not taken, a fill without a fine-tune) goes to the final fine-tune, and
steps past the plan take theirs from it (never more than is left). ``max_widths`` caps every group's
width; ``on_train(desc, model, result)`` sees every training run (the benchmarks count MAC-epochs with it).

Every completed step is checkpointed atomically (model archive + step log), so an interrupted run
resumes from its last completed step with ``resume=True`` and reaches the same result.
"""
from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
from torch import nn

from .curvature import CurvatureConfig
from ..training.data import DataSplits
from ..errors import BudgetError, ConfigError
from ..graph.inventory import Inventory
from ..graph.plan import Plan
from ..training.loop import TrainConfig, seed_everything, train
from .checkpoint import Checkpoint, StepRecord
from .planning import fit_plan, plan_step


@dataclass(frozen=True)
class GrowConfig:
    """Growth recipe. Reference: growth x1.4-2.4 per step, eps 0.1 (MobileNetV2), LP threshold 0.9."""

    step_growth: float = 1.4  # each step may raise the cost by at most this factor
    eps: float = 0.1
    selector: str = "lp"
    threshold: float = 0.9
    solver: str = "fast"
    score_samples: int = 1024  # training images used to score each step
    min_step_fraction: float = 0.1  # stop when the budget left is under this fraction of a full step
    max_steps: int = 10
    finetune: TrainConfig = TrainConfig(epochs=0.5)  # after each split step
    # with a finetune.span other than (0, 1), step k of planned_steps (default max_steps) fine-tunes over the
    # k-th equal part of that span (the growth steps continue one learning-rate schedule)
    planned_steps: int | None = None
    final_finetune: TrainConfig = TrainConfig(epochs=1.0)
    curvature: CurvatureConfig = CurvatureConfig()
    seed: int = 0
    channel_multiple: int = 1  # split in blocks keeping widths multiples of this (:mod:`energysplit.graph.alignment`)
    # the selection plans for overselect x the step's headroom in marginal costs, then fit_plan cuts it by
    # its applied cost (a latency table's marginal costs over-predict: a step came out at half its limit)
    overselect: float = 2.0
    # step k's limit: seed cost x step_growth^k (ablations spend alike per step), not cost x step_growth
    geometric: bool = False
    fill: bool = True  # the last step fills the budget to within one channel block (module docstring)
    pad_blocks: bool = False  # blocks of a channel multiple valued over all neurons (select_splits' pad_blocks)
    # a step adds at most (layer_growth - 1) x a group's width to it (reference: 2, a layer at most doubles)
    layer_growth: float | None = None
    # select by lambda x ||theta||^2 (theta: the neuron's producer weights), invariant to the scale of a
    # filter feeding BatchNorm; the raw lambda scales as 1 / ||theta||^2 there and favours small filters
    scale_invariant: bool = False
    # split with eps x ||theta|| instead of eps (theta: the neuron's producer weights): the same relative
    # perturbation of every filter, the step whose loss change lambda x ||theta||^2 (scale_invariant) prices
    relative_eps: bool = False
    # each split's kept offspring takes this share of the outgoing weights, the new one 1 - share
    # (:class:`~energysplit.graph.plan.Split`): unequal shares pull the offspring apart in training
    share: float = 0.5
    # variance-aware selection: shrink each lambda towards its layer's trend by its standard error, with this
    # weight (1: the empirical-Bayes posterior mean; :mod:`energysplit.splitting.shrinkage`); None: raw lambdas
    shrinkage: float | None = None
    # residual streams (groups with several producers): "frozen" (keep their width) or "joint" (split
    # jointly in every producer, :mod:`energysplit.splitting.joint`); frozen until a validation run shows
    # joint splitting helps (MobileNetV2's linear streams have S = 0: no change there)
    residual: str = "frozen"

    def __post_init__(self):
        if self.step_growth <= 1.0 or self.eps <= 0 or self.overselect < 1:
            raise ConfigError(f"step_growth must be > 1, eps > 0 and overselect >= 1, got {self.step_growth}, "
                              f"{self.eps} and {self.overselect}")
        if self.score_samples < 1 or self.max_steps < 1 or self.channel_multiple < 1:
            raise ConfigError("score_samples, max_steps and channel_multiple must be >= 1")
        if self.residual not in ("frozen", "joint"):
            raise ConfigError(f"residual must be 'frozen' or 'joint', got {self.residual!r}")
        if self.shrinkage is not None and self.shrinkage <= 0:
            raise ConfigError(f"shrinkage must be > 0 (or None: raw lambdas), got {self.shrinkage}")
        if not 0 < self.share < 1:
            raise ConfigError(f"share must be in (0, 1), got {self.share}")
        if self.layer_growth is not None and self.layer_growth <= 1.0:
            raise ConfigError(f"layer_growth must be > 1 (or None: no per-step cap), got {self.layer_growth}")


@dataclass
class GrowResult:
    model: nn.Module
    inventory: Inventory
    steps: list[StepRecord] = field(default_factory=list)
    final_cost: float = 0.0
    stop_reason: str = ""
    final_epochs: float = 0.0  # the final fine-tune's epochs


def scoring_batches(data: DataSplits, samples: int, batch_size: int, seed: int) -> list:
    """``samples`` training images drawn with ``seed``, as minibatches (what one step scores on)."""
    gen = torch.Generator().manual_seed(seed)
    n = min(samples, len(data.train))
    idx = torch.randperm(len(data.train), generator=gen)[:n].tolist()
    xs, ys = zip(*(data.train[i] for i in idx))
    x, y = torch.stack(xs), torch.as_tensor(ys)
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, n, batch_size)]


def grow(model: nn.Module, data: DataSplits, estimator, budget: float, config: GrowConfig = GrowConfig(),
         inventory: Inventory | None = None, checkpoint: Checkpoint | None = None, resume: bool = False,
         log: Callable[[str], None] = print, max_widths: dict[str, int] | None = None,
         on_train: Callable | None = None, momentum: dict | None = None) -> GrowResult:
    """Grow ``model`` (in place) by energy-aware splitting until its cost reaches ``budget`` (module docstring).
    ``momentum``: None restarts the SGD momentum in every fine-tune; a dict (SGD momentum buffers by
    parameter, as ``train`` takes them: {} starts afresh) is continued from fine-tune to fine-tune, where
    each step's surgery left the parameters alone, updated in place, and checkpointed with every step."""
    from ..graph.trace import build_inventory
    from ..training.distributed import main_only, rank_zero_estimator

    estimator, log = rank_zero_estimator(estimator), main_only(log)  # both unchanged in a single process
    input_shape = data.input_shape
    steps: list[StepRecord] = []
    phase = "grow"
    if resume and checkpoint is not None and (restored := checkpoint.load()) is not None:
        model, steps, phase = restored
        if momentum is not None:
            momentum.clear()
            momentum.update(checkpoint.momentum(model, phase, steps))
        log(f"resumed from {checkpoint.dir} after step {len(steps)} ({phase})")
    inventory = build_inventory(model, input_shape) if (inventory is None or resume) else inventory
    cost = estimator.predict(model, input_shape).total
    unit = estimator.unit
    if cost > budget:
        raise BudgetError(f"the seed already costs {cost:.4g} {unit}, over the budget {budget:.4g} {unit}; "
                          "shrink the seed further")
    stop = "done" if phase == "final" else ""
    seed_cost = steps[0].cost_before if steps else cost
    while phase == "grow" and len(steps) < config.max_steps:
        if steps and steps[-1].note == FILL:
            stop = "budget filled (the last step filled it to within one channel block)"
            break
        step_limit = min(budget, (seed_cost * config.step_growth ** (len(steps) + 1)) if config.geometric
                         else cost * config.step_growth)
        small = step_limit - cost <= config.min_step_fraction * cost * (config.step_growth - 1)
        fill = config.fill and step_limit >= budget > cost
        if small and not fill:
            stop = "budget reached (what is left is under min_step_fraction of a step)"
            break
        epochs = 0.0 if small else step_epochs(config, len(steps) + 1, sum(s.epochs for s in steps))
        inventory, record = _split_step(model, data, estimator, inventory, replace(config, finetune=replace(
            config.finetune, epochs=epochs)), len(steps) + 1, cost, step_limit, max_widths, on_train, fill, momentum)
        if record is None:
            stop = f"no neuron{'' if fill else ' with a negative splitting index'} fits the remaining budget"
            break
        steps.append(record)
        log(f"step {record.step}: split {record.neurons_split} neurons in {len(record.split_per_group)} groups, "
            f"cost {cost:.4g} -> {record.cost_after:.4g} {unit} (budget {budget:.4g}), val acc "
            f"{record.val_accuracy:.4f}, scoring {record.score_seconds:.1f} s, training {record.train_seconds:.1f} s")
        cost = record.cost_after
        if checkpoint is not None:
            checkpoint.save(model, steps, "grow", momentum)
    else:
        stop = stop or ("done" if phase == "final" else "max steps reached")
    epochs = final_epochs(config, len(steps), sum(s.epochs for s in steps))
    if phase == "grow":
        if epochs > 0:
            ft = replace(config.final_finetune, epochs=epochs, seed=config.seed * 1000 + 999)
            res = train(model, data.train, ft, val=data.val, desc="final fine-tune", momentum=momentum)
            log(f"final fine-tune: {ft.epochs:g} epochs, val acc {res.val_accuracy:.4f}")
            if on_train is not None:
                on_train("final fine-tune", model, res)
        if checkpoint is not None:
            checkpoint.save(model, steps, "final")
        inventory = build_inventory(model, input_shape)
    return GrowResult(model, inventory, steps, estimator.predict(model, input_shape).total, stop, epochs)


FILL = "fill"  # StepRecord.note of the step that filled the budget


def final_epochs(config: GrowConfig, steps_taken: int, spent: float | None = None) -> float:
    """The final fine-tune's epochs: with a plan, what the steps did not spend of their slices is added to
    it and steps past the plan are taken out of it (so the run's total stays the planned one); never below
    0. ``spent``: the steps' fine-tuning epochs (default: ``steps_taken`` full slices)."""
    if config.planned_steps is None:
        return config.final_finetune.epochs
    spent = steps_taken * config.finetune.epochs if spent is None else spent
    return max(0.0, config.planned_steps * config.finetune.epochs + config.final_finetune.epochs - spent)


def step_epochs(config: GrowConfig, step: int, spent: float) -> float:
    """Step ``step``'s epochs after ``spent``: its slice (past the plan: at most what is left of it)."""
    past = config.planned_steps is not None and step > config.planned_steps
    return min(config.finetune.epochs, final_epochs(config, step - 1, spent)) if past else config.finetune.epochs


def _split_step(model, data: DataSplits, estimator, inventory: Inventory, config: GrowConfig, step: int,
                cost: float, step_limit: float, max_widths: dict | None = None,
                on_train: Callable | None = None, fill: bool = False,
                momentum: dict | None = None) -> tuple[Inventory, StepRecord | None]:
    """One growth step in place: score, select under ``step_limit`` (``fill``: and fill it), split,
    fine-tune (None: nothing fits)."""
    from ..cost.estimator import marginal_costs_of
    from ..graph.surgery import apply_plan_
    from ..training.distributed import check_in_sync
    from .fast import FastConfig
    from .scores import splitting_scores
    from .shrinkage import shrunk_scores

    input_shape = data.input_shape
    t0 = time.perf_counter()
    batches = scoring_batches(data, config.score_samples, 64, config.seed * 1000 + step)
    seed_everything(config.seed * 1000 + step)
    solver_config = FastConfig(progress=config.finetune.progress) if config.solver == "fast" else None
    # groups a grouped conv cuts into G blocks grow by units of one neuron per block (every block alike)
    growing = growable(inventory, config)
    blocks = {g.id: g.blocks for g in growing if g.blocks > 1}
    scores = splitting_scores(model, batches, inventory, config.solver, config.curvature, config=solver_config,
                              groups=[g.id for g in growing])
    t1 = time.perf_counter()
    marginal = marginal_costs_of(estimator, model, inventory, input_shape, config.channel_multiple)
    costs = {gid: marginal[gid].add for gid in scores}
    widths = inventory.widths()
    caps = step_caps(widths, scores, max_widths, config.layer_growth)
    ranked = shrunk_scores(model, inventory, scores, config.shrinkage) if config.shrinkage else scores
    ranked = scale_invariant_scores(model, inventory, ranked) if config.scale_invariant else ranked
    ops, sizes = plan_step(ranked, costs, config.overselect * (step_limit - cost), config, widths, caps, step, fill,
                           blocks)
    ops = fit_plan(model, inventory, ops, estimator, input_shape, step_limit, sizes)
    t2 = time.perf_counter()
    if not ops:
        return inventory, None
    if config.relative_eps:
        norms = {g: neuron_norms(model, inventory, g).sqrt() for g in {op.group for op in ops}}
        ops = [replace(op, eps=op.eps * float(norms[op.group][op.channel])) for op in ops]
    if config.share != 0.5:
        ops = [replace(op, share=config.share) for op in ops]
    # eps^2 lambda x 4 s (1 - s) (Split: 1 for equal shares)
    changes = [float(scores[op.group].eigvals[op.channel]) * op.eps ** 2 * 4 * op.share * (1 - op.share)
               for op in ops]
    inventory = apply_plan_(model, inventory, Plan(ops))
    new_cost = estimator.predict(model, input_shape).total
    ft = replace(config.finetune, seed=config.seed * 1000 + step, span=_step_span(config, step))
    result = train(model, data.train, ft, val=data.val, desc=f"step {step} fine-tune",  # 0 epochs: evaluates
                   momentum=momentum)
    if on_train is not None:
        on_train(f"step {step} fine-tune", model, result)
    check_in_sync(model, f"growth step {step}")
    per_group = dict(Counter(op.group for op in ops))
    return inventory, StepRecord(step, cost, new_cost, estimator.unit, step_limit - cost, len(ops), per_group,
                                 0.5 * sum(changes), result.val_accuracy, result.val_loss,
                                 t1 - t0, t2 - t1, result.seconds, FILL if fill else "", ft.epochs)


def growable(inventory: Inventory, config: GrowConfig) -> list:
    """The groups a growth step may split: the splittable ones, residual streams only with ``residual="joint"``."""
    from .joint import is_joint

    return [g for g in inventory.splittable() if config.residual == "joint" or not is_joint(g)]


def step_caps(widths: dict[str, int], groups, max_widths: dict | None, layer_growth: float | None) -> dict | None:
    """Neurons each group of ``groups`` may still gain this step: up to its ``max_widths`` entry, and at most
    (layer_growth - 1) x its width (None: no cap of that kind; None overall: no caps)."""
    if max_widths is None and layer_growth is None:
        return None
    caps = {}
    for g in groups:
        if max_widths is not None and g in max_widths:
            caps[g] = max(0, max_widths[g] - widths[g])
        if layer_growth is not None:
            caps[g] = min(caps.get(g, math.inf), int((layer_growth - 1) * widths[g]))
    return caps


def scale_invariant_scores(model: nn.Module, inventory: Inventory, scores: dict) -> dict:
    """``scores`` with every lambda times the squared norm of its neuron's weights in the group's producers."""
    from .solver import GroupScores

    return {gid: GroupScores(s.eigvals * neuron_norms(model, inventory, gid).to(s.eigvals.dtype), s.eigvecs)
            for gid, s in scores.items()}


def neuron_norms(model: nn.Module, inventory: Inventory, gid: str) -> torch.Tensor:
    """Every neuron of group ``gid``: the squared norm of its weights in all the group's producers."""
    return sum(model.get_submodule(p).weight.detach().cpu().flatten(1).pow(2).sum(1)
               for p in inventory[gid].producers)


def _step_span(config: GrowConfig, step: int) -> tuple[float, float]:
    """Step ``step``'s part of ``config.finetune.span`` (steps past the plan stay at its end)."""
    start, end = config.finetune.span
    n = config.planned_steps or config.max_steps
    if (start, end) == (0.0, 1.0):
        return start, end
    if step > n:
        return end, end
    return start + (end - start) * (step - 1) / n, start + (end - start) * step / n
