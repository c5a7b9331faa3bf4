"""Channel multiples: blocks, pruning, selection, growth and uniform scaling keep changed widths aligned."""
import copy

import pytest
import torch

from energysplit.errors import ConfigError
from energysplit.graph.alignment import aligned_width, blocks, first_block
from energysplit.cost.estimator import create_target
from energysplit.graph.trace import build_inventory
from energysplit.splitting.growth import GrowConfig, grow
from energysplit.pruning.importance import l1_importance
from energysplit.methods import METHODS, MethodContext
from energysplit.pruning.prune import PruneConfig, prune_to_budget_
from energysplit.splitting.selection import SELECTORS, select_splits
from energysplit.training.loop import TrainConfig, train
from energysplit.zoo import create_model
from test_selection import random_problem


def _aligned_or_unchanged(before: dict, after: dict, multiple: int) -> list[str]:
    return [f"{g}: {before[g]} -> {after[g]}" for g in before
            if after[g] != before[g] and after[g] % multiple != 0]


@pytest.mark.parametrize("width,multiple,grow_,expected", [
    (16, 8, False, 8), (10, 8, False, 2), (10, 8, True, 6), (16, 8, True, 8), (7, 1, True, 1), (5, 4, False, 1)])
def test_first_block_reaches_the_next_aligned_width(width, multiple, grow_, expected):
    assert first_block(width, multiple, grow_) == expected
    new = width + expected if grow_ else width - expected
    assert new % multiple == 0


def test_blocks_cut_in_order_and_drop_an_incomplete_tail():
    assert blocks(list(range(11)), 10, 4, grow=True) == [[0, 1], [2, 3, 4, 5], [6, 7, 8, 9]]
    assert blocks(list(range(5)), 12, 4, grow=False) == [[0, 1, 2, 3]]
    assert blocks([3, 1], 9, 1, grow=True) == [[3], [1]]
    with pytest.raises(ConfigError, match="channel multiple must be >= 1, got 0"):
        blocks([1], 4, 0, grow=True)


def test_aligned_width_rounds_to_the_nearest_multiple_within_the_group():
    assert aligned_width(13, 32, 8) == 16
    assert aligned_width(2, 32, 8) == 8
    assert aligned_width(32, 32, 8) == 32
    assert aligned_width(10, 10, 8) == 10  # unchanged groups stay as they are
    assert aligned_width(5, 8, 8) == 8  # one multiple or narrower: unchanged
    assert aligned_width(5, 8, 1) == 5


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet20", "vgg_small"])
@pytest.mark.parametrize("multiple", [4, 8])
def test_pruning_keeps_changed_widths_multiples_and_lands_within_one_block(digits, name, multiple):
    torch.manual_seed(0)
    model = create_model(name, width=0.5)
    inventory = build_inventory(model, digits.input_shape)
    before = inventory.widths()
    flops = create_target("flops")
    budget = 0.5 * flops.predict(model, digits.input_shape).total
    inventory, result = prune_to_budget_(model, inventory, flops, budget, digits.input_shape,
                                         l1_importance(model, inventory), PruneConfig(channel_multiple=multiple))
    after = inventory.widths()
    assert not _aligned_or_unchanged(before, after, multiple)
    assert result.removed and result.final_cost <= budget
    largest = max(c.remove for c in flops.marginal_costs(model, inventory, digits.input_shape).values()
                  if c.remove == c.remove)
    assert budget - result.final_cost <= multiple * largest
    assert model.eval()(torch.randn(2, *digits.input_shape)).shape == (2, 10)


@pytest.mark.parametrize("method", SELECTORS.names())
@pytest.mark.parametrize("seed", range(6))
def test_block_selection_keeps_widths_aligned_under_the_budget(method, seed):
    scores, costs = random_problem(seed, groups=4, width=12)
    widths = {g: 10 + i for i, g in enumerate(scores)}
    sel = select_splits(scores, costs, 60.0, method, multiple=4, widths=widths)
    assert sel.cost_used <= 60.0 + 1e-9
    neurons = sel.neurons()
    assert neurons and all(n.eigval < 0 for n in neurons)
    for gid, s in scores.items():
        mine = [n for n in neurons if n.group == gid]
        assert (widths[gid] + len(mine)) % 4 == 0 or not mine
        negative = sorted(v for v in s.eigvals.tolist() if v < 0)
        assert sorted(n.eigval for n in mine) == pytest.approx(negative[:len(mine)])  # a group's best first
    assert len(sel.to_plan(scores)) == len(neurons)


