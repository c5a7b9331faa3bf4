import copy

import pytest
import torch

from energysplit.cost.estimator import create_target
from energysplit.graph.trace import build_inventory
from energysplit.pruning.importance import l1_importance, taylor_importance
from energysplit.methods import METHODS, MethodContext
from energysplit.pruning.prune import PruneConfig, prune_to_budget_
from energysplit.training.loop import TrainConfig
from energysplit.zoo import create_model, list_models

PRUNERS = ["l1", "taylor", "random", "slimming"]


def _ctx(digits, estimator, budget, name="vgg_small"):
    return MethodContext(digits.subset(train=256, val=64), estimator, budget, TrainConfig(epochs=0, progress=False),
                         arch={"name": name, "kwargs": {"width": 0.25}}, score_batches=2, log=lambda s: None)


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("method", PRUNERS)
def test_pruners_land_within_one_channel_of_the_budget(digits, name, method):
    torch.manual_seed(0)
    model = create_model(name, width=0.25)
    flops = create_target("flops")
    base = flops.predict(model, digits.input_shape).total
    budget = 0.5 * base
    out = METHODS.get(method)(copy.deepcopy(model), _ctx(digits, flops, budget, name))
    final = flops.predict(out, digits.input_shape).total
    inventory = build_inventory(out, digits.input_shape)
    largest_saving = max(c.remove for c in flops.marginal_costs(out, inventory, digits.input_shape).values()
                         if c.remove == c.remove)
    assert final <= budget
    assert budget - final <= largest_saving
    x = torch.randn(2, *digits.input_shape)
    assert out.eval()(x).shape == (2, 10)


def test_uniform_scaling_meets_the_budget_and_keeps_proportions(digits):
    torch.manual_seed(0)
    model = create_model("vgg_small", width=0.5)
    energy = create_target("mobile")
    base = energy.predict(model, digits.input_shape).total
    before = build_inventory(model, digits.input_shape).widths()
    out = METHODS.get("uniform")(copy.deepcopy(model), _ctx(digits, energy, 0.4 * base))
    after = build_inventory(out, digits.input_shape).widths()
    assert energy.predict(out, digits.input_shape).total <= 0.4 * base
    fractions = [after[g] / before[g] for g in before if g in after and before[g] > 8 and not g.startswith("classifier.2")]
    assert max(fractions) - min(fractions) < 0.15


def test_pruning_to_the_full_cost_changes_nothing(digits):
    torch.manual_seed(0)
    model = create_model("resnet20", width=0.25).eval()
    x = torch.randn(4, *digits.input_shape)
    expected = model(x)
    inventory = build_inventory(model, digits.input_shape)
    flops = create_target("flops")
    cost = flops.predict(model, digits.input_shape).total
    inventory2, result = prune_to_budget_(model, inventory, flops, cost, digits.input_shape,
                                          l1_importance(model, inventory))
    assert result.removed == {} and inventory2.widths() == inventory.widths()
    torch.testing.assert_close(model(x), expected)


def test_pruning_removes_the_least_important_channels(digits):
    torch.manual_seed(0)
    model = create_model("vgg_small", width=0.25)
    inventory = build_inventory(model, digits.input_shape)
    gid = inventory.prunable()[0].id
    importance = {g.id: torch.full((g.width,), 1e6) for g in inventory.prunable()}
    importance[gid] = torch.arange(inventory[gid].width, dtype=torch.float) + 1  # channel 0 least important
    conv = model.get_submodule(inventory[gid].producers[0])
    kept = conv.weight.detach()[3:].clone()
    flops = create_target("flops")
    saving = flops.marginal_costs(model, inventory, digits.input_shape)[gid].remove
    budget = flops.predict(model, digits.input_shape).total - 2.5 * saving
    inventory2, result = prune_to_budget_(model, inventory, flops, budget, digits.input_shape, importance,
                                          PruneConfig(min_fraction=0.0))
    assert result.removed == {gid: 3}
    torch.testing.assert_close(model.get_submodule(inventory[gid].producers[0]).weight.detach(), kept)


