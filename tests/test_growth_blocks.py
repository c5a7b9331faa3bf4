"""Growth through grouped convolutions (issue 18, item 1): a group that a grouped conv cuts into G blocks
is scored and split by units of one neuron per block, so every block keeps the same width and the conv
its group count; the function is unchanged by the split itself (eps = 0). Training is stubbed: the loop's
selection and surgery are under test, not the fine-tuning."""
import copy
from dataclasses import replace

import pytest
import torch
from torch import nn

import energysplit.splitting.growth as growth
from energysplit.cost.estimator import create_target
from energysplit.graph.trace import build_inventory
from energysplit.splitting.growth import GrowConfig, grow
from energysplit.training.loop import TrainConfig, TrainResult

GROUPS = 4


class GroupedNet(nn.Module):
    """A ResNeXt-like bottleneck: 1x1 conv -> grouped 3x3 conv (4 groups) -> 1x1 conv, SiLU between."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1, groups=GROUPS, bias=False), nn.BatchNorm2d(width), nn.SiLU(),
            nn.Conv2d(width, 12, 1, bias=False), nn.BatchNorm2d(12), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 10))

    def forward(self, x):
        return self.features(x)


@pytest.fixture
def trained(monkeypatch):
    """The growth loop's trainer replaced by a stub that only records the calls."""
    calls = []

    def stub(model, data, config, val=None, desc="train", **kw):
        calls.append(desc)
        return TrainResult(config.epochs, 0, 0.0, 0.0, 0.5, 1.0)

    monkeypatch.setattr(growth, "train", stub)
    return calls


def _grouped(inventory):
    return [g for g in inventory.splittable() if g.blocks > 1]


@pytest.mark.parametrize("selector", ["lp", "random"])
def test_grouped_conv_groups_grow_by_whole_units(digits, trained, selector):
    torch.manual_seed(0)
    model = GroupedNet().eval()
    inventory = build_inventory(model, digits.input_shape)
    blocked = _grouped(inventory)
    assert blocked and all(g.blocks == GROUPS for g in blocked)
    before = inventory.widths()
    flops = create_target("flops")
    budget = 1.8 * flops.predict(model, digits.input_shape).total
    config = GrowConfig(score_samples=128, selector=selector, planned_steps=2, max_steps=2,
                        finetune=TrainConfig(epochs=0.1, progress=False),
                        final_finetune=TrainConfig(epochs=0.1, progress=False))
    result = grow(copy.deepcopy(model), digits, flops, budget, config, log=lambda s: None)
    grown = result.model
    after = build_inventory(grown, digits.input_shape).widths()
    conv = grown.features[3]
    assert conv.groups == GROUPS and conv.in_channels % GROUPS == 0 and conv.out_channels % GROUPS == 0
    for g in blocked:  # every block alike: whole units of GROUPS neurons
        assert (after[g.id] - before[g.id]) % GROUPS == 0
    assert any(after[g.id] > before[g.id] for g in blocked)  # and they do grow
    assert flops.predict(grown, digits.input_shape).total <= budget
    with torch.no_grad():
        assert grown.eval()(torch.randn(3, *digits.input_shape)).shape == (3, 10)


def test_a_unit_split_at_eps_zero_keeps_the_function(digits):
    """One growth step's plan on the grouped groups, applied at eps = 0: outputs unchanged."""
    from energysplit.graph.plan import Plan
    from energysplit.graph.surgery import apply_plan_
    from energysplit.splitting.planning import plan_step
    from energysplit.splitting.scores import splitting_scores

    torch.manual_seed(1)
    model = GroupedNet().eval()
    inventory = build_inventory(model, digits.input_shape)
    blocks = {g.id: g.blocks for g in _grouped(inventory)}
    batches = digits.train
    scores = splitting_scores(model, batches, inventory, "exact", groups=list(blocks))
    costs = {gid: 1.0 for gid in scores}
    ops, sizes = plan_step(scores, costs, 2 * GROUPS, GrowConfig(), inventory.widths(), blocks=blocks)
    assert ops and all(size == GROUPS for size in sizes)
    ops = [replace(op, eps=0.0) for op in ops]
    x = torch.randn(4, *digits.input_shape)
    with torch.no_grad():
        expected = model(x)
        apply_plan_(model, inventory, Plan(ops))
        assert torch.allclose(model(x), expected, atol=1e-5)
    assert sum(m.out_channels for m in (model.features[0], model.features[3])) == 32 + 2 * GROUPS
