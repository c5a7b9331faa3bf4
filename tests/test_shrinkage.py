"""Variance-aware splitting scores (issue 17, item 5): empirical-Bayes shrinkage of each lambda towards its
group's trend in the BatchNorm scale c^2, weighted by the fast solver's standard errors."""
import pytest
import torch

from energysplit.errors import ConfigError
from energysplit.graph.trace import build_inventory
from energysplit.splitting.growth import GrowConfig
from energysplit.splitting.scores import splitting_scores
from energysplit.splitting.shrinkage import chain_scale_squared, shrink, shrunk_scores
from energysplit.zoo import create_model


def _synthetic(seed: int, n: int = 400):
    """True lambdas on a trend in c^2 plus spread tau = 0.01; two noisy measurements with known errors."""
    gen = torch.Generator().manual_seed(seed)
    feature = 0.5 + 1.5 * torch.rand(n, generator=gen, dtype=torch.float64)
    truth = -0.02 - 0.03 * feature + 0.01 * torch.randn(n, generator=gen, dtype=torch.float64)
    stderr = 0.002 + 0.028 * torch.rand(n, generator=gen, dtype=torch.float64)
    measured = [truth + stderr * torch.randn(n, generator=gen, dtype=torch.float64) for _ in range(2)]
    return feature, truth, stderr, measured


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shrinkage_is_closer_to_the_truth_and_its_selections_agree_more(seed):
    feature, truth, stderr, (a, b) = _synthetic(seed)
    shrunk_a, shrunk_b = shrink(a, stderr, feature), shrink(b, stderr, feature)
    assert (shrunk_a - truth).square().mean() < 0.6 * (a - truth).square().mean()

    def top(lam, k=100):
        return set(torch.argsort(lam)[:k].tolist())
    raw_overlap, shrunk_overlap = len(top(a) & top(b)) / 100, len(top(shrunk_a) & top(shrunk_b)) / 100
    assert shrunk_overlap > raw_overlap + 0.05, (raw_overlap, shrunk_overlap)
    assert len(top(shrunk_a) & top(truth)) > len(top(a) & top(truth))  # and closer to the true selection


def test_shrinkage_by_hand_with_a_constant_feature_and_exact_measurements():
    lam = torch.tensor([-0.3, -0.1, 0.0, 0.2, -0.4], dtype=torch.float64)
    stderr = torch.tensor([0.0, 0.1, 0.2, 0.05, 0.3], dtype=torch.float64)
    mean = lam.mean()
    tau2 = lam.var() - stderr.square().mean()
    expected = mean + tau2 / (tau2 + 2.0 * stderr.square()) * (lam - mean)
    torch.testing.assert_close(shrink(lam, stderr, torch.ones(5), weight=2.0), expected)
    assert float(shrink(lam, stderr, torch.ones(5))[0]) == pytest.approx(-0.3)  # se = 0: kept as measured
    torch.testing.assert_close(shrink(lam, torch.zeros(5), torch.ones(5)), lam)
    # all spread explained by the noise: every lambda goes to the prior
    torch.testing.assert_close(shrink(lam, torch.full((5,), 10.0, dtype=torch.float64), torch.ones(5)),
                               mean.expand(5))


def test_shrunk_scores_use_the_batchnorm_scale_and_leave_scores_without_errors_alone(digits):
    torch.manual_seed(0)
    model = create_model("vgg_small", width=0.25, act="silu").eval()
    inventory = build_inventory(model, digits.input_shape)
    group = next(g for g in inventory.splittable() if any(op.kind == "bn" for op in g.chain))
    bn = model.get_submodule(next(op.target for op in group.chain if op.kind == "bn"))
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.running_var.uniform_(0.5, 2.0)
    torch.testing.assert_close(chain_scale_squared(model, inventory, group.id),  # c from float32 parameters
                               (bn.weight.double().square() / (bn.running_var.double() + bn.eps)).detach(),
                               rtol=1e-6, atol=0)
    x = torch.stack([digits.train[i][0] for i in range(128)])
    y = torch.tensor([int(digits.train[i][1]) for i in range(128)])
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 128, 32)]
    fast = splitting_scores(model, batches, inventory, "fast", groups=[group.id])
    exact = splitting_scores(model, batches, inventory, "exact", groups=[group.id])
    assert fast[group.id].stderr is not None and exact[group.id].stderr is None
    shrunk = shrunk_scores(model, inventory, fast)[group.id]
    expected = shrink(fast[group.id].eigvals.double(), fast[group.id].stderr.double(),
                      chain_scale_squared(model, inventory, group.id))
    torch.testing.assert_close(shrunk.eigvals, expected.to(shrunk.eigvals.dtype))
    assert not torch.equal(shrunk.eigvals, fast[group.id].eigvals)
    assert shrunk.eigvecs is fast[group.id].eigvecs
    assert shrunk_scores(model, inventory, exact)[group.id] is exact[group.id]


def test_shrinkage_settings_are_checked():
    with pytest.raises(ConfigError, match="shrinkage must be > 0"):
        GrowConfig(shrinkage=0.0)
    with pytest.raises(ValueError, match="weight must be > 0"):
        shrunk_scores(None, None, {}, weight=-1.0)
