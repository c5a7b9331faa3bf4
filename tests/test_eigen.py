"""Splitting matrices against an explicit-Hessian oracle; the fast solver against the exact one."""
import pytest
import torch
from torch import nn

from energysplit.splitting.curvature import CurvatureConfig
from energysplit.splitting.scores import splitting_scores
from energysplit.splitting.solver import evaluating
from energysplit.errors import EnergySplitError, UnsupportedModelError
from energysplit.splitting.exact import ExactConfig, splitting_matrices
from energysplit.graph.inventory import ChainOp, Consumer, Group, Inventory
from energysplit.splitting.fast import FastConfig, splitting_products


# --- tiny models with hand-built inventories ---------------------------------------------------------
# Each model's forward takes ``split=(layer, k, w)``: neuron k of that layer replaced by copies theta +- w
# whose chain outputs are averaged (= both copies' outgoing weights halved). This explicit virtual split
# is the oracle: the Hessian of its loss in w at w = 0 is the splitting matrix.

def layer(x, producer, chain, name, split):
    out = chain(producer(x))
    if split is not None and split[0] == name:
        _, k, w = split
        W = torch.zeros_like(producer.weight).index_put((torch.tensor([k]),), w.view(1, *producer.weight.shape[1:]))
        delta = nn.functional.linear(x, W) if isinstance(producer, nn.Linear) else producer._conv_forward(x, W, None)
        plus, minus = chain(producer(x) + delta), chain(producer(x) - delta)
        out = plus.clone()
        idx = (..., k) if isinstance(producer, nn.Linear) else (slice(None), k)  # channel dim: last or 1
        out[idx] = 0.5 * (plus[idx] + minus[idx])
    return out


class DwNet(nn.Module):
    """conv-BN-act-depthwise-BN-act (a MobileNet block), then a pointwise conv-BN-act and a head."""

    def __init__(self, act1=nn.SiLU, act2=nn.Tanh, stride=1, functional_last=False, cin=2, classes=5):
        super().__init__()
        self.conv1, self.bn1, self.a1 = nn.Conv2d(cin, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), act1()
        self.dw, self.bn2, self.a2 = nn.Conv2d(4, 4, 3, stride, 1, groups=4), nn.BatchNorm2d(4), act2()
        self.conv2, self.bn3, self.a3 = nn.Conv2d(4, 3, 1), nn.BatchNorm2d(3), nn.SiLU()
        self.fc = nn.Linear(3, classes)
        self.functional_last = functional_last

    def forward(self, x, split=None):
        h = layer(x, self.conv1, lambda t: self.a2(self.bn2(self.dw(self.a1(self.bn1(t))))), "conv1:out", split)
        last = nn.functional.silu if self.functional_last else self.a3
        h = layer(h, self.conv2, lambda t: last(self.bn3(t)), "conv2:out", split)
        return self.fc(h.mean((2, 3)))


def dw_inventory(functional_last=False, acts=("silu", "tanh")):
    last = ChainOp("act", "torch.nn.functional.silu" if functional_last else "a3", "silu")
    return inventory(
        Group("conv1:out", 4, ("conv1",), (ChainOp("bn", "bn1"), ChainOp("act", "a1", acts[0]), ChainOp("dw", "dw"),
                                           ChainOp("bn", "bn2"), ChainOp("act", "a2", acts[1])),
              ("bn1", "dw", "bn2"), (Consumer("conv2"),)),
        Group("conv2:out", 3, ("conv2",), (ChainOp("bn", "bn3"), last), ("bn3",), (Consumer("fc"),)))


class Mlp(nn.Module):
    """Linear-BN-tanh, Linear-tanh (one Tanh module shared by both), Linear-F.silu, a linear neuron
    (Linear-BN), a head."""

    def __init__(self, cin=6, classes=3):
        super().__init__()
        self.fc1, self.bn1, self.act = nn.Linear(cin, 5), nn.BatchNorm1d(5), nn.Tanh()
        self.fc2, self.fc3, self.fc4, self.bn4 = nn.Linear(5, 4), nn.Linear(4, 4), nn.Linear(4, 3), nn.BatchNorm1d(3)
        self.head = nn.Linear(3, classes)

    def forward(self, x, split=None):
        h = layer(x, self.fc1, lambda t: self.act(self.bn1(t)), "fc1:out", split)
        h = layer(h, self.fc2, self.act, "fc2:out", split)
        h = layer(h, self.fc3, nn.functional.silu, "fc3:out", split)
        h = layer(h, self.fc4, self.bn4, "fc4:out", split)
        return self.head(h)


