"""The benchmark's protocols count training the same way: every method of every protocol trains exactly E
epochs (counted at the training loop itself), the ledger's MAC-epochs add up, and the splitting ablations
spend the same cost per growth step as energy-aware splitting."""
from dataclasses import replace

import pytest
import torch

from energysplit.cost.estimator import create_target
from energysplit.methods import METHODS, MethodContext
from energysplit.pipeline.bench import PROFILES, profile
from energysplit.pipeline.protocols import GROW_METHODS, jobs, run_method
from energysplit.pipeline.seed_growth import Ledger, SeedGrowth, grow_from_seed
from energysplit.training import loop
from energysplit.training.loop import TrainConfig

E = 1.0
RECIPE = SeedGrowth(seed_fraction=0.3, step_growth=2.0, score_samples=128)


@pytest.fixture(scope="module")
def data(digits):
    return digits.subset(train=200, val=60, test=60)


@pytest.fixture
def counted(monkeypatch):
    """Every training run's epochs, as the training loop itself receives them."""
    runs = []
    inner = loop._train

    def counting(model, data, config, *args):
        runs.append(config.epochs)
        return inner(model, data, config, *args)

    monkeypatch.setattr(loop, "_train", counting)
    return runs


def _context(data, budget, arch, seed=0, on_train=None):
    return MethodContext(data, create_target("mobile"), budget, TrainConfig(epochs=E, batch_size=64, progress=False),
                         arch=arch, seed=seed, channel_multiple=8, score_batches=2, log=lambda s: None,
                         on_train=on_train)


@pytest.mark.parametrize("protocol", ["grow", "scratch"])
def test_every_method_of_the_growth_protocols_trains_e_epochs(protocol, data, counted, tmp_path):
    config = replace(profile("tiny", protocol), epochs=E, growth=RECIPE)
    estimators = {"mobile": create_target("mobile")}
    listed = jobs(config, data, estimators)
    assert sorted(job[6] for job in listed) == sorted(GROW_METHODS)
    if protocol == "scratch":  # the architectures come from a grow sweep in the same folder
        for job in listed:
            run_method(job, replace(config, protocol="grow"), _context(data, job[5], job[2]), tmp_path)
    for job in listed:
        counted.clear()
        ledger = Ledger(data.input_shape)
        model = run_method(job, config, _context(data, job[5], job[2], on_train=ledger), tmp_path)
        assert sum(counted) == pytest.approx(E), (job[6], counted)
        assert [r["epochs"] for r in ledger.rows] == pytest.approx(counted)
        # the last run trains the returned model: its MACs are the result's
        assert ledger.rows[-1]["macs"] == create_target("flops").predict(model, data.input_shape).total
        assert ledger.mac_epochs > 0
        assert create_target("mobile").predict(model, data.input_shape).total <= job[5] * (1 + 1e-9)
        if protocol == "scratch":  # one recipe: one from-scratch run of E epochs on the method's widths
            assert counted == [E] and ledger.rows[0]["phase"] == "train from scratch"
        assert_fresh_bn_stats(model, data.train, config.bn_batches, 64, job[7])


