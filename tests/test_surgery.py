"""Surgery: function preservation (eps = 0 splits, removing zero-weight channels), exact widths and
parameter counts, the O(eps^2) loss change of a split, and the split-input padding of the direction."""
import copy
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
import torchvision as tv
from torch import nn

from energysplit.errors import EnergySplitError
from energysplit.graph.trace import build_inventory
from energysplit.graph.plan import Plan, Remove, Split
from energysplit.graph.surgery import apply_plan_
from energysplit.zoo import create_model


class CatResNet(nn.Module):
    """torch.cat of two branches, a functional residual add, a one-output conv and a flatten head."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(3, 5, 1, bias=False)
        self.bn = nn.BatchNorm2d(5)
        self.c = nn.Conv2d(11, 8, 3, padding=1)
        self.d = nn.Conv2d(8, 8, 1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.one = nn.Conv2d(8, 1, 1)
        self.head = nn.Linear(9 * 4 * 4, 3)

    def forward(self, x):
        y = torch.cat([F.silu(self.a(x)), torch.tanh(self.bn(self.b(x)))], dim=1)
        z = F.relu(self.c(y))
        z = torch.add(z, F.gelu(self.dw(self.d(z))))
        z = torch.cat([z, torch.sigmoid(self.one(z))], 1)
        return self.head(torch.flatten(F.avg_pool2d(z, 2), 1))


MODELS = {
    "tv_mobilenet_v2": (lambda: tv.models.mobilenet_v2(weights=None, num_classes=10), (3, 32, 32)),
    "tv_mobilenet_v3_small": (lambda: tv.models.mobilenet_v3_small(weights=None, num_classes=10), (3, 32, 32)),
    "tv_resnet18": (lambda: tv.models.resnet18(weights=None, num_classes=10), (3, 32, 32)),
    "tv_vgg11_bn": (lambda: tv.models.vgg11_bn(weights=None, num_classes=10), (3, 32, 32)),
    "zoo_mobilenet_v1": (lambda: create_model("mobilenet_v1", width=0.5), (1, 28, 28)),
    "cat_resnet": (CatResNet, (3, 8, 8)),
}


def randomise_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine terms so that a wrong BN edit changes the output."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))
    return model.eval()


def build(name):
    factory, shape = MODELS[name]
    torch.manual_seed(0)
    model = randomise_(factory())
    return model, build_inventory(model, shape), torch.randn(2, *shape)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def expected_params(model, inv, delta):
    """Parameter count after changing group widths by ``delta``, from each layer's shape (the oracle)."""
    rows, cols = {}, {}
    for g in inv:
        for name in g.producers + g.followers:
            rows[name] = rows.get(name, 0) + delta.get(g.id, 0)
        for c in g.consumers:
            cols[c.module] = cols.get(c.module, 0) + delta.get(g.id, 0) * c.repeat
    total = 0
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            total += 2 * (m.num_features + rows.get(name, 0))
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            out, cin, k = m.weight.shape[0], m.weight.shape[1], m.weight[0, 0].numel()
            depthwise = isinstance(m, nn.Conv2d) and m.groups == m.in_channels == m.out_channels > 1
            out += rows.get(name, 0)
            total += out * (cin + (0 if depthwise else cols.get(name, 0))) * k + out * (m.bias is not None)
        else:
            total += sum(p.numel() for p in m.parameters(recurse=False))
    return total


@pytest.mark.parametrize("share", [0.5, 0.3])
@pytest.mark.parametrize("name", list(MODELS))
def test_split_eps0_preserves_function_widths_and_params(name, share):
    model, inv, x = build(name)
    with torch.no_grad():
        before = model(x)
    g = torch.Generator().manual_seed(1)
    ops, touched = [], {}
    for group in inv.splittable():
        for i, c in enumerate(torch.randperm(group.width, generator=g)[:2].tolist()):
            w = model.get_submodule(group.producers[0]).weight[c]
            v = torch.randn(w.shape, generator=g) if i else None
            ops.append(Split(group.id, c, None if v is None else v / v.norm(), 0.0, share))
            touched[group.id] = touched.get(group.id, 0) + 1
    assert touched, "no splittable group"
    expected = expected_params(model, inv, touched)
    new_inv = apply_plan_(model, inv, Plan(ops))
    with torch.no_grad():
        after = model(x)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-4)
    assert list(new_inv.groups) == list(inv.groups)
    for gid, k in touched.items():
        assert new_inv[gid].width == inv[gid].width + k
        for p in new_inv[gid].producers:
            assert model.get_submodule(p).weight.shape[0] == inv[gid].width + k
    assert after.shape == before.shape and n_params(model) == expected


