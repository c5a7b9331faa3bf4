"""Growth bookkeeping (issue 17, item 2): every planned epoch is trained, and the last step fills the
budget to within one channel block, never above it. Training is stubbed (the loop's arithmetic is
under test, not the fine-tuning): every call is recorded with its epochs."""
import copy

import pytest
import torch

import energysplit.splitting.growth as growth
from energysplit.cost.estimator import create_target, marginal_costs_of
from energysplit.graph.trace import build_inventory
from energysplit.splitting.growth import GrowConfig, grow
from energysplit.splitting.planning import fill_blocks
from energysplit.splitting.solver import GroupScores
from energysplit.training.loop import TrainConfig, TrainResult
from energysplit.zoo import create_model


@pytest.fixture
def trained(monkeypatch):
    """Replace the growth loop's trainer by a stub; the list collects (desc, epochs) of every call."""
    calls = []

    def stub(model, data, config, val=None, desc="train", **kw):
        calls.append((desc, config.epochs))
        return TrainResult(config.epochs, 0, 0.0, 0.0, 0.5, 1.0)

    monkeypatch.setattr(growth, "train", stub)
    return calls


@pytest.fixture(scope="module")
def seed_model():
    torch.manual_seed(0)
    return create_model("vgg_small", width=0.25, act="silu")


def _config(**kw):
    return GrowConfig(score_samples=128, finetune=TrainConfig(epochs=0.2, progress=False),
                      final_finetune=TrainConfig(epochs=0.3, progress=False), **kw)


@pytest.mark.parametrize("budget_factor, max_steps", [(1 / 0.7, 4), (3.0, 6)])
def test_every_planned_epoch_is_trained(digits, seed_model, trained, budget_factor, max_steps):
    """Planned: 2 steps x 0.2 + 0.3 final = 0.7 epochs. From 70% of the budget one x1.4 step lands just
    under it and a fill without a fine-tune follows (its slice goes to the final fine-tune); at 3x the
    budget the steps past the plan take their slices from the final fine-tune, never more than is left."""
    flops = create_target("flops")
    budget = budget_factor * flops.predict(seed_model, digits.input_shape).total
    config = _config(planned_steps=2, max_steps=max_steps)
    result = grow(copy.deepcopy(seed_model), digits, flops, budget, config, log=lambda s: None)
    planned = 2 * 0.2 + 0.3
    assert sum(e for _, e in trained) == pytest.approx(planned)
    assert [e for d, e in trained if d != "final fine-tune"] == [s.epochs for s in result.steps]
    assert result.final_epochs == pytest.approx(planned - sum(s.epochs for s in result.steps))
    if budget_factor == 3.0:
        assert len(result.steps) > 3  # the case under test: steps past the plan eat the final fine-tune
    else:
        assert result.steps[-1].note == "fill" and len(result.steps) <= 2


def _block_bound(estimator, model, input_shape, multiple):
    """The marginal cost of one channel block in the dearest splittable group (at the grown model)."""
    inventory = build_inventory(model, input_shape)
    marginal = marginal_costs_of(estimator, model, inventory, input_shape, multiple)
    return multiple * max(marginal[g.id].add for g in inventory.splittable() if g.blocks == 1)


@pytest.mark.parametrize("multiple", [1, 4])
def test_last_step_fills_the_budget_to_within_one_block(digits, seed_model, trained, multiple):
    flops = create_target("flops")
    start = flops.predict(seed_model, digits.input_shape).total
    budget = 1.55 * start  # one x1.4 step, then under min_step_fraction of a step is left: a fill
    left = {}
    for fill in (True, False):
        config = _config(planned_steps=2, max_steps=4, channel_multiple=multiple, fill=fill,
                         min_step_fraction=0.9)
        result = grow(copy.deepcopy(seed_model), digits, flops, budget, config, log=lambda s: None)
        assert start < result.final_cost <= budget
        left[fill] = (budget - result.final_cost) / _block_bound(flops, result.model, digits.input_shape, multiple)
        if fill:
            assert result.steps[-1].note == "fill" and result.stop_reason.startswith("budget filled")
            widths = build_inventory(result.model, digits.input_shape).widths()
            before = build_inventory(seed_model, digits.input_shape).widths()
            assert all(widths[g] == before[g] or widths[g] % multiple == 0 for g in widths)
    assert left[True] <= 1.0 < left[False], left  # without the fill, more than a block is left