def mlp_inventory():
    return inventory(
        Group("fc1:out", 5, ("fc1",), (ChainOp("bn", "bn1"), ChainOp("act", "act", "tanh")), ("bn1",),
              (Consumer("fc2"),)),
        Group("fc2:out", 4, ("fc2",), (ChainOp("act", "act", "tanh"),), (), (Consumer("fc3"),)),
        Group("fc3:out", 4, ("fc3",), (ChainOp("act", "torch.nn.functional.silu", "silu"),), (), (Consumer("fc4"),)),
        Group("fc4:out", 3, ("fc4",), (ChainOp("bn", "bn4"),), ("bn4",), (Consumer("head"),)),
        Group("head:out", 3, ("head",), splittable=False, reason="output"))


def inventory(*groups):
    return Inventory({g.id: g for g in groups})


def randomize_bn_(model, seed=1):
    gen = torch.Generator().manual_seed(seed)
    for b in model.modules():
        if isinstance(b, nn.modules.batchnorm._BatchNorm):
            b.running_mean.normal_(0, 0.3, generator=gen)
            b.running_var.uniform_(0.5, 2.0, generator=gen)
            b.weight.data.normal_(1, 0.3, generator=gen)
            b.bias.data.normal_(0, 0.3, generator=gen)
    return model


def make(cls, seed=0, **kw):
    torch.manual_seed(seed)
    return randomize_bn_(cls(**kw).double()).eval()


def oracle_matrices(model, group, x, y):
    """Per channel, the Hessian of the virtual-split loss at w = 0 (torch.autograd.functional.hessian)."""
    prod = model.get_submodule(group.producers[0])
    d = prod.weight[0].numel()

    def hessian(k):
        loss = lambda w: nn.functional.cross_entropy(model(x, split=(group.id, k, w)), y)  # noqa: E731
        return torch.autograd.functional.hessian(loss, torch.zeros(d, dtype=x.dtype), vectorize=True)

    return torch.stack([hessian(k) for k in range(group.width)])


def conv_data(n=6, size=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, size, size, generator=gen, dtype=torch.float64), torch.randint(0, 5, (n,), generator=gen)


def mlp_data(n=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=gen, dtype=torch.float64), torch.randint(0, 3, (n,), generator=gen)


# --- exact S == explicit Hessian ---------------------------------------------------------------------

@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("functional_last", [False, True])
def test_exact_matches_hessian_of_virtual_split_conv_with_depthwise_chain(stride, functional_last):
    model = make(DwNet, stride=stride, functional_last=functional_last)
    inv = dw_inventory(functional_last)
    x, y = conv_data()
    with evaluating(model):  # two batches: the exact mean over samples must not depend on batching
        S = splitting_matrices(model, [(x[:4], y[:4]), (x[4:], y[4:])], inv.splittable())
    for gid in inv.groups:
        H = oracle_matrices(model, inv[gid], x, y)
        assert H.abs().max() > 1e-4  # the oracle is not trivially zero
        torch.testing.assert_close(S[gid], H, rtol=1e-7, atol=1e-12)


def test_exact_matches_hessian_mlp_shared_activation_and_functional_act():
    model = make(Mlp)
    inv = mlp_inventory()
    x, y = mlp_data()
    with evaluating(model):
        S = splitting_matrices(model, [(x, y)], inv.splittable(), CurvatureConfig(linear="zero"))
    assert set(S) == {"fc1:out", "fc2:out", "fc3:out", "fc4:out"}  # not the unsplittable head
    for gid in S:
        torch.testing.assert_close(S[gid], oracle_matrices(model, inv[gid], x, y), rtol=1e-7, atol=1e-12)
    assert torch.count_nonzero(S["fc4:out"]) == 0  # a linear neuron's true S is 0


