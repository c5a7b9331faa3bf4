"""Per-channel layers (BatchNorm, depthwise conv) on a concatenation of several groups: each segment
follows its own group, so eps = 0 splits and zero-column removals stay exact (DenseNet)."""
import pytest
import torch
import torch.nn.functional as F
import torchvision as tv
from torch import nn

from energysplit.cost.estimator import create_target
from energysplit.graph.inventory import Consumer
from energysplit.graph.plan import Plan, Remove, Split
from energysplit.graph.surgery import apply_plan_
from energysplit.graph.trace import build_inventory
from test_graph_grouped import split_and_remove
from test_surgery import randomise_


class CatBN(nn.Module):
    """BatchNorm and a depthwise conv on torch.cat of two groups, then a 1x1 conv and a linear head."""

    def __init__(self):
        super().__init__()
        self.p, self.q = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 6, 1)
        self.bn, self.dw, self.bn2 = nn.BatchNorm2d(10), nn.Conv2d(10, 10, 3, padding=1, groups=10), nn.BatchNorm2d(10)
        self.c = nn.Conv2d(10, 7, 1)
        self.head = nn.Linear(7, 3)

    def forward(self, x):
        y = F.relu(self.bn(torch.cat([self.p(x), self.q(x)], 1)))
        y = F.silu(self.bn2(self.dw(y)))
        return self.head(self.c(y).mean((2, 3)))


def small_densenet():
    return tv.models.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2, num_classes=5)


def test_concat_segments_follow_their_own_groups():
    inv = build_inventory(CatBN(), (3, 6, 6))
    p, q = inv["p:out"], inv["q:out"]
    assert p.partial_followers == (Consumer("bn"), Consumer("dw"), Consumer("bn2"))
    assert q.partial_followers == (Consumer("bn", 4), Consumer("dw", 4), Consumer("bn2", 4))
    assert p.prunable and q.prunable and p.splittable and p.followers == ()
    assert "branches after its chain" in p.reason  # the chain stops at the concat


def test_split_and_remove_through_bn_and_depthwise_on_a_concat():
    torch.manual_seed(0)
    model = randomise_(CatBN())
    inv = build_inventory(model, (3, 6, 6))
    x = torch.randn(4, 3, 6, 6)
    with torch.no_grad():
        before = model(x)
        bn_mean = model.bn.running_mean.clone()
        dw = model.dw.weight.clone()
    inv = apply_plan_(model, inv, Plan([Split("p:out", 1), Split("q:out", 0), Split("q:out", 5), Remove("p:out", (3,))]))
    with torch.no_grad():
        # p keeps 0, 1, 2 then its copy of 1; q follows at offset 4: 0..5 then copies of 0 and 5
        order = [0, 1, 2, 1, 4, 5, 6, 7, 8, 9, 4, 9]
        torch.testing.assert_close(model.bn.running_mean, bn_mean[order])
        torch.testing.assert_close(model.dw.weight, dw[order])
        assert model.dw.groups == model.dw.in_channels == 12 and model.bn2.num_features == 12
        model.c.weight[:, 3] = 0  # p's copy, now removed with zero columns: no effect
        after = model(x)
    apply_plan_(model, inv, Plan([Remove("p:out", (3,))]))
    with torch.no_grad():
        torch.testing.assert_close(model(x), after, atol=1e-5, rtol=1e-4)
    assert model.bn.num_features == 11 and model.c.in_channels == 11
    assert not torch.allclose(after, before)  # the zeroed column mattered before the removal


def test_small_densenet_is_exact_and_costed():
    torch.manual_seed(0)
    model = randomise_(small_densenet())
    inv = build_inventory(model, (3, 32, 32))
    assert len(inv.prunable()) == len(inv) - 1 and len(inv.splittable()) == len(inv) - 1
    offsets = [c.offset for c in inv["features.denseblock1.denselayer1.conv2:out"].partial_followers]
    assert offsets == [16, 16]  # after the 16 stem channels in denselayer2.norm1 and transition1.norm
    split_and_remove(model, inv, torch.randn(2, 3, 32, 32))
    for target in ("mobile", "flops"):
        report = create_target(target).estimate(model, (3, 32, 32))
        assert report.total > 0 and not report.unsupported


@pytest.mark.slow
def test_densenet121_bn_on_concat_is_no_longer_refused():
    torch.manual_seed(0)
    model = randomise_(tv.models.densenet121(weights=None, num_classes=10))
    inv = build_inventory(model, (3, 64, 64))
    assert (len(inv), len(inv.splittable()), len(inv.prunable())) == (121, 120, 120)
    split_and_remove(model, inv, torch.randn(2, 3, 64, 64))
