import copy

import pytest
import torch

from energysplit.errors import BudgetError
from energysplit.cost.estimator import create_target
from energysplit.graph.trace import build_inventory
from energysplit.splitting.checkpoint import Checkpoint
from energysplit.splitting.growth import GrowConfig, grow
from energysplit.splitting.planning import fit_plan
from energysplit.graph.plan import Split
from energysplit.training.loop import TrainConfig, train
from energysplit.zoo import create_model

ARCH = {"name": "vgg_small", "kwargs": {"width": 0.25, "act": "silu"}}


@pytest.fixture(scope="module")
def seed_model(digits):
    torch.manual_seed(0)
    model = create_model("vgg_small", width=0.25, act="silu")
    train(model, digits.train, TrainConfig(epochs=2, progress=False))
    return model


def _config(**kw):
    ft = TrainConfig(epochs=0.2, progress=False)
    return GrowConfig(score_samples=256, finetune=ft, final_finetune=ft, max_steps=3, **kw)


def test_growth_lands_under_the_budget_and_logs_steps(digits, seed_model):
    energy = create_target("mobile")
    start = energy.predict(seed_model, digits.input_shape).total
    budget = 1.8 * start
    result = grow(copy.deepcopy(seed_model), digits, energy, budget, _config(), log=lambda s: None)
    assert result.steps, result.stop_reason
    assert start < result.final_cost <= budget
    for step in result.steps:
        assert step.cost_after <= min(budget, 1.4 * step.cost_before) * (1 + 1e-9)
        assert step.neurons_split == sum(step.split_per_group.values()) > 0
        assert step.predicted_loss_change < 0  # only negative splitting indices are chosen
    widths = build_inventory(result.model, digits.input_shape).widths()
    assert sum(widths.values()) > sum(build_inventory(seed_model, digits.input_shape).widths().values())


def test_seed_over_budget_is_refused(digits, seed_model):
    energy = create_target("mobile")
    with pytest.raises(BudgetError, match="over the budget"):
        grow(copy.deepcopy(seed_model), digits, energy, 0.5 * energy.predict(seed_model, digits.input_shape).total,
             _config(), log=lambda s: None)


def test_fit_plan_trims_to_the_limit(digits, seed_model):
    flops = create_target("flops")
    inventory = build_inventory(seed_model, digits.input_shape)
    groups = [g for g in inventory.splittable()]
    ops = [Split(g.id, c) for g in groups for c in range(3)]
    cost = flops.predict(seed_model, digits.input_shape).total
    limit = cost * 1.05
    kept = fit_plan(seed_model, inventory, ops, flops, digits.input_shape, limit)
    assert 0 < len(kept) < len(ops) and kept == ops[:len(kept)]
    from energysplit.graph.plan import Plan
    from energysplit.graph.surgery import apply_plan_

    for k, expect_fit in ((len(kept), True), (len(kept) + 1, False)):
        trial = copy.deepcopy(seed_model)
        apply_plan_(trial, inventory, Plan(ops[:k]))
        assert (flops.predict(trial, digits.input_shape).total <= limit) == expect_fit


