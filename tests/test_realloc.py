"""Reallocation at constant budget (issue 17, item 1), the ``splitting`` method: it keeps the model at the budget
through every round (pruned by delta, split back, filled), trains exactly the baselines' epochs on one
schedule, and moves width between layers."""
import copy
import re

import pytest
import torch

from energysplit import METHODS, MethodContext, TrainConfig, create_model, create_target
from energysplit.errors import ConfigError
from energysplit.graph.trace import build_inventory


@pytest.fixture(scope="module")
def setup(digits):
    torch.manual_seed(0)
    model = create_model("vgg_small", width=0.25, act="silu")
    data = digits.subset(train=256, val=64)
    energy = create_target("mobile")
    return model, data, energy, 0.6 * energy.predict(model, data.input_shape).total


def _ctx(data, energy, budget, runs):
    return MethodContext(data, energy, budget, TrainConfig(epochs=0.4, batch_size=64, progress=False),
                         score_batches=2, log=lambda s: None, records={},
                         on_train=lambda desc, model, result: runs.append((desc, model.training, result.epochs)))


def test_realloc_stays_at_the_budget_and_trains_the_same_epochs(setup):
    model, data, energy, budget = setup
    runs = []
    ctx = _ctx(data, energy, budget, runs)
    out = METHODS.get("splitting")(copy.deepcopy(model), ctx, judge_images=0)  # every round's move kept
    assert energy.predict(out, data.input_shape).total <= budget
    rounds = ctx.records["growth_steps"]  # one record per round that split
    assert [r["step"] for r in rounds] == [1, 2, 3] and all(r["split_per_group"] for r in rounds)
    assert all(0.9 * budget < r["cost_after"] <= budget for r in rounds)  # pruned by 10%, filled back
    assert [d for d, _, _ in runs] == ["round 1 fine-tune", "round 2 fine-tune", "round 3 fine-tune", "final fine-tune"]
    assert sum(e for _, _, e in runs) == pytest.approx(0.4)


def test_realloc_rounds_can_take_a_smaller_share_of_the_schedule(setup):
    model, data, energy, budget = setup
    runs = []
    METHODS.get("splitting")(copy.deepcopy(model), _ctx(data, energy, budget, runs), rounds_share=0.3, judge_images=0)
    assert [e for _, _, e in runs] == pytest.approx([0.04, 0.04, 0.04, 0.28])  # 10% of 0.4 epochs per round
    with pytest.raises(ConfigError, match="rounds_share"):
        METHODS.get("splitting")(copy.deepcopy(model), _ctx(data, energy, budget, []), rounds_share=1.0)


def test_realloc_can_fine_tune_each_slice_before_its_round(setup):
    """With ``finetune_first`` the first fine-tune trains the Taylor-pruned model (the first round scores a
    recovered network); by default it trains the model after the first round's split."""
    model, data, energy, budget = setup
    taylor = METHODS.get("taylor")(copy.deepcopy(model), _ctx(data, energy, budget, []))
    taylor_widths = build_inventory(taylor, data.input_shape).widths()
    for first, same in ((True, True), (False, False)):
        widths = []
        ctx = _ctx(data, energy, budget, [])
        ctx.on_train = lambda desc, m, result: widths.append((desc, build_inventory(m, data.input_shape).widths()))
        METHODS.get("splitting")(copy.deepcopy(model), ctx, finetune_first=first, judge_images=0)
        assert [d for d, _ in widths] == ["round 1 fine-tune", "round 2 fine-tune", "round 3 fine-tune",
                                          "final fine-tune"]
        assert (widths[0][1] == taylor_widths) is same


def test_realloc_moves_width_where_taylor_alone_does_not(setup):
    model, data, energy, budget = setup
    taylor = METHODS.get("taylor")(copy.deepcopy(model), _ctx(data, energy, budget, []))
    realloc = METHODS.get("splitting")(copy.deepcopy(model), _ctx(data, energy, budget, []))
    shape = data.input_shape
    assert build_inventory(realloc, shape).widths() != build_inventory(taylor, shape).widths()
    assert realloc.eval()(torch.randn(2, *shape)).shape == (2, 10)