def test_linear_neuron_unit_proxy_and_relu_softplus_follow_the_method_formula():
    """No Hessian oracle for surrogates: check S = sum_n g act''(a) c^2 x x^T (METHOD.md section 1) written out."""
    model = make(Mlp)
    model.act = nn.ReLU()
    inv = mlp_inventory()
    inv.groups["fc1:out"] = Group("fc1:out", 5, ("fc1",), (ChainOp("bn", "bn1"), ChainOp("act", "act", "relu")))
    x, y = mlp_data()
    cfg = CurvatureConfig(beta=2.0)
    m = model
    with evaluating(model):
        S = splitting_matrices(model, [(x, y)], [inv["fc1:out"], inv["fc4:out"]], cfg)
        a1 = m.bn1(m.fc1(x)).detach()
        z1 = m.act(a1).requires_grad_(True)
        h3 = nn.functional.silu(m.fc3(m.act(m.fc2(z1))))
        o4 = m.bn4(m.fc4(h3))
        g1, g4 = torch.autograd.grad(nn.functional.cross_entropy(m.head(o4), y), [z1, o4])
    c1 = (m.bn1.weight / torch.sqrt(m.bn1.running_var + m.bn1.eps)).detach()
    c4 = (m.bn4.weight / torch.sqrt(m.bn4.running_var + m.bn4.eps)).detach()
    s = torch.sigmoid(2.0 * a1)
    expected1 = torch.einsum("nk,nd,ne->kde", g1 * 2.0 * s * (1 - s) * c1 ** 2, x, x)
    torch.testing.assert_close(S["fc1:out"], expected1)
    h3 = h3.detach()
    expected4 = torch.einsum("nk,nd,ne->kde", g4 * c4 ** 2, h3, h3)  # linear="unit": act'' = 1 proxy
    torch.testing.assert_close(S["fc4:out"], expected4)
    assert expected1.abs().max() > 1e-4 and expected4.abs().max() > 1e-4


# --- fast (Rayleigh descent) against exact eigh ------------------------------------------------------

def trained_on_digits(digits, cls, flat, steps=60, **kw):
    """A briefly trained model on real data (random weights and labels make minibatch S mostly noise)."""
    model = make(cls, **kw).train()
    x, y = digits.train.tensors
    x = x.double().flatten(1) if flat else x.double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for i in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=torch.Generator().manual_seed(i))
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval(), [(x[i:i + 64], y[i:i + 64]) for i in range(0, 512, 64)]


@pytest.mark.parametrize("cls,inv_fn,flat,kw", [(DwNet, dw_inventory, False, dict(cin=1, classes=10)),
                                                (Mlp, mlp_inventory, True, dict(cin=64, classes=10))])
def test_fast_recovers_smallest_eigenpair_where_the_gap_is_clear(digits, cls, inv_fn, flat, kw):
    model, batches = trained_on_digits(digits, cls, flat, **kw)
    inv = inv_fn()
    fast = splitting_scores(model, batches, inv, "fast")  # the defaults must meet the targets
    with evaluating(model):
        S = splitting_matrices(model, batches, inv.splittable())
    checked = 0
    for gid, mat in S.items():
        lam, vec = torch.linalg.eigh(mat)
        spread = lam[:, -1] - lam[:, 0]
        clear = ((lam[:, 1] - lam[:, 0]) > 0.1 * spread) & (lam[:, 0].abs() > 0.1 * spread)
        cos = (fast[gid].eigvecs.flatten(1) * vec[:, :, 0]).sum(1).abs()
        rel = (fast[gid].eigvals - lam[:, 0]).abs() / lam[:, 0].abs()
        assert torch.all(rel[clear] < 0.05), (gid, rel, clear)
        assert torch.all(cos[clear] >= 0.95), (gid, cos, clear)
        checked += int(clear.sum())
        torch.testing.assert_close(fast[gid].eigvecs.flatten(1).norm(dim=1), torch.ones(len(lam), dtype=lam.dtype))
    assert checked >= 4


def test_fast_is_deterministic_given_the_seed():
    model, x, y = make(Mlp), *mlp_data(64)
    runs = [splitting_scores(model, [(x[:32], y[:32]), (x[32:], y[32:])], mlp_inventory(), "fast",
                             config=FastConfig(passes=2, seed=s)) for s in (0, 0, 1)]
    assert all(torch.equal(runs[0][g].eigvecs, runs[1][g].eigvecs) for g in runs[0])
    assert not torch.equal(runs[0]["fc1:out"].eigvecs, runs[2]["fc1:out"].eigvecs)


