"""Transformer MLP neurons (issue 18, item 4): channels-last tensors, sealed streams, the splitting
matrix of a hidden GELU neuron against an explicit Hessian, exact surgery and exact marginal costs."""
import pytest
import torch
import torchvision
from torch import nn

from energysplit.cost.estimator import create_target, resized_copy
from energysplit.graph.plan import Plan, Remove, Split
from energysplit.graph.surgery import apply_plan_
from energysplit.graph.trace import build_inventory
from energysplit.splitting.exact import splitting_matrices
from energysplit.splitting.solver import evaluating

from test_eigen import layer, oracle_matrices


class Block(nn.Module):
    """A ViT in miniature: patch conv -> tokens [N, T, C] (+ class token, + position embedding) ->
    LayerNorm -> fc1 -> GELU -> fc2 added to the stream; attention beside it; LayerNorm -> head."""

    def __init__(self, c=4, hidden=6, classes=3):
        super().__init__()
        self.patch = nn.Conv2d(1, c, 2, stride=2)
        self.cls = nn.Parameter(torch.randn(1, 1, c))
        self.pos = nn.Parameter(torch.randn(1, 17, c))
        self.ln1, self.attn = nn.LayerNorm(c), nn.MultiheadAttention(c, 2, batch_first=True)
        self.ln2, self.fc1, self.act, self.fc2 = nn.LayerNorm(c), nn.Linear(c, hidden), nn.GELU(), nn.Linear(hidden, c)
        self.ln3, self.head = nn.LayerNorm(c), nn.Linear(c, classes)

    def forward(self, x, split=None):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], dim=1) + self.pos
        h = self.ln1(t)
        t = t + self.attn(h, h, h, need_weights=False)[0]
        t = t + self.fc2(layer(self.ln2(t), self.fc1, self.act, "fc1:out", split))
        return self.head(self.ln3(t)[:, 0])


class Traceable(Block):
    def forward(self, x):
        return super().forward(x)


def make(seed=0):
    torch.manual_seed(seed)
    return Traceable().double().eval()


def inventory_of(model):
    return build_inventory(model, (1, 8, 8))


def test_mlp_hidden_neurons_are_a_group_and_the_stream_is_frozen_with_reasons():
    inv = build_inventory(make(), (1, 8, 8))
    mlp = inv["fc1:out"]
    assert mlp.splittable and mlp.prunable and mlp.reason == ""
    assert [(op.kind, op.act) for op in mlp.chain] == [("act", "gelu")]
    assert [c.module for c in mlp.consumers] == ["fc2"]
    patch = inv["patch:out"]  # the token stream: concatenated with the class token, then LayerNorm
    assert not patch.prunable and "concatenates them, along dim 1, with an untracked or frozen" in patch.reason
    fc2 = inv["fc2:out"]  # added to the (frozen) stream
    assert not fc2.prunable and "combined by operator.add with a frozen stream" in fc2.reason


def test_splitting_matrix_of_a_gelu_mlp_neuron_matches_the_explicit_hessian():
    inv = inventory_of(make())
    model = Block().double().eval()  # the same weights, with the oracle's virtual split
    model.load_state_dict(make().state_dict())
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(5, 1, 8, 8, generator=gen, dtype=torch.float64), torch.randint(0, 3, (5,), generator=gen)
    with evaluating(model):
        S = splitting_matrices(model, [(x[:3], y[:3]), (x[3:], y[3:])], [inv["fc1:out"]])
    H = oracle_matrices(model, inv["fc1:out"], x, y)
    assert H.abs().max() > 1e-4
    torch.testing.assert_close(S["fc1:out"], H, rtol=1e-7, atol=1e-12)


def test_split_and_removal_of_mlp_neurons_keep_the_outputs():
    model = make()
    inv = build_inventory(model, (1, 8, 8))
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    before = model(x)
    inv = apply_plan_(model, inv, Plan([Split("fc1:out", 1), Split("fc1:out", 4)]))  # eps = 0
    assert inv["fc1:out"].width == 8 and model.fc1.out_features == 8 and model.fc2.in_features == 8
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-12)
    with torch.no_grad():
        model.fc2.weight[:, [0, 7]] = 0  # a neuron with no outgoing weight can go
    before = model(x)
    apply_plan_(model, inv, Plan([Remove("fc1:out", (0, 7))]))
    assert model.fc1.out_features == 6
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-12)


@pytest.mark.parametrize("target", ["flops", "mobile"])
def test_marginal_cost_of_a_channels_last_group_equals_the_reestimate(target):
    model, shape = make().float(), (1, 8, 8)
    inv = build_inventory(model, shape)
    est = create_target(target)
    base = est.predict(model, shape).total
    marginal = est.marginal_costs(model, inv, shape)["fc1:out"]
    grown = est.predict(resized_copy(model, inv, "fc1:out", +1), shape).total
    shrunk = est.predict(resized_copy(model, inv, "fc1:out", -1), shape).total
    assert marginal.add == pytest.approx(grown - base, rel=1e-12) and marginal.add > 0
    assert marginal.remove == pytest.approx(base - shrunk, rel=1e-12)
    if target == "flops":  # 17 tokens: fc1 gains C MACs per token, fc2 C per token
        assert marginal.add == 2 * 4 * 17


@pytest.mark.parametrize("name,size,blocks", [("vit_b_32", 32, 12), ("convnext_tiny", 32, 18), ("swin_t", 32, 12)])
def test_torchvision_transformer_mlps_are_splittable(name, size, blocks):
    kwargs = {"image_size": size} if name.startswith("vit") else {}
    inv = build_inventory(torchvision.models.get_model(name, **kwargs), (3, size, size))
    splittable = [g for g in inv if g.splittable]
    assert len(splittable) == blocks
    assert all([(op.kind, op.act) for op in g.chain] == [("act", "gelu")] for g in splittable)
    assert all(g.reason for g in inv if not g.prunable)  # every frozen group says why