def test_resume_after_an_interruption_gives_the_same_model(digits, seed_model, tmp_path):
    energy = create_target("mobile")
    budget = 1.8 * energy.predict(seed_model, digits.input_shape).total
    full = grow(copy.deepcopy(seed_model), digits, energy, budget, _config(), log=lambda s: None)
    assert len(full.steps) >= 2

    class Stop(Exception):
        pass

    def stop_after_first_step(line):
        if line.startswith("step 1:"):
            raise Stop

    ckpt = Checkpoint(tmp_path / "work", ARCH | {"kwargs": {**ARCH["kwargs"], "in_channels": 1, "num_classes": 10}},
                      digits.input_shape)
    with pytest.raises(Stop):
        grow(copy.deepcopy(seed_model), digits, energy, budget, _config(), checkpoint=ckpt, log=stop_after_first_step)
    # the interruption hit after step 1 was applied but before it was checkpointed: rerun from the seed
    assert not (tmp_path / "work" / "state.json").exists()
    ckpt.save(*_replay_first_step(seed_model, digits, energy, budget))
    resumed = grow(copy.deepcopy(seed_model), digits, energy, budget, _config(), checkpoint=ckpt, resume=True,
                   log=lambda s: None)
    assert [s.cost_after for s in resumed.steps] == [s.cost_after for s in full.steps]
    for a, b in zip(resumed.model.state_dict().values(), full.model.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_a_carried_momentum_is_checkpointed_with_each_step_and_resumes(digits, seed_model, tmp_path):
    """grow(momentum={}) continues one momentum through its fine-tunes: the result differs from restarting
    it, and a run interrupted after step 1 resumes to the uninterrupted model, but only with the momentum
    file its checkpoint wrote."""
    import shutil

    energy = create_target("mobile")
    budget = 1.8 * energy.predict(seed_model, digits.input_shape).total
    full = grow(copy.deepcopy(seed_model), digits, energy, budget, _config(), log=lambda s: None, momentum={})
    restarted = grow(copy.deepcopy(seed_model), digits, energy, budget, _config(), log=lambda s: None)
    assert len(full.steps) >= 2
    assert not torch.equal(full.model.classifier[-1].weight, restarted.model.classifier[-1].weight)

    class Stop(Exception):
        pass

    def stop_before_saving_step_2(line):
        if line.startswith("step 2:"):
            raise Stop

    arch = ARCH | {"kwargs": {**ARCH["kwargs"], "in_channels": 1, "num_classes": 10}}
    ckpt = Checkpoint(tmp_path / "work", arch, digits.input_shape)
    with pytest.raises(Stop):
        grow(copy.deepcopy(seed_model), digits, energy, budget, _config(), checkpoint=ckpt,
             log=stop_before_saving_step_2, momentum={})
    shutil.copytree(tmp_path / "work", tmp_path / "lost")
    (tmp_path / "lost" / "momentum.pt").unlink()
    runs = {}
    for name in ("work", "lost"):
        runs[name] = grow(copy.deepcopy(seed_model), digits, energy, budget, _config(),
                          checkpoint=Checkpoint(tmp_path / name, arch, digits.input_shape), resume=True,
                          log=lambda s: None, momentum={})
    assert [s.cost_after for s in runs["work"].steps] == [s.cost_after for s in full.steps]
    for a, b in zip(runs["work"].model.state_dict().values(), full.model.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert not torch.equal(runs["lost"].model.classifier[-1].weight, full.model.classifier[-1].weight)


def _replay_first_step(seed_model, digits, energy, budget):
    """The state a checkpoint holds after step 1 (a one-step run without its final fine-tune)."""
    from dataclasses import replace

    config = replace(_config(), max_steps=1, final_finetune=TrainConfig(epochs=0, progress=False))
    one = grow(copy.deepcopy(seed_model), digits, energy, budget, config, log=lambda s: None)
    return one.model, one.steps, "grow"


def test_growth_steps_share_the_fine_tuning_span():
    from energysplit.splitting.growth import _step_span

    from dataclasses import replace

    config = replace(_config(planned_steps=2), finetune=TrainConfig(epochs=0.1, span=(0.3, 0.5), progress=False))
    assert _step_span(config, 1) == pytest.approx((0.3, 0.4))
    assert _step_span(config, 2) == pytest.approx((0.4, 0.5))
    assert _step_span(config, 3) == pytest.approx((0.5, 0.5))  # past the plan: the end of the span
    assert _step_span(_config(), 2) == (0.0, 1.0)  # the default span restarts nothing


class _PessimisticFlops:
    """FLOPs whose marginal split costs are 3x the true ones, as a latency table's can be."""

    def __init__(self):
        self.inner = create_target("flops")
        self.unit = self.inner.unit

    def predict(self, model, input_shape):
        return self.inner.predict(model, input_shape)

    def marginal_costs(self, model, inventory, input_shape):
        from dataclasses import replace

        return {g: replace(m, add=3 * m.add) for g, m in self.inner.marginal_costs(model, inventory, input_shape).items()}


def test_overselection_uses_a_step_that_marginal_costs_over_predict(digits, seed_model):
    """Planned in 3x-pessimistic marginal costs, a step with overselect=1 spends about a third of its
    headroom; overselecting and cutting the plan by its applied cost spends nearly all of it."""
    from dataclasses import replace

    estimator = _PessimisticFlops()
    start = estimator.predict(seed_model, digits.input_shape).total
    used = {}
    for overselect in (1.0, 4.0):
        config = replace(_config(overselect=overselect), max_steps=1)
        result = grow(copy.deepcopy(seed_model), digits, estimator, 1.3 * start, config, log=lambda s: None)
        (step,) = result.steps
        assert step.cost_after <= 1.3 * start * (1 + 1e-9)
        used[overselect] = (step.cost_after - start) / (0.3 * start)
    assert used[1.0] < 0.5 and used[4.0] > 0.8, used


def test_random_selection_ignores_lambda_but_keeps_the_budget_caps_and_blocks():
    from energysplit.splitting.selection import random_selection
    from energysplit.splitting.solver import GroupScores

    gen = torch.Generator().manual_seed(0)
    scores = {f"g{i}": GroupScores(torch.randn(12, generator=gen), torch.randn(12, 3, generator=gen)) for i in range(4)}
    costs = {g: 1.0 + i for i, g in enumerate(scores)}
    widths = {g: 8 for g in scores}
    picks = []
    for seed in (0, 0, 1):
        sel = random_selection(scores, costs, 30.0, seed=seed, caps={"g0": 4}, multiple=4, widths=widths)
        neurons = sel.neurons()
        assert sel.cost_used <= 30.0 and sum(n.group == "g0" for n in neurons) <= 4
        assert all((widths[g] + sum(n.group == g for n in neurons)) % 4 == 0 for g in scores)
        picks.append(sorted((n.group, n.channel) for n in neurons))
    assert picks[0] == picks[1] != picks[2]  # reproducible from its seed, different across seeds
    many = [random_selection(scores, costs, 30.0, seed=s) for s in range(20)]
    assert any(n.eigval >= 0 for sel in many for n in sel.neurons())  # lambda plays no part


def test_geometric_limits_and_width_caps(digits, seed_model):
    """Step k's limit is seed cost x growth^k; no group grows past its cap."""
    energy = create_target("mobile")
    start = energy.predict(seed_model, digits.input_shape).total
    widths = build_inventory(seed_model, digits.input_shape).widths()
    caps = {g: w + 4 for g, w in widths.items()}
    result = grow(copy.deepcopy(seed_model), digits, energy, 3 * start, _config(geometric=True, step_growth=1.2),
                  log=lambda s: None, max_widths=caps)
    assert result.steps
    for k, step in enumerate(result.steps, 1):
        assert step.cost_after <= start * 1.2 ** k * (1 + 1e-9)
    grown = build_inventory(result.model, digits.input_shape).widths()
    assert all(grown[g] <= caps[g] for g in grown) and grown != widths