def assert_fresh_bn_stats(model, train, batches, batch_size, seed):
    """The model's BatchNorm statistics are those of its training images (re-estimated after its last
    training run), not the training loop's moving average."""
    import copy

    from energysplit.training.bn_stats import batchnorms, recalibrate_on_

    fresh = copy.deepcopy(model)
    assert recalibrate_on_(fresh, train, batches, batch_size, seed) > 0
    for mine, oracle in zip(batchnorms(model), batchnorms(fresh), strict=True):
        torch.testing.assert_close(mine.running_mean, oracle.running_mean, rtol=0, atol=1e-6)
        torch.testing.assert_close(mine.running_var, oracle.running_var, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_of_the_compress_protocol_fine_tunes_e_epochs(method, data, counted):
    from energysplit.zoo import create_model

    torch.manual_seed(0)
    base = create_model("vgg_small", width=0.25)
    budget = 0.5 * create_target("mobile").predict(base, data.input_shape).total
    ledger = Ledger(data.input_shape)
    ctx = _context(data, budget, {"name": "vgg_small", "kwargs": {"width": 0.25}}, on_train=ledger)
    METHODS.get(method)(base, ctx)
    # splitting's judge trains a copy without each round's move on the round's slice (3 rounds, 4 slices):
    # the model returned trains E epochs, and the copies are counted on top
    judged = sum(s["note"].startswith("move ") for s in ctx.records.get("growth_steps", []))
    assert sum(counted) == pytest.approx(E + judged * E / 4), counted
    assert ledger.epochs == pytest.approx(E + judged * E / 4)
    if method == "splitting":
        assert judged == 3


def test_unused_step_slices_go_to_the_final_phase(data, counted):
    """A growth that stops early (here: a single step allowed) still trains E epochs in all."""
    arch = {"name": "vgg_small", "kwargs": {"in_channels": 1, "num_classes": 10, "width": 0.5}}
    from energysplit.pipeline.seed_growth import build, plan_seed

    budget = 0.25 * create_target("mobile").predict(build(arch, 0.5), data.input_shape).total
    ctx = _context(data, budget, arch)
    plan = plan_seed(arch, ctx.estimator, budget, data.input_shape, RECIPE)
    assert plan.steps >= 2
    grow_from_seed(ctx, RECIPE, replace(plan, max_widths={g: 0 for g in plan.max_widths}))
    assert ctx.records["growth_steps"] == []  # every group is capped: nothing to split
    assert sum(counted) == pytest.approx(E) and ctx.records["epochs"]["final"] == pytest.approx(E * 0.6)


@pytest.mark.parametrize("carry", [False, True])
@pytest.mark.parametrize("path", ["grow protocol", "splitting-grow"])
def test_carried_momentum_runs_through_every_phase_of_a_growth(path, carry, data, monkeypatch):
    """With carry_momentum, the seed's training, every growth step and the final fine-tune continue one
    momentum (one dict, holding the buffers of the parameters each step's surgery left alone: all of them
    when the final fine-tune starts); without it every training run restarts it."""
    from energysplit.zoo import create_model

    seen = []
    inner = loop._train

    def spying(model, data, config, *args):
        momentum = args[-1]
        carried = None if momentum is None else sum(p in momentum for p in model.parameters())
        seen.append(None if momentum is None else (id(momentum), carried, len(list(model.parameters()))))
        return inner(model, data, config, *args)

    monkeypatch.setattr(loop, "_train", spying)
    if path == "grow protocol":
        arch = {"name": "vgg_small", "kwargs": {"in_channels": 1, "num_classes": 10, "width": 0.5}}
        from energysplit.pipeline.seed_growth import build

        ctx = _context(data, 0.25 * create_target("mobile").predict(build(arch, 0.5), data.input_shape).total, arch)
        ctx.train = replace(ctx.train, epochs=4.0, batch_size=16)  # a few SGD steps in every phase
        grow_from_seed(ctx, replace(RECIPE, carry_momentum=carry))
    else:
        torch.manual_seed(0)
        base = create_model("vgg_small", width=0.25)
        ctx = _context(data, 0.5 * create_target("mobile").predict(base, data.input_shape).total,
                       {"name": "vgg_small", "kwargs": {"width": 0.25}})
        ctx.train = replace(ctx.train, epochs=4.0, batch_size=16)
        METHODS.get("splitting-grow")(base, ctx, carry_momentum=carry)
    assert len(seen) >= 3 and ctx.records["growth_steps"]  # the seed's phase, one step or more, the final one
    if not carry:
        assert seen == [None] * len(seen)
    else:
        assert len({ident for ident, _, _ in seen}) == 1
        assert seen[0][1] == 0  # nothing trained yet
        assert seen[-1][1] == seen[-1][2]  # no surgery before the final fine-tune: every parameter continues


def test_the_ablations_spend_the_same_cost_per_step_as_splitting(data):
    """Same seed, same step limits (seed cost x growth^k): every step of splitting-blind and splitting-random
    lands within one channel block of splitting's."""
    from energysplit.cost.estimator import marginal_costs_of
    from energysplit.graph.trace import build_inventory
    from energysplit.pipeline.seed_growth import build

    arch = {"name": "vgg_small", "kwargs": {"in_channels": 1, "num_classes": 10, "width": 0.5}}
    estimator = create_target("mobile")
    budget = 0.25 * estimator.predict(build(arch, 0.5), data.input_shape).total
    recipe = replace(RECIPE, step_growth=1.5)
    steps, models = {}, {}
    for selector in ("lp", "cost-blind", "random"):
        ctx = _context(data, budget, arch)
        ctx.train = replace(ctx.train, epochs=0.5)
        models[selector] = grow_from_seed(ctx, replace(recipe, selector=selector))
        steps[selector] = [(s["cost_before"], s["cost_after"]) for s in ctx.records["growth_steps"]]
    model = models["lp"]
    inventory = build_inventory(model, data.input_shape)
    marginal = marginal_costs_of(estimator, model, inventory, data.input_shape, 8)
    block = 8 * max(m.add for m in marginal.values() if m.add == m.add)  # the dearest block of 8 channels
    assert len(steps["lp"]) >= 3
    for selector in ("cost-blind", "random"):
        assert len(steps[selector]) == len(steps["lp"]), steps
        assert steps[selector][0][0] == steps["lp"][0][0]  # the same seed
        for (_, a), (_, b) in zip(steps[selector], steps["lp"]):
            assert abs(a - b) <= block, (selector, steps, block)


def test_the_grow_profiles_change_only_what_the_protocol_needs():
    for name, base in PROFILES.items():
        assert profile(name) == base  # compress: unchanged
        grown = profile(name, "grow")
        assert grown.protocol == "grow" and grown.methods == GROW_METHODS and grown.latency_models == ()
    from energysplit.errors import ConfigError

    with pytest.raises(ConfigError, match="protocol"):
        profile("tiny", "magic")


@pytest.mark.parametrize("name", ["quick", "medium", "full"])
def test_every_budget_of_the_grow_profiles_is_reachable_from_its_seed(name):
    """plan_seed alone (no training): the splitting methods' seed of every model reaches every budget."""
    from energysplit.pipeline.seed_growth import build, plan_seed

    config, estimator, shape = profile(name, "grow"), create_target("mobile"), (1, 28, 28)
    for model in config.models:
        arch = {"name": model, "kwargs": {"in_channels": 1, "num_classes": 10, "width": config.width}}
        full = estimator.predict(build(arch, config.width), shape).total
        for _, fraction in config.budgets:
            plan = plan_seed(arch, estimator, fraction * full, shape, config.growth)
            assert plan.cost < fraction * full <= plan.reachable and plan.steps >= 1


def test_scratch_rebuilds_a_narrow_architecture_whose_topology_differs_at_full_width():
    """MobileNetV2 at x0.03 has a residual add that x0.5 lacks (a block's in and out widths round alike):
    its widths cannot be resized onto x0.5, so the scratch protocol builds it at a width with its groups."""
    from energysplit.graph.archive import resize_
    from energysplit.graph.trace import build_inventory
    from energysplit.pipeline.protocols import _build_width
    from energysplit.pipeline.seed_growth import build

    arch, shape = {"name": "mobilenet_v2"}, (1, 28, 28)
    narrow = build_inventory(build(arch, 0.03), shape).widths()
    assert set(narrow) != set(build_inventory(build(arch, 0.5), shape).groups)
    width = _build_width(arch, narrow, 0.5, shape)
    model = build(arch, width)
    resize_(model, narrow, shape)
    assert build_inventory(model, shape).widths() == narrow
    assert _build_width(arch, build_inventory(build(arch, 0.5), shape).widths(), 0.5, shape) == 0.5