def test_unreachable_budget_is_reported(digits):
    from energysplit.errors import BudgetError

    model = create_model("vgg_small", width=0.25)
    inventory = build_inventory(model, digits.input_shape)
    flops = create_target("flops")
    with pytest.raises(BudgetError, match="unreachable"):
        prune_to_budget_(model, inventory, flops, 1.0, digits.input_shape, l1_importance(model, inventory))


def test_best_effort_pruning_stops_at_the_cheapest_reachable_model(digits):
    model = create_model("vgg_small", width=0.25)
    start = copy.deepcopy(model)
    inventory = build_inventory(model, digits.input_shape)
    flops = create_target("flops")
    inventory, result = prune_to_budget_(model, inventory, flops, 1.0, digits.input_shape,
                                         l1_importance(model, inventory), PruneConfig(best_effort=True))
    assert 1.0 < result.final_cost < result.start_cost
    assert result.final_cost == flops.predict(model, digits.input_shape).total
    assert model(torch.randn(2, *digits.input_shape)).shape == (2, 10)
    from energysplit.errors import BudgetError

    fresh = create_model("vgg_small", width=0.25)
    fresh.load_state_dict(start.state_dict())
    with pytest.raises(BudgetError, match=f"at {result.final_cost:.4g} MACs"):  # stops where the strict run gives up
        prune_to_budget_(fresh, build_inventory(fresh, digits.input_shape), flops, 1.0, digits.input_shape,
                         l1_importance(fresh, build_inventory(fresh, digits.input_shape)))


def test_splitting_seeds_at_the_cheapest_model_when_its_seed_budget_is_unreachable(digits):
    """70% of the budget lies below what pruning can reach (as with a latency target's fixed overhead):
    splitting seeds at the cheapest pruned model and still lands under the budget; a budget below even
    that model is a clear error."""
    from energysplit.errors import BudgetError

    torch.manual_seed(0)
    model = create_model("vgg_small", width=0.25)
    flops = create_target("flops")
    probe = copy.deepcopy(model)
    inventory = build_inventory(probe, digits.input_shape)
    _, floor = prune_to_budget_(probe, inventory, flops, 0.0, digits.input_shape, l1_importance(probe, inventory),
                                PruneConfig(best_effort=True))
    budget = floor.final_cost / 0.8  # seed budget 0.7 x budget = 0.875 x the cheapest model
    logs = []
    ctx = _ctx(digits, flops, budget)
    ctx.log = logs.append
    out = METHODS.get("splitting-grow")(copy.deepcopy(model), ctx)
    assert flops.predict(out, digits.input_shape).total <= budget
    assert any("below the cheapest pruned model" in line for line in logs)
    with pytest.raises(BudgetError, match="unreachable by pruning"):
        METHODS.get("splitting-grow")(copy.deepcopy(model), _ctx(digits, flops, 0.5 * floor.final_cost))


def test_taylor_importance_ranks_a_dead_channel_last(digits):
    torch.manual_seed(0)
    model = create_model("vgg_small", width=0.25)
    inventory = build_inventory(model, digits.input_shape)
    group = inventory.prunable()[0]
    with torch.no_grad():
        model.get_submodule(group.producers[0]).weight[2].zero_()
        bn = model.get_submodule(group.followers[0])
        bn.weight[2] = 0.0
        bn.bias[2] = 0.0
    batches = [(digits.train.tensors[0][:64], digits.train.tensors[1][:64])]
    scores = taylor_importance(model, inventory, batches)
    assert scores[group.id][2] == 0 and scores[group.id].max() > 0


def test_cost_aware_ranking_reaches_the_pruner(digits, monkeypatch):
    import energysplit.pruning.prune as pruning

    seen = []
    real = pruning.prune_to_budget_

    def spy(*args, **kwargs):
        seen.append(args[6] if len(args) > 6 else kwargs.get("config"))
        return real(*args, **kwargs)

    monkeypatch.setattr(pruning, "prune_to_budget_", spy)
    torch.manual_seed(0)
    model = create_model("vgg_small", width=0.25)
    energy = create_target("mobile")
    budget = 0.5 * energy.predict(model, digits.input_shape).total
    ctx = _ctx(digits, energy, budget)
    ctx.cost_aware = True
    out = METHODS.get("l1")(copy.deepcopy(model), ctx)
    assert seen and seen[0].cost_aware
    assert energy.predict(out, digits.input_shape).total <= budget
