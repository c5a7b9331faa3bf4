"""One activation table for tracing, curvature and costing (graph/ops.py): every activation the tracer
knows traces, scores and costs, in module and functional form; ops without a cost formula are listed."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from energysplit.cost.estimator import create_target
from energysplit.errors import UnsupportedModelError
from energysplit.graph import ops
from energysplit.graph.layers import LayerSpec, capture_layers
from energysplit.graph.trace import build_inventory
from energysplit.splitting.curvature import ACTIVATIONS as RULES
from energysplit.splitting.curvature import CurvatureConfig, derivatives
from energysplit.splitting.exact import splitting_matrices
from energysplit.splitting.fast import FastConfig, splitting_products
from energysplit.splitting.scores import splitting_scores
from energysplit.splitting.solver import evaluating
from energysplit_estimators.flops import layer_macs
from energysplit_estimators.lut_energy import LutEnergyEstimator
from energysplit_estimators.ort_blocks import block_module

FUNCTIONAL = [("leaky_relu", F.leaky_relu), ("elu", F.elu), ("mish", F.mish), ("softplus", F.softplus),
              ("hardsigmoid", F.hardsigmoid)]


class ActNet(nn.Module):
    """conv -> BN -> nn.Mish, then one conv per functional activation, then a classifier."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn, self.mish = nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.Mish()
        self.convs = nn.ModuleList(nn.Conv2d(6, 6, 3, padding=1) for _ in FUNCTIONAL)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = self.mish(self.bn(self.stem(x)))
        for conv, (_, fn) in zip(self.convs, FUNCTIONAL):
            x = fn(conv(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def test_mish_and_functional_activations_trace_with_their_names():
    inv = build_inventory(ActNet(), (1, 6, 6))
    assert [op.act for op in inv["stem:out"].chain if op.kind == "act"] == ["mish"]
    for i, (name, _) in enumerate(FUNCTIONAL):
        group = inv[f"convs.{i}:out"]
        assert [op.act for op in group.chain] == [name] and group.splittable, group.id


@pytest.mark.parametrize("engine", ["adjoint", "term"])
def test_mish_and_functional_activations_get_splitting_scores(engine):
    torch.manual_seed(0)
    model = ActNet().double()
    inv = build_inventory(model, (1, 6, 6))
    x, y = torch.randn(8, 1, 6, 6, dtype=torch.float64), torch.randint(0, 3, (8,))
    groups = inv.splittable()
    assert {"stem:out", "convs.4:out"} <= {g.id for g in groups}
    vs = {g.id: torch.randn(model.get_submodule(g.producers[0]).weight.shape, dtype=torch.float64) for g in groups}
    with evaluating(model):  # the fast solver's S v (hooks on each activation) against the exact matrices
        S = splitting_matrices(model, [(x, y)], groups, CurvatureConfig())
        Sv = splitting_products(model, (x, y), groups, vs, CurvatureConfig(), engine=engine)
    for g in groups:
        expected = torch.einsum("kde,ke->kd", S[g.id], vs[g.id].flatten(1))
        assert expected.abs().max() > 0, g.id
        torch.testing.assert_close(Sv[g.id].flatten(1), expected, rtol=1e-8, atol=1e-14)
    scores = splitting_scores(model, [(x, y)], inv, "fast", config=FastConfig(passes=1, engine=engine))
    assert set(scores) == {g.id for g in groups}
    assert all(torch.isfinite(sc.eigvals).all() for sc in scores.values())


@pytest.mark.parametrize("target", ["flops", "mobile", "edge-fp32", "eyeriss"])
def test_mish_and_functional_activations_are_costed(target):
    report = create_target(target).estimate(ActNet(), (1, 6, 6))
    assert report.unsupported == []
    acts = [(r["layer"], r["cost"]) for r in report.layers if r["op"] == "act"]
    assert acts == [("mish", 0)] + [(f"{name}#0", 0) for name, _ in FUNCTIONAL]  # element-wise: no MACs, fused
    if target == "flops":
        assert report.total == 6 * 9 * 36 + 5 * 6 * 6 * 9 * 36 + 6 * 3  # stem, five convs, fc


@pytest.mark.parametrize("name", sorted(ops.ACTIVATIONS))
def test_every_tracer_activation_has_a_curvature_rule_and_a_cost_treatment(name):
    assert name in RULES
    a = torch.linspace(-4, 4, 81, dtype=torch.float64)
    d1, d2 = derivatives(name, a, CurvatureConfig())
    assert d1.shape == d2.shape == a.shape and torch.isfinite(d1).all() and torch.isfinite(d2).all()
    spec = LayerSpec(name="a", op="act", type=name, in_shape=(1, 4, 5, 5), out_shape=(1, 4, 5, 5), act=name)
    assert layer_macs(spec) == 0
    assert LutEnergyEstimator("mobile").layer_energy(spec) == {"compute": 0.0, "rf": 0.0, "weights": 0.0,
                                                               "activations": 0.0}
    module, shapes = block_module({"op": "act", "in": [4, 5, 5], "n": 1, "act": name})
    assert shapes == [(4, 5, 5)]
    x = torch.randn(1, 4, 5, 5)
    types, funcs, methods = ops.ACTIVATIONS[name]
    forms = [t() for t in types] + [f for f in funcs if not f.__name__.endswith("_")]
    forms += [lambda t, m=m: getattr(t.clone(), m)() for m in methods]
    if name == "gelu_tanh":
        forms = [lambda t: F.gelu(t, approximate="tanh")]
    for form in forms:  # the ORT block computes the same function as every form the tracer maps to name
        torch.testing.assert_close(module(x), form(x))


def test_gelu_tanh_is_its_own_activation_and_parametrised_functional_forms_are_refused():
    class Net(nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.conv, self.fn, self.fc = nn.Conv2d(1, 4, 1), fn, nn.Linear(4 * 9, 2)

        def forward(self, x):
            return self.fc(torch.flatten(self.fn(self.conv(x)), 1))

    inv = build_inventory(Net(lambda t: F.gelu(t, approximate="tanh")), (1, 3, 3))
    assert inv["conv:out"].chain[0].act == "gelu_tanh"
    leaky = Net(lambda t: F.leaky_relu(t, 0.2))
    with pytest.raises(UnsupportedModelError, match=r"functional leaky_relu with \{'negative_slope': 0.2\}.*LeakyReLU"):
        build_inventory(leaky, (1, 3, 3))
    report = create_target("flops").estimate(leaky, (1, 3, 3))  # costing still works
    assert report.unsupported == [] and report.total == 4 * 9 + 36 * 2


def test_ops_without_channel_meaning_are_listed_not_zero():
    class Transposed(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(1, 2, 1), nn.Linear(2 * 16, 3)

        def forward(self, x):
            return self.fc(torch.flatten(self.conv(x).transpose(2, 3).cumsum(3), 1))

    model = Transposed()
    # a transpose of two spatial dims keeps the channels on dim 1: mapped, and free (data movement)
    with pytest.raises(UnsupportedModelError, match="unsupported op Tensor.cumsum at node 'cumsum'"):
        build_inventory(model, (1, 4, 4))
    for target in ("flops", "mobile"):
        report = create_target(target).estimate(model, (1, 4, 4))
        assert report.unsupported[:1] == ["cumsum#0 (cumsum)"], target
        rows = {r["layer"]: r["cost"] for r in report.layers}
        assert rows["transpose#0"] == 0 and rows["cumsum#0"] is None and rows["conv"] > 0
        assert report.total == pytest.approx(rows["conv"] + rows["fc"] + rows["flatten#0"], rel=1e-15)
    specs = capture_layers(model, (1, 4, 4))
    assert [s.name for s in specs] == ["conv", "transpose#0", "cumsum#0", "flatten#0", "fc"]
    assert specs[2].in_owners == frozenset({"conv"}) and specs[3].in_owners == frozenset()  # mapping stops there
