import pytest
import torch

from energysplit.cost.budget import check_budget, min_cost, parse_budget
from energysplit.errors import BudgetError


@pytest.mark.parametrize("text, unit, base, expected", [
    ("0.5", "mJ", 8.0, 4.0),  # a bare number in (0, 1]: a fraction of the input model's cost
    ("1", "ms", 3.0, 3.0),
    (".25", "MACs", 1e6, 2.5e5),
    (0.5, "MACs", 10.0, 5.0),  # numbers from a config file
    ("2.5mJ", "mJ", 10.0, 2.5),
    ("2.5 mJ", "mJ", 10.0, 2.5),
    ("0.003J", "mJ", 10.0, 3.0),
    ("250uJ", "mJ", 10.0, 0.25),
    ("250µJ", "mJ", 10.0, 0.25),
    ("2.5mJ", "J", 1.0, 0.0025),  # converted into the target's unit
    ("0.4ms", "ms", 1.0, 0.4),
    ("400us", "ms", 1.0, 0.4),
    ("0.002s", "ms", 1.0, 2.0),
    ("400us", "us", 1000.0, 400.0),
    ("120M", "MACs", 1e9, 120e6),
    ("120m", "MACs", 1e9, 120e6),
    ("1.5K", "MACs", 1e9, 1500.0),
    ("2G", "MACs", 1e10, 2e9),
    ("120MMACs", "MACs", 1e9, 120e6),
    ("5000", "MACs", 1e9, 5000.0),  # a bare number above 1: MACs
    ("1e6", "MACs", 1e9, 1e6),
    ("240MFLOPs", "MACs", 1e9, 120e6),  # 1 MAC = 2 FLOPs
    ("1GFLOPs", "MACs", 1e10, 0.5e9),
    ("100flops", "MACs", 1e9, 50.0),
    ("120M", "FLOPs", 1e9, 240e6),  # MACs into a FLOPs target
])
def test_parse_budget(text, unit, base, expected):
    assert parse_budget(text, unit, base) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("text, unit, message", [
    ("2.5mJ", "ms", "target measures ms"),
    ("0.4ms", "mJ", "target measures mJ"),
    ("120M", "mJ", "target measures mJ"),
    ("1.5", "mJ", "a bare number above 1 counts MACs"),
    ("1GFLOPs", "ms", "target measures ms"),
    ("3parsecs", "mJ", "unknown budget unit"),
    ("5GJ", "mJ", "unknown budget unit"),
    ("half", "mJ", "cannot read budget"),
    ("", "mJ", "cannot read budget"),
    ("-0.5", "mJ", "cannot read budget"),
    ("0", "mJ", "must be positive"),
    ("0mJ", "mJ", "must be positive"),
    ("1e999", "MACs", "must be positive"),
    ("nan", "mJ", "cannot read budget"),
    ("1.2.3mJ", "mJ", "cannot read budget"),
    (None, "mJ", "cannot read budget"),
    (True, "mJ", "cannot read budget"),
])
def test_parse_budget_errors(text, unit, message):
    with pytest.raises(BudgetError, match=message):
        parse_budget(text, unit, 10.0)


def test_a_plugin_unit_is_taken_as_is():
    assert parse_budget("500cycles", "cycles", 1e4) == 500.0
    assert parse_budget("0.5", "cycles", 1e4) == 5000.0
    with pytest.raises(BudgetError, match="target measures cycles"):
        parse_budget("500mJ", "cycles", 1e4)


def test_min_cost_and_check_budget():
    from energysplit.cost.estimator import create_target
    from energysplit.zoo import create_model

    torch.manual_seed(0)
    model = create_model("vgg_small", width=0.25)
    flops = create_target("flops")
    shape = (1, 8, 8)
    base = flops.predict(model, shape).total
    # two channels per group, as MACs of the 3x3 convs 1->2, 2->2 (8x8), 2->2, 2->2 (4x4), 2->2, 2->2 (2x2)
    # and of the linear layers 2 -> 2 and 2 -> 10 classes (the output group keeps its width)
    assert min_cost(model, flops, shape) == 9 * 2 * (64 * (1 + 2) + 16 * 4 + 4 * 4) + 4 + 20
    floor = 4920
    assert check_budget(model, flops, 0.5 * base, shape) == base
    with pytest.raises(BudgetError, match="already met"):
        check_budget(model, flops, base, shape)
    with pytest.raises(BudgetError, match="unreachable"):
        check_budget(model, flops, 0.9 * floor, shape)


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v1", "resnet20"])
def test_min_cost_of_the_zoo_is_below_every_pruned_model(name):
    """Depthwise convs and residual groups keep two channels; a model pruned to its floor costs the same."""
    from energysplit.cost.estimator import create_target
    from energysplit.graph.trace import build_inventory
    from energysplit.pruning.importance import l1_importance
    from energysplit.pruning.prune import PruneConfig, prune_to_budget_
    from energysplit.zoo import create_model

    torch.manual_seed(0)
    model = create_model(name, width=0.25)
    energy = create_target("mobile")
    shape = (1, 8, 8)
    floor = min_cost(model, energy, shape)
    assert 0 < floor < energy.predict(model, shape).total
    inventory = build_inventory(model, shape)
    _, result = prune_to_budget_(model, inventory, energy, floor, shape, l1_importance(model, inventory),
                                 PruneConfig(min_fraction=0.0))
    assert result.final_cost == pytest.approx(floor)


def test_the_floor_is_the_pruning_floor():
    """min_cost keeps as many channels as pruning does (the two constants must not drift apart)."""
    from energysplit.cost.budget import MIN_CHANNELS
    from energysplit.cost.estimator import create_target
    from energysplit.pruning.prune import PruneConfig
    from energysplit.zoo import create_model

    assert PruneConfig().min_channels == MIN_CHANNELS
    model = create_model("vgg_small", width=0.25)
    flops = create_target("flops")
    assert min_cost(model, flops, (1, 8, 8), keep=2) == min_cost(model, flops, (1, 8, 8))
    assert min_cost(model, flops, (1, 8, 8), keep=1) < min_cost(model, flops, (1, 8, 8), keep=3)
