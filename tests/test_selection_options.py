"""Selection options of the growth loop (issue 17, items 3 and 5): per-step layer caps (``layer_growth``), the
scale-invariant score (``scale_invariant``) and the shrunk, variance-aware lambdas (``shrinkage``). Training in
the growth tests is stubbed: the selection is under test."""
import copy
from collections import Counter

import pytest
import torch

import energysplit.splitting.growth as growth
from energysplit.cost.estimator import create_target
from energysplit.errors import ConfigError
from energysplit.graph.trace import build_inventory
from energysplit.splitting.growth import GrowConfig, grow, scale_invariant_scores, step_caps
from energysplit.splitting.scores import splitting_scores
from energysplit.training.loop import TrainConfig, TrainResult
from energysplit.zoo import create_model


@pytest.fixture
def no_training(monkeypatch):
    monkeypatch.setattr(growth, "train", lambda model, data, config, **kw: TrainResult(config.epochs, 0, 0.0, 0.0,
                                                                                       0.5, 1.0))


@pytest.fixture(scope="module")
def seed_model():
    torch.manual_seed(0)
    return create_model("vgg_small", width=0.25, act="silu")


def _batches(data, n: int = 192, size: int = 64) -> list:
    x = torch.stack([data.train[i][0] for i in range(n)])
    y = torch.tensor([int(data.train[i][1]) for i in range(n)])
    return [(x[i:i + size], y[i:i + size]) for i in range(0, n, size)]


def test_step_caps_combine_max_widths_and_layer_growth():
    widths = {"a": 10, "b": 4, "c": 7}
    assert step_caps(widths, widths, None, None) is None
    assert step_caps(widths, widths, {"a": 12}, None) == {"a": 2}
    assert step_caps(widths, widths, None, 2.0) == {"a": 10, "b": 4, "c": 7}
    assert step_caps(widths, widths, None, 3.0) == {"a": 20, "b": 8, "c": 14}  # a layer may triple
    assert step_caps(widths, widths, {"a": 12, "b": 100}, 1.5) == {"a": 2, "b": 2, "c": 3}
    with pytest.raises(ConfigError, match="layer_growth"):
        GrowConfig(layer_growth=1.0)


def _largest_step_share(result, before: dict) -> float:
    """The largest fraction of its width that one step added to a group."""
    widths, share = dict(before), 0.0
    for step in result.steps:
        for g, n in step.split_per_group.items():
            share = max(share, n / widths[g])
            widths[g] += n
    return share


def _grown(seed_model, digits, budget_factor: float, **options):
    """A copy of ``seed_model`` grown to ``budget_factor`` x its FLOPs (training stubbed by ``no_training``)."""
    flops = create_target("flops")
    budget = budget_factor * flops.predict(seed_model, digits.input_shape).total
    config = GrowConfig(score_samples=128, fill=False, finetune=TrainConfig(epochs=0.1, progress=False),
                        final_finetune=TrainConfig(epochs=0.1, progress=False), **options)
    result = grow(copy.deepcopy(seed_model), digits, flops, budget, config, log=lambda s: None)
    assert result.steps
    return result


def test_layer_growth_caps_every_group_in_every_step(digits, seed_model, no_training):
    before = build_inventory(seed_model, digits.input_shape).widths()
    shares = {}
    for cap in (None, 1.25):
        result = _grown(seed_model, digits, 2.5, max_steps=4, layer_growth=cap)
        shares[cap] = _largest_step_share(result, before)
    assert shares[1.25] <= 0.25 < shares[None], shares  # uncapped, a step grows some layer by more


def test_scale_invariant_score_ignores_the_scale_of_a_filter_feeding_batchnorm(digits, seed_model):
    """Scaling filter k of a conv feeding BatchNorm by c (and BN's running statistics with it) leaves the
    network's function unchanged; the raw lambda_k scales by 1 / c^2, lambda_k x ||theta_k||^2 does not move."""
    model = copy.deepcopy(seed_model).eval()
    inventory = build_inventory(model, digits.input_shape)
    group = next(g for g in inventory.splittable() if g.followers)
    conv, bn = model.get_submodule(group.producers[0]), model.get_submodule(group.followers[0])
    assert isinstance(bn, torch.nn.BatchNorm2d) and conv.bias is None
    bn.eps = 1e-12  # so that the rescaled network is the same function to rounding
    batches = _batches(digits)
    x = batches[0][0]
    before_out = model(x)
    raw = splitting_scores(model, batches, inventory, "exact", groups=[group.id])
    invariant = scale_invariant_scores(model, inventory, raw)
    c, k = 3.0, 1
    with torch.no_grad():
        conv.weight[k] *= c
        bn.running_mean[k] *= c
        bn.running_var[k] *= c * c
    torch.testing.assert_close(model(x), before_out, rtol=1e-4, atol=1e-5)
    raw2 = splitting_scores(model, batches, inventory, "exact", groups=[group.id])
    invariant2 = scale_invariant_scores(model, inventory, raw2)
    lam, lam2 = raw[group.id].eigvals, raw2[group.id].eigvals
    assert abs(lam[k]) > 1e-6
    assert float(lam2[k]) == pytest.approx(float(lam[k]) / c ** 2, rel=1e-3)
    assert float(invariant2[group.id].eigvals[k]) == pytest.approx(float(invariant[group.id].eigvals[k]), rel=1e-3)
    others = [i for i in range(len(lam)) if i != k]
    torch.testing.assert_close(lam2[others], lam[others], rtol=1e-3, atol=1e-7)