def assert_S_v_matches_exact(model, inv, x, y, engine, curvature=CurvatureConfig()):
    gen = torch.Generator().manual_seed(3)
    groups = inv.splittable()
    vs = {g.id: torch.randn(model.get_submodule(g.producers[0]).weight.shape, generator=gen, dtype=torch.float64)
          for g in groups}
    with evaluating(model):
        S = splitting_matrices(model, [(x, y)], groups, curvature)
        Sv = splitting_products(model, (x, y), groups, vs, curvature, engine=engine)
    for g in groups:
        expected = torch.einsum("kde,ke->kd", S[g.id], vs[g.id].flatten(1))
        assert expected.abs().max() > 0
        torch.testing.assert_close(Sv[g.id].flatten(1), expected, rtol=1e-8, atol=1e-14)


@pytest.mark.parametrize("engine", ["adjoint", "term"])
@pytest.mark.parametrize("cls,inv_fn,data_fn", [(DwNet, dw_inventory, conv_data), (Mlp, mlp_inventory, mlp_data)])
def test_one_backward_pass_gives_S_v_for_every_neuron(engine, cls, inv_fn, data_fn):
    assert_S_v_matches_exact(make(cls), inv_fn(), *data_fn(), engine)


@pytest.mark.parametrize("engine", ["adjoint", "term"])
@pytest.mark.parametrize("relu_slope", ["step", "sigmoid"])
def test_S_v_through_relu_chains_under_either_slope_rule(engine, relu_slope):
    """ReLU then ReLU6 around the depthwise conv, with the true step slopes or the sigmoid surrogate's: both
    engines must give the exact solver's S v (the slopes enter the pullback between the two activations)."""
    assert_S_v_matches_exact(make(DwNet, act1=nn.ReLU, act2=nn.ReLU6), dw_inventory(acts=("relu", "relu6")),
                             *conv_data(), engine, CurvatureConfig(relu_slope=relu_slope))


class Pointwise(nn.Module):
    """A strided 1x1 conv and a grouped 1x1 conv (groups=2) as producers."""

    def __init__(self):
        super().__init__()
        self.c0, self.a0 = nn.Conv2d(2, 4, 1, stride=2), nn.Tanh()
        self.c1, self.a1 = nn.Conv2d(4, 4, 1, groups=2), nn.SiLU()
        self.fc = nn.Linear(4, 3)

    def forward(self, x, split=None):
        h = layer(layer(x, self.c0, self.a0, "c0", split), self.c1, self.a1, "c1", split)
        return self.fc(h.mean((2, 3)))


