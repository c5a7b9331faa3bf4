"""The adjoint jet's conv pullbacks (torch.nn.grad) against the literal term jet (autograd through the chain),
for 1d/2d/3d convs with stride, dilation, groups and a non-zero padding mode (the autograd fallback)."""
import pytest
import torch
from torch import nn

from energysplit.graph.inventory import ChainOp, Consumer, Group, Inventory
from energysplit.splitting.fast import splitting_products
from energysplit.splitting.jets import weight_grad
from energysplit.splitting.solver import evaluating


class ConvChain(nn.Module):
    """producer conv -> BN -> SiLU -> depthwise conv -> Tanh -> mean -> head, in ``dims`` spatial dims."""

    def __init__(self, dims, producer_kw, dw_kw, cin=4, width=4, classes=3):
        super().__init__()
        conv, bn = {1: (nn.Conv1d, nn.BatchNorm1d), 2: (nn.Conv2d, nn.BatchNorm2d), 3: (nn.Conv3d, nn.BatchNorm3d)}[dims]
        self.conv, self.bn, self.a1 = conv(cin, width, 3, bias=False, **producer_kw), bn(width), nn.SiLU()
        self.dw, self.a2 = conv(width, width, 3, groups=width, **dw_kw), nn.Tanh()
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = self.a2(self.dw(self.a1(self.bn(self.conv(x)))))
        return self.head(h.flatten(2).mean(2))


def _inventory(width=4):
    chain = (ChainOp("bn", "bn"), ChainOp("act", "a1", "silu"), ChainOp("dw", "dw"), ChainOp("act", "a2", "tanh"))
    group = Group("conv", width, ("conv",), chain, ("bn", "dw"), (Consumer("head"),))
    return Inventory({group.id: group})


CASES = {
    "1d strided dilated": (1, {"stride": 2, "padding": 2, "dilation": 2}, {"stride": 2, "padding": 1, "dilation": 1}),
    "2d grouped dilated": (2, {"stride": 1, "padding": 1, "groups": 2}, {"stride": 2, "padding": 2, "dilation": 2}),
    "2d reflect dw": (2, {"stride": 2, "padding": 1}, {"padding": 1, "padding_mode": "reflect"}),
    "2d reflect producer": (2, {"padding": 1, "padding_mode": "circular"}, {"padding": 1}),
    "3d strided": (3, {"stride": (1, 2, 1), "padding": 1}, {"stride": 2, "padding": (1, 0, 1)}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_adjoint_engine_matches_the_literal_term_engine(case):
    dims, producer_kw, dw_kw = CASES[case]
    torch.manual_seed(0)
    model = ConvChain(dims, producer_kw, dw_kw).double()
    model.bn.running_mean.normal_(0, 0.3)
    model.bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(5, 4, *([7] * dims), dtype=torch.float64)
    y = torch.randint(0, 3, (5,))
    groups = _inventory().splittable()
    directions = {"conv": torch.randn_like(model.conv.weight)}
    with evaluating(model):
        adjoint, term = (splitting_products(model, (x, y), groups, directions, engine=e)["conv"]
                         for e in ("adjoint", "term"))
    assert term.abs().max() > 0
    torch.testing.assert_close(adjoint, term, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_weight_grad_is_the_producers_autograd_weight_gradient(dims):
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims](4, 6, 3, stride=2, padding=1, dilation=2, groups=2).double()
    x = torch.randn(3, 4, *([9] * dims), dtype=torch.float64)
    g = torch.randn_like(conv(x))
    weight = conv.weight.detach().clone().requires_grad_(True)
    expected = torch.autograd.grad(conv._conv_forward(x, weight, None), weight, g)[0]
    torch.testing.assert_close(weight_grad(conv, x, g), expected)