def test_relative_eps_moves_every_offspring_by_the_same_fraction_of_its_parent(digits, seed_model, no_training,
                                                                              monkeypatch):
    """With ``relative_eps`` a neuron theta splits into theta +- eps ||theta|| v: the two offspring's producer
    rows lie 2 eps ||theta|| apart, whatever the parent's norm (without it, 2 eps)."""
    import energysplit.graph.surgery as surgery

    flops = create_target("flops")
    budget = 1.3 * flops.predict(seed_model, digits.input_shape).total
    apply = surgery.apply_plan_
    for relative in (False, True):
        model = copy.deepcopy(seed_model)
        inventory = build_inventory(model, digits.input_shape)
        with torch.no_grad():  # filters of norms that differ by up to 3x
            for g in inventory.splittable():
                weight = model.get_submodule(g.producers[0]).weight
                weight.mul_((1 + torch.arange(len(weight)) % 3).view(-1, *[1] * (weight.dim() - 1)))
        before = {g.id: model.get_submodule(g.producers[0]).weight.detach().clone() for g in inventory.splittable()
                  if len(g.producers) == 1}
        plans = []
        monkeypatch.setattr(surgery, "apply_plan_", lambda m, inv, plan: plans.append(plan) or apply(m, inv, plan))
        config = GrowConfig(score_samples=128, max_steps=1, relative_eps=relative, eps=0.2, fill=False,
                            finetune=TrainConfig(epochs=0.0, progress=False),
                            final_finetune=TrainConfig(epochs=0.0, progress=False))
        result = grow(model, digits, flops, budget, config, log=lambda s: None)
        for op in plans[-1].ops:
            assert op.eps == pytest.approx(0.2 * (float(before[op.group][op.channel].norm()) if relative else 1.0))
        # rows whose input columns the same plan did not edit (a split upstream halves and copies columns)
        edited = {c.module for gid in plans[-1].groups() for c in inventory[gid].consumers}
        ops = [op for op in plans[-1].ops if inventory[op.group].producers[0] not in edited]
        assert ops and result.steps
        appended = Counter()
        for op in ops:
            weight = result.model.get_submodule(inventory[op.group].producers[0]).weight.detach()
            parent = before[op.group][op.channel]
            new_slot = len(before[op.group]) + appended[op.group]
            appended[op.group] += 1
            gap = float((weight[op.channel] - weight[new_slot]).norm())
            expected = 2 * 0.2 * (float(parent.norm()) if relative else 1.0)
            assert gap == pytest.approx(expected, rel=1e-4), (op.group, op.channel)
        norms = [float(before[op.group][op.channel].norm()) for op in ops]
        assert max(norms) > 1.5 * min(norms)  # parents of different norms: the relative gaps differ


def test_growth_selects_from_shrunk_lambdas_when_asked(digits, seed_model, no_training, monkeypatch):
    """``GrowConfig.shrinkage``: every step ranks the shrunk lambdas (:mod:`energysplit.splitting.shrinkage`)."""
    import energysplit.splitting.shrinkage as shrinkage

    weights, original = [], shrinkage.shrunk_scores
    monkeypatch.setattr(shrinkage, "shrunk_scores",
                        lambda model, inventory, scores, weight: weights.append(weight) or original(
                            model, inventory, scores, weight))
    for setting in (None, 4.0):
        result = _grown(seed_model, digits, 1.6, max_steps=2, shrinkage=setting)
        assert weights == ([4.0] * len(result.steps) if setting else [])


def test_growth_splits_with_unequal_offspring_shares_when_asked(digits, seed_model, no_training, monkeypatch):
    """``GrowConfig.share`` reaches every split of the step, which selects the same neurons, and the step's
    predicted loss change is 4 s (1 - s) times the equal split's (graph.plan.Split)."""
    import energysplit.graph.surgery as surgery

    flops = create_target("flops")
    budget = 1.3 * flops.predict(seed_model, digits.input_shape).total
    apply, runs = surgery.apply_plan_, {}
    for share in (0.5, 0.3):
        plans = []
        monkeypatch.setattr(surgery, "apply_plan_", lambda m, inv, plan: plans.append(plan) or apply(m, inv, plan))
        config = GrowConfig(score_samples=128, max_steps=1, share=share, eps=0.2, fill=False,
                            finetune=TrainConfig(epochs=0.0, progress=False),
                            final_finetune=TrainConfig(epochs=0.0, progress=False))
        result = grow(copy.deepcopy(seed_model), digits, flops, budget, config, log=lambda s: None)
        assert result.steps and {op.share for op in plans[-1].ops} == {share}
        runs[share] = ([(op.group, op.channel) for op in plans[-1].ops], result.steps[0].predicted_loss_change)
    assert runs[0.3][0] == runs[0.5][0]
    assert runs[0.3][1] == pytest.approx(4 * 0.3 * 0.7 * runs[0.5][1])
    with pytest.raises(ConfigError, match="share"):
        GrowConfig(share=1.0)