def test_an_interrupted_realloc_resumes_to_the_same_model(setup, tmp_path):
    """Killed during round 2 (after round 1's checkpoint), resumed: the same weights and records as a run
    that was never interrupted."""
    from dataclasses import replace

    model, data, energy, budget = setup
    whole = _ctx(data, energy, budget, [])
    reference = METHODS.get("splitting")(copy.deepcopy(model), whole)

    class Killed(Exception):
        pass

    def kill_in_round_2(desc, model, result):
        if desc == "round 2 fine-tune":
            raise Killed

    arch = {"name": "vgg_small", "kwargs": {"width": 0.25, "act": "silu"}}
    ctx = replace(_ctx(data, energy, budget, []), workdir=tmp_path, on_train=kill_in_round_2, arch=arch)
    with pytest.raises(Killed):
        METHODS.get("splitting")(copy.deepcopy(model), ctx)
    assert (tmp_path / "model.es").exists()
    logs = []
    ctx = replace(_ctx(data, energy, budget, []), workdir=tmp_path, resume=True, log=logs.append, records={},
                  arch=arch)
    resumed = METHODS.get("splitting")(copy.deepcopy(model), ctx)
    assert any("after reallocation round 1" in line for line in logs)
    def untimed(steps):
        return [{k: v for k, v in s.items() if not k.endswith("_seconds")} for s in steps]

    assert untimed(ctx.records["growth_steps"]) == untimed(whole.records["growth_steps"])
    for a, b in zip(resumed.state_dict().values(), reference.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_realloc_can_recalibrate_batchnorm_after_every_pruning(setup, monkeypatch):
    """``recalibrate=N``: the pruned network's BatchNorm statistics are re-estimated (N training batches)
    before each round's Taylor ranking and again before its splitting scores; 20 batches by default."""
    from energysplit.training import bn_stats

    model, data, energy, budget = setup
    calls = []
    real = bn_stats.recalibrate_on_
    monkeypatch.setattr(bn_stats, "recalibrate_on_", lambda m, train, batches, *a: calls.append(batches) or
                        real(m, train, batches, *a))
    METHODS.get("splitting")(copy.deepcopy(model), _ctx(data, energy, budget, []), rounds=2, recalibrate=3)
    assert calls == [3, 3, 3, 3]
    calls.clear()
    METHODS.get("splitting")(copy.deepcopy(model), _ctx(data, energy, budget, []), rounds=2, recalibrate=0)
    assert calls == [0, 0, 0, 0]  # called, does nothing
    calls.clear()
    METHODS.get("splitting")(copy.deepcopy(model), _ctx(data, energy, budget, []), rounds=1)
    assert calls == [20, 20]


def test_realloc_can_leave_the_frozen_residual_streams_where_taylor_put_them(digits):
    """By default (``prune_frozen=False``) the rounds prune only groups the split can grow back, so the residual
    streams (frozen for growth) end at the width the first Taylor pruning gave them; ``True`` prunes them."""
    from energysplit.splitting.joint import is_joint

    torch.manual_seed(0)
    model = create_model("resnet20", width=0.5)
    data = digits.subset(train=256, val=64)
    energy = create_target("mobile")
    budget = 0.6 * energy.predict(model, data.input_shape).total
    streams = [g.id for g in build_inventory(model, data.input_shape) if is_joint(g)]

    def widths(**kw):
        out = METHODS.get(kw.pop("method", "splitting"))(copy.deepcopy(model), _ctx(data, energy, budget, []), **kw)
        return build_inventory(out, data.input_shape).widths()

    taylor = widths(method="taylor")
    kept = widths()
    assert {g: kept[g] for g in streams} == {g: taylor[g] for g in streams} and kept != taylor
    assert {g: widths(prune_frozen=True)[g] for g in streams} != {g: taylor[g] for g in streams}


def test_judged_rounds_train_an_unmoved_copy_and_keep_the_lower_loss(setup):
    """``judge_images``: every round trains a copy without its move on the same slice, and keeps the move
    only if its loss on the judge images is lower; every round's split record notes what the judge said."""
    model, data, energy, budget = setup
    runs = []
    ctx = _ctx(data, energy, budget, runs)
    out = METHODS.get("splitting")(copy.deepcopy(model), ctx, rounds=2, judge_images=128)
    notes = [(r["step"], re.fullmatch(r"move (kept|undone): judge loss (\S+) with it, (\S+) without", r["note"]).groups())
             for r in ctx.records["growth_steps"]]
    assert [step for step, _ in notes] == [1, 2]
    assert all((verdict == "kept") == (float(moved) < float(unmoved)) for _, (verdict, moved, unmoved) in notes)
    kept = sum(verdict == "kept" for _, (verdict, _, _) in notes)
    assert ctx.records["stop_reason"].endswith(f"{kept} of 2 judged moves kept (128 training images)")
    assert [d for d, _, _ in runs] == ["round 1 fine-tune", "round 1 fine-tune without the move", "round 2 fine-tune",
                                       "round 2 fine-tune without the move", "final fine-tune"]
    # the network kept trains the baselines' epochs; the copy of each round trains its slice once more
    assert sum(e for d, _, e in runs if "without" not in d) == pytest.approx(0.4)
    assert sum(e for _, _, e in runs) == pytest.approx(0.4 + 2 * 0.4 / 3)
    assert energy.predict(out, data.input_shape).total <= budget
    with pytest.raises(ConfigError, match="finetune_first"):
        METHODS.get("splitting")(copy.deepcopy(model), _ctx(data, energy, budget, []), judge_images=8,
                                 finetune_first=True)


def test_a_judged_round_that_loses_is_undone(setup, monkeypatch):
    """When the moved network's judge loss is not lower, the round's move is undone: the widths are those of
    the network trained without it."""
    import energysplit.training.loop as loop

    model, data, energy, budget = setup
    widths = {}
    ctx = _ctx(data, energy, budget, [])
    ctx.on_train = lambda desc, m, result: widths.setdefault(desc, build_inventory(m, data.input_shape).widths())
    real = loop.evaluate
    monkeypatch.setattr(loop, "evaluate", lambda m, d, **kw: real(m, d, **kw) if len(d) != 50 else
                        loop.EvalResult(0.0, 1.0, 50, 0.0))  # the judge sees a tie: never lower
    out = METHODS.get("splitting")(copy.deepcopy(model), ctx, rounds=1, judge_images=50)
    assert ctx.records["growth_steps"][0]["note"].startswith("move undone: judge loss")
    assert widths["round 1 fine-tune"] != widths["round 1 fine-tune without the move"]
    assert build_inventory(out, data.input_shape).widths() == widths["round 1 fine-tune without the move"]


@pytest.mark.parametrize("carry", [True, False])
def test_realloc_can_carry_the_momentum_across_its_slices(setup, monkeypatch, carry):
    """``carry_momentum``: every slice after the first starts from the momentum the previous one left, for
    the parameters the round's surgery did not replace (the moved network's edited layers start afresh);
    without it every slice restarts its momentum."""
    import energysplit.methods.context as context

    model, data, energy, budget = setup
    seen = []
    real = context.train

    def spy(m, d, config, **kw):
        carried = kw.get("momentum")
        params = set(m.parameters())
        seen.append(None if carried is None else (sum(p in params for p in carried), len(params)))
        return real(m, d, config, **kw)

    monkeypatch.setattr(context, "train", spy)
    METHODS.get("splitting")(copy.deepcopy(model), _ctx(data, energy, budget, []), rounds=2, judge_images=50,
                             carry_momentum=carry)
    assert len(seen) == 5  # two rounds with their copies, then the final fine-tune
    if not carry:
        assert seen == [None] * 5
    else:
        assert seen[0][0] == seen[1][0] == 0  # nothing trained yet
        assert seen[3][0] == seen[3][1] and seen[4][0] > 0  # the copy without the move continues all of it
        assert 0 < seen[2][0] < seen[2][1]  # the moved network: only the layers its surgery left alone


def test_a_checkpoint_keeps_the_momentum_of_its_phase(setup, tmp_path):
    """The carried momentum is saved with the round and restored by parameter name onto the reloaded model;
    a momentum file tagged with another phase or step count (a crash between the two writes) is not used."""
    from energysplit.splitting.checkpoint import Checkpoint

    model, data, _, _ = setup
    checkpoint = Checkpoint(tmp_path, {"name": "vgg_small", "kwargs": {"width": 0.25, "act": "silu"}}, data.input_shape)
    momentum = {p: torch.full_like(p, i) for i, p in enumerate(model.parameters())}
    checkpoint.save(model, [], "round 1", momentum)
    restored, steps, phase = checkpoint.load()
    carried = checkpoint.momentum(restored, phase, steps)
    assert set(carried) == set(restored.parameters())
    for p, q in zip(model.parameters(), restored.parameters()):
        torch.testing.assert_close(carried[q], momentum[p])
    assert checkpoint.momentum(restored, "round 2", steps) == {}
    assert checkpoint.momentum(restored, phase, [object()]) == {}  # saved after another number of steps
