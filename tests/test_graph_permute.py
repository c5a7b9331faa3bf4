"""Channel permutations and cuts: a channel shuffle of whole equal groups couples them and interleaves
their columns; chunk into whole groups couples the pieces; other cuts freeze with a named reason. Splits
at eps = 0 and zero-column removals stay exact (ShuffleNetV2)."""
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


class Shuffle(nn.Module):
    """Two groups concatenated, shuffled (torchvision's channel_shuffle), BN on the result, chunked into
    two pieces read by two convs, whose outputs are chunked back from a concat."""

    def __init__(self):
        super().__init__()
        self.p, self.q = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(8)
        self.c = nn.Conv2d(8, 6, 1)
        self.d, self.e = nn.Conv2d(6, 5, 1), nn.Conv2d(6, 5, 1)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        y = tv.models.shufflenetv2.channel_shuffle(torch.cat([self.p(x), self.q(x)], 1), 2)
        y = F.relu(self.c(F.relu(self.bn(y))))
        a, b = torch.cat([self.d(y), self.e(y)], 1).chunk(2, dim=1)
        return self.head((a * b).mean((2, 3)))


def test_shuffle_couples_the_parts_and_interleaves_their_columns():
    inv = build_inventory(Shuffle(), (3, 6, 6))
    g = inv["p:out"]
    assert g.producers == ("p", "q") and g.prunable and g.splittable  # coupled widths: one joint neuron per pair
    assert g.consumers == (Consumer("c", 0, 2),) and g.partial_followers == (Consumer("bn", 0, 2),)
    assert inv["d:out"].producers == ("d", "e")  # the chunk's pieces are coupled: they keep equal widths


def test_shuffle_split_and_removal_are_exact():
    torch.manual_seed(0)
    model = randomise_(Shuffle())
    inv = build_inventory(model, (3, 6, 6))
    x = torch.randn(4, 3, 6, 6)
    with torch.no_grad():
        before = model(x)
    inv = apply_plan_(model, inv, Plan([Split("p:out", 1), Split("d:out", 2)]))
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-4)
        model.c.weight[:, 4:6] = 0  # group channel 2: shuffled columns 4 (from p) and 5 (from q)
        before = model(x)
    apply_plan_(model, inv, Plan([Remove("p:out", (2,))]))
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-4)
    assert model.p.out_channels == model.q.out_channels == 4 and model.bn.num_features == 8


def test_shufflenet_v2_is_mapped_exact_and_costed():
    torch.manual_seed(0)
    model = randomise_(tv.models.shufflenet_v2_x0_5(weights=None, num_classes=10))
    inv = build_inventory(model, (3, 64, 64))
    assert (len(inv), len(inv.splittable()), len(inv.prunable())) == (35, 18, 18)
    frozen = [g for g in inv if not g.prunable and g.reason != "model output"]
    assert frozen and all("Tensor.chunk on the channel dim cuts through a group" in g.reason for g in frozen)
    for target in ("mobile", "flops"):
        report = create_target(target).estimate(model, (3, 64, 64))
        assert report.total > 0 and not report.unsupported
    split_and_remove(model, inv, torch.randn(2, 3, 64, 64))