def test_fill_blocks_take_every_neuron_in_ratio_order_within_caps_and_blocks():
    gen = torch.Generator().manual_seed(0)
    scores = {f"g{i}": GroupScores(torch.randn(10, generator=gen), torch.randn(10, 3, generator=gen))
              for i in range(3)}
    costs = {"g0": 1.0, "g1": 2.0, "g2": 3.0}
    widths = {"g0": 6, "g1": 8, "g2": 7}
    out = fill_blocks(scores, costs, 1e9, 4, widths, caps={"g2": 5})
    # every neuron of g0 and g1 in blocks of 4 after the first one that reaches a multiple; g2 capped at 5
    sizes = {g: [b.size for b in out if b.group == g] for g in scores}
    assert sizes == {"g0": [2, 4, 4], "g1": [4, 4], "g2": [1, 4]}
    assert any(n.eigval > 0 for b in out for n in b.neurons())  # the fill takes any lambda
    for g in scores:  # a group's blocks in order: its most negative lambdas first
        lams = [n.eigval for b in out if b.group == g for n in b.neurons()]
        assert lams == sorted(lams)
    ratios = [b.ratio for b in out]
    assert ratios[0] == min(ratios) and ratios[0] < 0
    # a budget stops the list one block after the marginal costs pass it
    short = fill_blocks(scores, costs, 5.0, 1, widths)
    assert sum(b.cost for b in short[:-1]) <= 5.0 < sum(b.cost for b in short)
    # neurons already chosen are left out, and the widths continue from them
    chosen = [n for b in out[:1] for n in b.neurons()]
    rest = fill_blocks(scores, costs, 1e9, 4, widths, chosen=chosen)
    assert not {(n.group, n.channel) for n in chosen} & {(n.group, n.channel) for b in rest for n in b.neurons()}
    assert [b.size for b in rest if b.group == chosen[0].group][0] == 4


@pytest.mark.parametrize("fill", [False, True])
def test_a_plan_lists_the_chosen_blocks_in_the_selectors_own_order(fill):
    """fit_plan keeps a prefix of the plan, so the order decides what a binding limit keeps: lambda / T for the
    energy-aware selectors, lambda alone for cost-blind (S2D). Group "cheap" has the better ratios, "dear" the
    more negative lambdas; a budget that takes both puts "cheap" first for lp and "dear" first for cost-blind."""
    from energysplit.splitting.planning import plan_step

    scores = {"cheap": GroupScores(torch.tensor([-1.0, -0.9, -0.8, 0.5]), torch.ones(4, 2)),
              "dear": GroupScores(torch.tensor([-3.0, -2.9, -2.8, 0.5]), torch.ones(4, 2))}
    costs, widths = {"cheap": 1.0, "dear": 10.0}, {"cheap": 4, "dear": 4}
    first = {}
    for selector in ("lp", "greedy", "cost-blind"):
        ops, sizes = plan_step(scores, costs, 33.0, GrowConfig(selector=selector), widths, fill=fill)
        assert {op.group for op in ops} == {"cheap", "dear"} and sum(sizes) == len(ops)
        first[selector] = [op.group for op in ops[:3]]
    assert first["lp"] == first["greedy"] == ["cheap"] * 3
    assert first["cost-blind"] == ["dear"] * 3
    # the fill (the last step's top-up) follows the same order
    assert [b.group for b in fill_blocks(scores, costs, 11.0, 1, widths, by="eigval")] == ["dear", "dear"]
    assert [b.group for b in fill_blocks(scores, costs, 11.0, 1, widths)][:3] == ["cheap"] * 3
