"""Grouped convolutions: their input and output channels form blocks (one per conv group) that every
edit changes alike; splits at eps = 0 and zero-column removals stay exact, costs follow the MAC formula,
and the ONNX export of a pruned block matches PyTorch."""
import pytest
import torch
import torch.nn.functional as F
import torchvision as tv
from torch import nn

from energysplit.cost.estimator import create_target
from energysplit.errors import EnergySplitError
from energysplit.graph.alignment import block_units
from energysplit.graph.plan import Plan, Remove, Split
from energysplit.graph.surgery import apply_plan_, direction_shape
from energysplit.graph.trace import build_inventory
from test_surgery import randomise_


class ResNeXtBlock(nn.Module):
    """1x1 -> grouped 3x3 (4 groups of 4 in, 4 groups of 2 out) -> 1x1, a residual, a linear head."""

    def __init__(self):
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(3, 16, 1, bias=False), nn.BatchNorm2d(16)
        self.b, self.bn_b = nn.Conv2d(16, 8, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(8)
        self.c, self.bn_c = nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        y = F.relu(self.bn_a(self.a(x)))
        z = F.relu(self.bn_b(self.b(y)))
        out = F.relu(self.bn_c(self.c(z)) + y)
        return self.head(out.mean((2, 3)))


def zero_columns_(model, group, channels):
    """Zero the consumers' weights that read ``channels`` (a grouped consumer: only its own group's rows)."""
    with torch.no_grad():
        for c in group.consumers:
            m = model.get_submodule(c.module)
            w, groups = m.weight, getattr(m, "groups", 1)
            per_in, per_out = w.shape[1], w.shape[0] // groups
            for ch in channels:
                col = c.offset + ch * c.repeat
                rows = slice((col // per_in) * per_out, (col // per_in + 1) * per_out) if groups > 1 else slice(None)
                w[rows, col % per_in if groups > 1 else slice(col, col + c.repeat)] = 0


def split_and_remove(model, inv, x, seed=0):
    """eps = 0 splits (one unit of channels; directions on half where splittable) then a zero-column
    removal, in every prunable group."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        before = model(x)
    ops = []
    for group in inv.prunable():  # duplication only (direction None) where not splittable
        order = torch.randperm(group.width, generator=g).tolist()
        for i, c in enumerate(block_units(order, group.width, group.blocks)[0]):
            shape = direction_shape(model, group.producers)  # flat over the producers of a residual stream
            v = torch.randn(shape, generator=g) if i % 2 and group.splittable else None
            ops.append(Split(group.id, c, None if v is None else v / v.norm(), 0.0))
    inv = apply_plan_(model, inv, Plan(ops))
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-4)
    ops = []
    for group in inv.prunable():
        units = block_units(torch.randperm(group.width, generator=g).tolist(), group.width, group.blocks)
        if group.width // group.blocks > 2:
            zero_columns_(model, group, units[0])
            ops.append(Remove(group.id, tuple(units[0])))
    with torch.no_grad():
        before = model(x)
    inv = apply_plan_(model, inv, Plan(ops))
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-4)
    return inv


def test_grouped_conv_blocks_in_inventory():
    inv = build_inventory(ResNeXtBlock(), (3, 8, 8))
    a, b = inv["a:out"], inv["b:out"]
    assert (a.blocks, a.block_width, b.blocks, b.block_width) == (4, 4, 4, 2)
    assert b.splittable and b.prunable and a.prunable and "b" in [c.module for c in a.consumers]
    assert a.producers == ("a", "c") and a.splittable  # coupled to c's output by the residual add: split jointly


class CatGrouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.p, self.q, self.g = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1), nn.Conv2d(8, 4, 3, groups=2)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.g(torch.cat([self.p(x), self.q(x)], 1)).mean((2, 3)))


def test_grouped_conv_reading_a_concat_or_one_channel_blocks_is_frozen():
    inv = build_inventory(CatGrouped(), (3, 6, 6))
    for gid in ("p:out", "q:out"):
        assert not inv[gid].prunable and "grouped conv g (groups=2) reads a concat" in inv[gid].reason
    assert inv["g:out"].blocks == 2 and inv["g:out"].prunable
    inv = build_inventory(nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 8, 1, groups=4), nn.Flatten(),
                                        nn.Linear(8 * 16, 2)), (3, 4, 4))
    assert inv["1:out"].blocks == 4 and inv["1:out"].prunable  # blocks of 2
    assert inv["0:out"].blocks == 4 and not inv["0:out"].prunable and "one channel" in inv["0:out"].reason


def test_grouped_block_split_and_removal_preserve_function():
    torch.manual_seed(0)
    model = randomise_(ResNeXtBlock())
    inv = build_inventory(model, (3, 8, 8))
    new = split_and_remove(model, inv, torch.randn(3, 3, 8, 8))
    assert new["b:out"].width == 8 and new["a:out"].width == 16  # +4 -4, +4 -4
    assert model.b.weight.shape == (8, 4, 3, 3) and model.b.groups == 4


def test_grouped_split_copy_stays_in_its_block():
    torch.manual_seed(0)
    model = ResNeXtBlock()
    inv = build_inventory(model, (3, 8, 8))
    w = model.b.weight.detach().clone()
    v = F.normalize(torch.randn(4, 3, 3).flatten(), dim=0).view(4, 3, 3)
    apply_plan_(model, inv, Plan([Split("b:out", 1, v, 0.5), Split("b:out", 2), Split("b:out", 5), Split("b:out", 7)]))
    new = model.b.weight.detach()
    assert new.shape == (12, 4, 3, 3)  # blocks of 3: [0, 1, copy of 1], [2, 3, copy of 2], ...
    torch.testing.assert_close(new[1], w[1] + 0.5 * v)
    torch.testing.assert_close(new[2], w[1] - 0.5 * v)
    torch.testing.assert_close(new[5], w[2])
    torch.testing.assert_close(new[[0, 3, 4, 6, 7, 9, 10]], w[[0, 2, 3, 4, 5, 6, 7]])


def test_unbalanced_plans_on_blocks_are_rejected():
    model = ResNeXtBlock()
    inv = build_inventory(model, (3, 8, 8))
    for plan, words in ((Plan([Remove("a:out", (0, 1, 4, 8))]), "remove the same number"),
                        (Plan([Split("b:out", 0)]), "split the same number"),
                        (Plan([Remove("b:out", (0, 2, 4, 6)), Remove("a:out", (0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14))]),
                         "one input and one output channel per group")):
        with pytest.raises(EnergySplitError, match=words):
            apply_plan_(model, inv, plan)


def test_block_units_take_the_kth_ranked_channel_of_each_block():
    assert block_units([5, 0, 9, 1, 15, 12, 7, 2, 8, 13], 16, 4) == [[0, 5, 9, 15], [1, 7, 8, 12]]
    assert block_units([3, 1], 4, 1) == [[3], [1]]


def test_grouped_conv_costs_follow_the_mac_formula_after_pruning():
    torch.manual_seed(0)
    model = ResNeXtBlock()
    inv = build_inventory(model, (3, 8, 8))
    apply_plan_(model, inv, Plan([Remove("a:out", (0, 4, 8, 12)), Split("b:out", 0), Split("b:out", 2),
                                  Split("b:out", 4), Split("b:out", 6)]))
    rows = {r["layer"]: r for r in create_target("flops").estimate(model, (3, 8, 8)).layers}
    assert model.b.in_channels == 12 and model.b.out_channels == 12
    assert rows["b"]["cost"] == 12 * (12 // 4) * 3 * 3 * 8 * 8  # Cout * Cin/groups * k*k * H*W
    assert rows["c"]["cost"] == 12 * 12 * 8 * 8 and rows["a"]["cost"] == 12 * 3 * 8 * 8  # a, c coupled: 12 out
    assert create_target("mobile").estimate(model, (3, 8, 8)).total > 0


def test_onnx_export_of_pruned_grouped_block_matches_pytorch(tmp_path):
    from energysplit.pipeline.export import export_onnx

    torch.manual_seed(0)
    model = randomise_(ResNeXtBlock())
    inv = build_inventory(model, (3, 8, 8))
    apply_plan_(model, inv, Plan([Remove("a:out", (1, 5, 9, 13)), Remove("b:out", (0, 3, 4, 7))]))
    check = export_onnx(model, tmp_path / "block.onnx", (3, 8, 8), atol=1e-4)
    assert check.max_abs_diff <= 1e-4 and model.b.weight.shape == (4, 3, 3, 3)


@pytest.mark.parametrize("name, counts", [("resnext50_32x4d", (38, 37, 37)), ("regnet_x_400mf", (50, 49, 49))])
def test_torchvision_grouped_networks_are_no_longer_frozen(name, counts):
    torch.manual_seed(0)
    model = randomise_(getattr(tv.models, name)(weights=None, num_classes=10))
    inv = build_inventory(model, (3, 64, 64))
    assert (len(inv), len(inv.splittable()), len(inv.prunable())) == counts
    grouped = [g for g in inv if g.blocks > 1]
    assert grouped and all(g.splittable for g in grouped)
    split_and_remove(model, inv, torch.randn(2, 3, 64, 64))
