"""The fast solver's descent (torch RMSprop + CosineAnnealingLR) against the update written out by hand:
RMSprop with momentum on the Rayleigh gradient, eps relative to the group's scale, renormalised v, a cosine
lr over all passes (Wang et al. 2019, sec. 3); lambda's standard error from the averaged pass's quotients."""
import math

import pytest
import torch
from torch import nn

from energysplit.graph.inventory import ChainOp, Consumer, Group, Inventory
from energysplit.splitting.fast import FastConfig, splitting_products
from energysplit.splitting.scores import splitting_scores
from energysplit.splitting.solver import evaluating


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.act = nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.SiLU()
        self.fc1, self.tanh, self.head = nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)

    def forward(self, x):
        return self.head(self.tanh(self.fc1(self.act(self.bn(self.conv(x))).mean((2, 3)))))


def _inventory():
    return Inventory({"conv": Group("conv", 4, ("conv",), (ChainOp("bn", "bn"), ChainOp("act", "act", "silu")),
                                    ("bn",), (Consumer("fc1"),)),
                      "fc1": Group("fc1", 5, ("fc1",), (ChainOp("act", "tanh", "tanh"),), (), (Consumer("head"),))})


class Unsized:
    """Re-iterable batches without a length: the solver learns the pass length after the first pass."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


def _unit(t):
    return t / t.flatten(1).norm(dim=1).clamp_min(1e-30).view((-1,) + (1,) * (t.dim() - 1))


def _by_hand(model, batches, groups, config, known_length=True):
    """The reference loop: every step's lr, RMSprop + momentum state and renormalisation written out."""
    gen = torch.Generator().manual_seed(config.seed)
    v = {g.id: _unit(torch.randn(model.get_submodule(g.id).weight.shape, generator=gen, dtype=torch.float64))
         for g in groups}
    sq = {k: torch.zeros_like(t) for k, t in v.items()}
    buf = {k: torch.zeros_like(t) for k, t in v.items()}
    sums = {k: [0, 0, 0] for k in v}
    quotients = {k: [] for k in v}  # the averaged pass's minibatch quotients, for lambda's standard error
    steps, total = len(batches), config.passes * len(batches)
    warm = math.ceil(config.warmup * steps) if known_length else 0
    plan = [(b, config.lr, False) for b in batches[:warm]]
    for epoch in range(config.passes):
        for i, b in enumerate(batches):
            cosine = config.schedule == "cosine" and (known_length or epoch > 0)
            lr = config.lr * 0.5 * (1 + math.cos(math.pi * (epoch * steps + i) / total)) if cosine else config.lr
            plan.append((b, lr, epoch == config.passes - 1))
    for batch, lr, last in plan:
        sv = splitting_products(model, batch, groups, v)
        for k in v:
            r = (v[k] * sv[k]).flatten(1).sum(1)
            grad = 2 * (sv[k] - r.view(-1, *[1] * (v[k].dim() - 1)) * v[k])
            sq[k] = config.alpha * sq[k] + (1 - config.alpha) * grad * grad
            denom = sq[k].sqrt()
            denom = denom + 1e-12 * denom.max() + 1e-30
            buf[k] = config.momentum * buf[k] + grad / denom
            if last:
                sums[k] = [sums[k][0] + r, sums[k][1] + v[k], sums[k][2] + sv[k]]
                quotients[k].append(r)
            v[k] = _unit(v[k] - lr * buf[k])
    out = {}
    for k, (r, vs, svs) in sums.items():
        cross = (vs * svs).flatten(1).sum(1) / vs.flatten(1).pow(2).sum(1)
        stderr = torch.stack(quotients[k]).std(0, correction=0) / math.sqrt(len(quotients[k]))
        out[k] = (cross if config.eigval_estimate == "cross" else r / len(batches), _unit(vs), stderr)
    return out


@pytest.mark.parametrize("settings,known_length", [
    ({}, True), ({}, False), ({"schedule": "constant"}, True), ({"warmup": 0.5, "passes": 2}, True),
    ({"eigval_estimate": "mean", "momentum": 0.5, "alpha": 0.7}, True)])
def test_fast_solver_follows_the_hand_written_descent(settings, known_length):
    torch.manual_seed(0)
    model = Net().double()
    model.bn.running_mean.normal_(0, 0.3)
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 2, 5, 5, generator=gen, dtype=torch.float64), torch.randint(0, 3, (8,), generator=gen))
               for _ in range(4)]
    config = FastConfig(**{"passes": 3, **settings})
    inv = _inventory()
    scores = splitting_scores(model, batches if known_length else Unsized(batches), inv, "fast", config=config)
    with evaluating(model):
        expected = _by_hand(model, batches, inv.splittable(), config, known_length)
    for gid, (lam, vec, stderr) in expected.items():
        assert lam.abs().max() > 0 and stderr.min() > 0
        torch.testing.assert_close(scores[gid].eigvals, lam, rtol=1e-9, atol=1e-14)
        torch.testing.assert_close(scores[gid].eigvecs, vec, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(scores[gid].stderr, stderr, rtol=1e-6, atol=1e-14)
