"""Every registered method, end to end on a tiny model: it meets the budget and returns a working model."""
import copy

import pytest
import torch

from energysplit import METHODS, MethodContext, TrainConfig, create_model, create_target
from energysplit.graph.trace import build_inventory


@pytest.fixture(scope="module")
def tiny(digits):
    torch.manual_seed(0)
    return create_model("vgg_small", width=0.25), digits.subset(train=256, val=64)


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_meets_the_budget_and_returns_a_working_model(tiny, method):
    model, data = tiny
    energy = create_target("mobile")
    base = energy.predict(model, data.input_shape).total
    budget = 0.5 * base
    records = {}
    ctx = MethodContext(data, energy, budget, TrainConfig(epochs=0.25, batch_size=64, progress=False),
                        arch={"name": "vgg_small", "kwargs": {"width": 0.25}}, score_batches=2, records=records,
                        log=lambda s: None)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    out = METHODS.get(method)(copy.deepcopy(model), ctx)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the input is left alone
    final = energy.predict(out, data.input_shape).total
    assert 0.3 * budget < final <= budget, f"{method}: {final:.4g} for a budget of {budget:.4g}"
    x = torch.randn(3, *data.input_shape)
    logits = out.eval()(x)
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()
    assert build_inventory(out, data.input_shape).widths()  # the result traces again
    if method.startswith("splitting"):
        assert records["growth_steps"], f"{method} split in at least one step"


class GroupedNet(torch.nn.Module):
    """A ResNeXt-style stem: a grouped 3x3 conv (4 groups) between two dense convs."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.body = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                                  nn.Conv2d(32, 32, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                                  nn.Conv2d(32, 48, 1, bias=False), nn.BatchNorm2d(48), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(48, 10))

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize("method", [m for m in METHODS.names() if m != "uniform-scratch"])
def test_every_method_keeps_a_grouped_conv_valid(digits, method):
    """Groups a grouped conv cuts into blocks lose (or gain) the same number of channels in every block."""
    torch.manual_seed(0)
    model = GroupedNet()
    data = digits.subset(train=256, val=64)
    inventory = build_inventory(model, data.input_shape)
    assert any(g.blocks == 4 and g.prunable for g in inventory)
    flops = create_target("flops")
    budget = 0.5 * flops.predict(model, data.input_shape).total
    ctx = MethodContext(data, flops, budget, TrainConfig(epochs=0.25, batch_size=64, progress=False),
                        score_batches=2, log=lambda s: None)
    out = METHODS.get(method)(copy.deepcopy(model), ctx)
    assert flops.predict(out, data.input_shape).total <= budget
    conv = out.body[3]
    assert conv.groups == 4 and conv.in_channels % 4 == 0 and conv.out_channels % 4 == 0
    assert conv.in_channels // 4 >= 2  # still a grouped conv, not a depthwise one
    if method != "splitting-grow":  # every pruner (and reallocation's) reaches into the grouped conv's groups
        assert min(conv.in_channels, conv.out_channels) < 32
    assert out.eval()(torch.randn(2, *data.input_shape)).shape == (2, 10)