class Tokens(nn.Module):
    """Linear layers on (N, T, d) inputs: channels are the last dim, positions are tokens."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(6, 5), nn.Linear(5, 4), nn.Linear(4, 3)

    def forward(self, x, split=None):
        h = layer(layer(x, self.fc1, torch.tanh, "fc1", split), self.fc2, nn.functional.silu, "fc2", split)
        return self.head(h.mean(1))


def test_linear_producers_on_token_sequences():
    model = make(Tokens)
    inv = inventory(Group("fc1", 5, ("fc1",), (ChainOp("act", "torch.tanh", "tanh"),)),
                    Group("fc2", 4, ("fc2",), (ChainOp("act", "torch.nn.functional.silu", "silu"),)))
    x, y = torch.randn(5, 7, 6, dtype=torch.float64), torch.randint(0, 3, (5,))
    vs = {g.id: torch.randn(g.width, model.get_submodule(g.id).in_features, dtype=torch.float64) for g in inv}
    with evaluating(model):
        S = splitting_matrices(model, [(x, y)], inv.splittable())
        products = [splitting_products(model, (x, y), inv.splittable(), vs, engine=e) for e in ("adjoint", "term")]
    for g in inv.splittable():
        torch.testing.assert_close(S[g.id], oracle_matrices(model, g, x, y), rtol=1e-7, atol=1e-12)
        for Sv in products:
            torch.testing.assert_close(Sv[g.id], torch.einsum("kde,ke->kd", S[g.id], vs[g.id]))


def test_exact_matches_hessian_strided_pointwise_and_grouped_producers():
    model = make(Pointwise)
    inv = inventory(Group("c0", 4, ("c0",), (ChainOp("act", "a0", "tanh"),)),
                    Group("c1", 4, ("c1",), (ChainOp("act", "a1", "silu"),)))
    x, y = torch.randn(5, 2, 5, 5, dtype=torch.float64), torch.randint(0, 3, (5,))
    with evaluating(model):
        S = splitting_matrices(model, [(x, y)], inv.splittable())
    for g in inv.splittable():
        torch.testing.assert_close(S[g.id], oracle_matrices(model, g, x, y), rtol=1e-7, atol=1e-12)


# --- the model is left exactly as it was; clear errors -------------------------------------------

def hooks_of(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("method", ["fast", "exact"])
def test_model_left_unchanged(method):
    model = make(DwNet)
    model.train()
    model.bn3.eval()  # a mixed mode must be restored module by module
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = dict(model.named_parameters())
    x, y = conv_data(8)
    config = FastConfig(passes=2) if method == "fast" else None
    scores = splitting_scores(model, [(x[:4], y[:4]), (x[4:], y[4:])], dw_inventory(), method, config=config)
    assert set(scores) == {"conv1:out", "conv2:out"}
    assert scores["conv1:out"].eigvecs.shape == (4, 2, 3, 3) and scores["conv1:out"].eigvals.shape == (4,)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert dict(model.named_parameters()) == params and all(p.grad is None for p in params.values())
    assert hooks_of(model) == 0
    assert model.training and model.conv1.training and not model.bn3.training
    assert not isinstance(torch.overrides._get_current_function_mode(), torch.overrides.TorchFunctionMode)


def test_exact_refuses_beyond_memory_limit():
    model = make(DwNet)
    x, y = conv_data(4)
    with pytest.raises(EnergySplitError, match=r"need .* GB \(largest: conv1:out, 4 x 18\^2 floats\).*method='fast'"):
        splitting_scores(model, [(x, y)], dw_inventory(), "exact", config=ExactConfig(memory_limit=1000))
    assert hooks_of(model) == 0


def test_inventory_not_matching_the_forward_is_a_clear_error():
    model = make(DwNet)
    inv = inventory(Group("conv1:out", 4, ("conv1",), (ChainOp("bn", "bn1"), ChainOp("act", "a2", "tanh"))))
    x, y = conv_data(4)
    with pytest.raises(UnsupportedModelError, match="chain of group conv1:out did not run as traced"):
        splitting_scores(model, [(x, y)], inv, "fast", config=FastConfig(passes=1))
    assert hooks_of(model) == 0
    coupled = inventory(Group("r", 4, ("conv1", "conv2")))  # conv2 has another width: not one residual stream
    with pytest.raises(UnsupportedModelError, match="producer conv2 of group r has .* the inventory does not match"):
        splitting_scores(model, [(x, y)], coupled, "exact")


def test_one_shot_iterator_is_refused_and_dataset_accepted():
    model = make(Mlp)
    x, y = mlp_data(40)
    with pytest.raises(ValueError, match="one-shot iterator"):
        splitting_scores(model, iter([(x, y)]), mlp_inventory(), "fast")
    ds = torch.utils.data.TensorDataset(x, y)
    a = splitting_scores(model, ds, mlp_inventory(), "exact", config=ExactConfig(batch_size=7))
    b = splitting_scores(model, [(x, y)], mlp_inventory(), "exact")
    for gid in a:
        torch.testing.assert_close(a[gid].eigvals, b[gid].eigvals)


def test_fast_config_validates():
    for bad in ({"passes": 0}, {"lr": 0}, {"momentum": 1.0}, {"alpha": 0}, {"schedule": "step"},
                {"engine": "magic"}, {"eigval_estimate": "max"}):
        with pytest.raises(ValueError):
            FastConfig(**bad)
    with pytest.raises(TypeError, match="takes a FastConfig"):
        splitting_scores(make(Mlp), [mlp_data()], mlp_inventory(), "fast", config=ExactConfig())