@pytest.mark.parametrize("name", list(MODELS))
def test_remove_zero_outgoing_channels_preserves_function(name):
    model, inv, x = build(name)
    g = torch.Generator().manual_seed(2)
    ops = []
    with torch.no_grad():
        for group in inv.prunable():
            chans = torch.randperm(group.width, generator=g)[:max(1, min(3, group.width - 2))].tolist()
            if group.width < 3:
                continue
            for c in group.consumers:
                w = model.get_submodule(c.module).weight
                for ch in chans:
                    w[:, c.offset + ch * c.repeat: c.offset + (ch + 1) * c.repeat] = 0
            ops.append(Remove(group.id, tuple(chans)))
        before = model(x)
    expected = expected_params(model, inv, {op.group: -len(op.channels) for op in ops})
    new_inv = apply_plan_(model, inv, Plan(ops))
    with torch.no_grad():
        after = model(x)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-4)
    for op in ops:
        assert new_inv[op.group].width == inv[op.group].width - len(op.channels)
    assert n_params(model) == expected


@pytest.mark.parametrize("name", ["tv_resnet18", "tv_mobilenet_v2", "cat_resnet"])
def test_residual_coupled_groups_split_and_remove_jointly(name):
    model, inv, x = build(name)
    coupled = [g for g in inv if len(g.producers) > 1]
    assert coupled and all(g.prunable and g.splittable for g in coupled)  # split jointly: test_joint_split.py
    with torch.no_grad():
        before = model(x)
    ops = [Split(g.id, 1) for g in coupled] + [Split(g.id, 0) for g in coupled]
    inv = apply_plan_(model, inv, Plan(ops))
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-4)
        for g in coupled:  # zero the outgoing weights of channel 2, then remove it everywhere
            for c in inv[g.id].consumers:
                model.get_submodule(c.module).weight[:, c.offset + 2 * c.repeat: c.offset + 3 * c.repeat] = 0
        before = model(x)
    apply_plan_(model, inv, Plan([Remove(g.id, (2,)) for g in coupled]))
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-4)
    for g in coupled:
        for p in g.producers:
            assert model.get_submodule(p).weight.shape[0] == g.width + 1
    with pytest.raises(EnergySplitError, match="need"):  # one flat direction over every producer
        apply_plan_(model, build_inventory(model, inv.input_shape),
                    Plan([Split(coupled[0].id, 0, torch.ones(1), 0.1)]))


def _loss_change(eps, model, inv, x, y, ops):
    m = copy.deepcopy(model)
    apply_plan_(m, inv, Plan([replace(o, eps=eps) for o in ops]))
    with torch.no_grad():
        return (F.cross_entropy(m(x), y) - F.cross_entropy(model(x), y)).item()


def small_smooth_net():
    """conv-BN-SiLU-dw-BN-SiLU-pointwise-BN-tanh-pool-linear-SiLU-linear: smooth, so S != 0."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.SiLU(),
        nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.BatchNorm2d(4), nn.SiLU(),
        nn.Conv2d(4, 6, 1), nn.BatchNorm2d(6), nn.Tanh(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(24, 8), nn.SiLU(), nn.Linear(8, 3))


def smooth_net_splits(channels):
    """small_smooth_net (double, random BN), a batch, and eps = 0 splits of ``channels`` in every splittable
    layer along random unit directions (every layer, so inputs of split neurons are split too)."""
    torch.manual_seed(0)
    model = randomise_(small_smooth_net()).double()
    inv = build_inventory(model, (1, 6, 6))
    x, y = torch.randn(16, 1, 6, 6, dtype=torch.double), torch.randint(0, 3, (16,))
    g = torch.Generator().manual_seed(3)
    ops = []
    for group in inv.splittable():
        for c in channels:
            w = model.get_submodule(group.producers[0]).weight[c]
            v = torch.randn(w.shape, generator=g, dtype=torch.double)
            ops.append(Split(group.id, c, v / v.norm(), 0.0))
    return model, inv, x, y, ops


def test_split_loss_change_is_second_order_in_eps():
    model, inv, x, y, ops = smooth_net_splits((0, 1))
    d1, d2, d4 = (_loss_change(e, model, inv, x, y, ops) for e in (0.04, 0.02, 0.01))
    assert abs(d1) > 1e-7
    assert d1 / d2 == pytest.approx(4.0, rel=0.02) and d2 / d4 == pytest.approx(4.0, rel=0.02)


def test_unequal_shares_keep_the_weighted_mean_and_scale_the_second_order_change():
    """Split(share=s): offspring theta + 2 eps (1 - s) v and theta - 2 eps s v, outgoing weights s and 1 - s
    of the parent's; no first-order change, and 4 s (1 - s) times the equal split's second-order change."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    inv = build_inventory(model, (3,))
    w1, w2 = model[0].weight.detach().clone(), model[2].weight.detach().clone()
    v = F.normalize(torch.randn(3), dim=0)
    apply_plan_(model, inv, Plan([Split("0:out", 1, v, 0.3, share=0.25)]))
    torch.testing.assert_close(model[0].weight[1], w1[1] + 2 * 0.3 * 0.75 * v)
    torch.testing.assert_close(model[0].weight[4], w1[1] - 2 * 0.3 * 0.25 * v)
    torch.testing.assert_close(model[2].weight[:, 1], 0.25 * w2[:, 1])
    torch.testing.assert_close(model[2].weight[:, 4], 0.75 * w2[:, 1])

    model, inv, x, y, ops = smooth_net_splits((0,))
    unequal = [replace(op, share=0.2) for op in ops]
    for eps in (0.02, 0.01):
        equal, skewed = _loss_change(eps, model, inv, x, y, ops), _loss_change(eps, model, inv, x, y, unequal)
        assert abs(equal) > 1e-8
        assert skewed / equal == pytest.approx(4 * 0.2 * 0.8, rel=0.05)
    assert _loss_change(0.01, model, inv, x, y, unequal) / _loss_change(0.02, model, inv, x, y, unequal) == \
        pytest.approx(0.25, rel=0.03)  # second order in eps: no first-order term
    with pytest.raises(ValueError, match="share must be in"):
        Split("0:out", 0, None, 0.0, share=1.0)