def test_block_selection_with_multiple_one_is_neuron_selection():
    scores, costs = random_problem(3)
    a = select_splits(scores, costs, 17.3, "lp")
    b = select_splits(scores, costs, 17.3, "lp", multiple=1, widths={g: 6 for g in scores})
    assert [(c.group, c.channel) for c in a.chosen] == [(c.group, c.channel) for c in b.chosen]


def test_growth_splits_in_aligned_blocks(digits):
    torch.manual_seed(0)
    model = create_model("vgg_small", width=0.25, act="silu")
    train(model, digits.train, TrainConfig(epochs=1, progress=False))
    before = build_inventory(model, digits.input_shape).widths()
    energy = create_target("mobile")
    ft = TrainConfig(epochs=0.1, progress=False)
    config = GrowConfig(score_samples=256, finetune=ft, final_finetune=ft, max_steps=2, channel_multiple=4)
    result = grow(copy.deepcopy(model), digits, energy, 1.8 * energy.predict(model, digits.input_shape).total,
                  config, log=lambda s: None)
    after = build_inventory(result.model, digits.input_shape).widths()
    assert result.steps and after != before
    assert not _aligned_or_unchanged(before, after, 4)
    assert result.final_cost <= 1.8 * energy.predict(model, digits.input_shape).total


@pytest.mark.parametrize("method", ["uniform", "taylor"])
def test_methods_take_the_channel_multiple_from_the_context(digits, method):
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", width=0.5)
    before = build_inventory(model, digits.input_shape).widths()
    energy = create_target("mobile")
    budget = 0.5 * energy.predict(model, digits.input_shape).total
    ctx = MethodContext(digits.subset(train=256, val=64), energy, budget, TrainConfig(epochs=0, progress=False),
                        score_batches=2, channel_multiple=8, log=lambda s: None)
    out = METHODS.get(method)(copy.deepcopy(model), ctx)
    after = build_inventory(out, digits.input_shape).widths()
    assert after != before and not _aligned_or_unchanged(before, after, 8)
    assert energy.predict(out, digits.input_shape).total <= budget


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet20"])
def test_block_marginal_costs_match_re_estimating_the_resized_model(digits, name):
    from energysplit.cost.estimator import Estimator, marginal_costs

    torch.manual_seed(0)
    model = create_model(name, width=0.25)
    inventory = build_inventory(model, digits.input_shape)
    flops = create_target("flops")
    fast = marginal_costs(model, inventory, digits.input_shape, flops, multiple=8)
    slow = Estimator.marginal_costs(flops, model, inventory, digits.input_shape, multiple=8)  # surgery + re-estimate
    one = marginal_costs(model, inventory, digits.input_shape, flops)
    assert fast.keys() == slow.keys()
    for gid, cost in fast.items():
        for a, b in ((cost.add, slow[gid].add), (cost.remove, slow[gid].remove)):
            assert (a != a and b != b) or a == pytest.approx(b)
    # MACs are linear in a group's width when no layer both reads and writes it: per channel, a block of 8
    # then costs exactly what one channel does
    group = next(g for g in inventory.prunable() if g.width % 8 == 0 and g.width > 8)
    assert not set(group.producers) & {c.module for c in group.consumers}
    assert fast[group.id].add == one[group.id].add > 0 and fast[group.id].remove == one[group.id].remove > 0


def test_targets_declare_the_channel_multiple_their_device_runs_fast():
    from pathlib import Path

    from energysplit_estimators.ort_latency import nchwc_block

    assert create_target("mobile").channel_multiple == create_target("flops").channel_multiple == 8
    avx512 = "avx512f" in Path("/proc/cpuinfo").read_text().split()
    assert create_target("cpu").channel_multiple == nchwc_block() == (16 if avx512 else 8)