def test_direction_of_split_input_is_copied_and_halved():
    """Both layers split in one plan: W'[c] = (W[c] +- eps v)/2 on both copies of split input k."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2))
    inv = build_inventory(model, (3,))
    w1, w2 = model[0].weight.detach().clone(), model[2].weight.detach().clone()
    v1, v2 = F.normalize(torch.randn(3), dim=0), F.normalize(torch.randn(4), dim=0)
    apply_plan_(model, inv, Plan([Split("0:out", 1, v1, 0.3), Split("2:out", 2, v2, 0.5)]))
    new = model[2].weight.detach()
    assert new.shape == (6, 5)
    torch.testing.assert_close(model[0].weight[1], w1[1] + 0.3 * v1)
    torch.testing.assert_close(model[0].weight[4], w1[1] - 0.3 * v1)
    for row, sign in ((2, 1), (5, -1)):
        expect = w2[2] + sign * 0.5 * v2
        torch.testing.assert_close(new[row, [0, 2, 3]], expect[[0, 2, 3]])
        torch.testing.assert_close(new[row, 1], expect[1] / 2)  # input 1 was split: copied, halved
        torch.testing.assert_close(new[row, 4], expect[1] / 2)
    torch.testing.assert_close(model[4].weight[:, 2], w2.new_tensor(0) + model[4].weight[:, 5])


def test_bad_plans_are_rejected():
    model, inv, _ = build("zoo_mobilenet_v1")
    first = list(inv)[0]
    cases = [
        (Plan([Split("nope:out", 0)]), "unknown neuron group"),
        (Plan([Split(first.id, first.width)]), "has 16 channels"),
        (Plan([Split(list(inv)[-1].id, 0)]), "model output"),
        (Plan([Split(first.id, 0), Split(first.id, 0)]), "split twice"),
        (Plan([Remove(first.id, tuple(range(first.width)))]), "every channel"),
        (Plan([Remove(first.id, tuple(range(first.width - 1)))]), "depthwise"),
        (Plan([Split(first.id, 0, F.normalize(torch.ones(5), dim=0), 0.1)]), "shape"),
    ]
    for plan, words in cases:
        with pytest.raises(EnergySplitError, match=words):
            apply_plan_(model, inv, plan)
    with pytest.raises(ValueError, match="unit-norm"):
        Split(first.id, 0, torch.ones(3), 0.1)


def test_plan_round_trip(tmp_path):
    v = torch.randn(4, 3, 3)
    v = v / v.norm()
    plan = Plan([Split("a:out", 2, v, 0.01), Split("a:out", 3, share=0.3), Remove("b:out", (0, 5))])
    back = Plan.load(plan.save(tmp_path / "plan.pt"))
    assert [type(op) for op in back] == [Split, Split, Remove]
    assert back.ops[0].share == 0.5 and back.ops[1].share == 0.3
    assert torch.equal(back.ops[0].direction, v) and back.ops[0].eps == 0.01 and back.ops[1].direction is None
    assert back.ops[2].channels == (0, 5)
    assert torch.load(tmp_path / "plan.pt", weights_only=True)["format"] == 1
    (tmp_path / "junk.pt").write_bytes(b"not a plan")
    with pytest.raises(EnergySplitError, match="not a readable energysplit plan"):
        Plan.load(tmp_path / "junk.pt")


def test_trained_network_keeps_training_after_surgery(digits):
    from energysplit.training.loop import TrainConfig, train

    model = create_model("vgg_small", width=0.125, in_channels=digits.in_channels, num_classes=digits.num_classes)
    inv = build_inventory(model, digits.input_shape)
    g = inv.splittable()[0]
    apply_plan_(model, inv, Plan([Split(g.id, c) for c in range(g.width)]))
    weight = model.get_submodule(g.producers[0]).weight
    start = weight.detach().clone()
    result = train(model, digits.subset(train=256).train, TrainConfig(epochs=1, lr=0.05, batch_size=64))
    assert result.train_loss == result.train_loss  # finite, not NaN
    assert model.get_submodule(g.producers[0]).weight is weight  # new Parameters were trained in place
    assert not torch.equal(weight.detach(), start)
