import math

import pytest
import torch

from energysplit.training.loop import TrainConfig, evaluate, lr_schedule, train
from energysplit.zoo import create_model


def test_short_training_beats_chance_on_digits(digits):
    torch.manual_seed(0)
    model = create_model("vgg_small", width=0.25)
    before = evaluate(model, digits.test)
    result = train(model, digits.train, TrainConfig(epochs=3, lr=0.05, batch_size=64, progress=False), val=digits.val)
    after = evaluate(model, digits.test)
    assert result.steps == 3 * 19 and result.seconds > 0
    assert after.accuracy > 0.8 > before.accuracy + 0.3  # chance is 0.1
    assert after.loss < before.loss


def test_training_is_reproducible(digits):
    data = digits.subset(train=256).train
    states = []
    for _ in range(2):
        torch.manual_seed(1)
        model = create_model("resnet20", width=0.25)
        train(model, data, TrainConfig(epochs=1, batch_size=64, seed=3, progress=False))
        states.append(model.state_dict())
    for key in states[0]:
        torch.testing.assert_close(states[0][key], states[1][key])


def test_evaluate_is_deterministic_and_restores_mode(digits):
    model = create_model("mobilenet_v1", width=0.25)
    model.train()
    a, b = evaluate(model, digits.val), evaluate(model, digits.val)
    assert a.accuracy == b.accuracy and a.loss == b.loss and a.samples == 300
    assert model.training


def _lrs(total, **settings):
    """The lr of each step of a run of ``total`` steps under TrainConfig(lr=1, **settings)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    set_lr = lr_schedule(optimizer, TrainConfig(lr=1.0, **settings), total)
    out = []
    for step in range(total):
        set_lr(step)
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
    return out


def test_schedules():
    cosine = [0.5 * (1 + math.cos(math.pi * k / 100)) for k in range(100)]
    assert _lrs(100) == pytest.approx(cosine, abs=1e-15) and _lrs(100)[0] == 1.0
    assert _lrs(100, schedule="step")[49:51] == [1.0, 0.1] and _lrs(100, schedule="step")[74:76] == [0.1, 0.01]
    assert _lrs(100, schedule="constant") == [1.0] * 100
    assert _lrs(100, warmup_steps=4)[:5] == pytest.approx([0.25, 0.5, 0.75, 1.0, cosine[4]], abs=1e-15)


def test_phases_with_spans_follow_one_schedule():
    whole = _lrs(100)
    phases = [(0.0, 0.3, 30), (0.3, 0.5, 20), (0.5, 1.0, 50)]
    pieced = [lr for a, b, n in phases for lr in _lrs(n, span=(a, b))]
    assert pieced == pytest.approx(whole, abs=1e-15)
    assert _lrs(10, span=(0.5, 1.0))[0] == pytest.approx(0.5)  # not a restart at 1.0
    assert _lrs(3, span=(1.0, 1.0)) == [0.0] * 3  # past the recipe's end: the cosine is over, no new cycle
    assert _lrs(4, span=(0.5, 0.5)) == pytest.approx([0.5] * 4)
    with pytest.raises(ValueError, match="span"):
        TrainConfig(span=(0.6, 0.4))


def test_momentum_carried_across_phases_makes_them_one_run(digits):
    """Two runs over the halves of one schedule, full-batch (the batch order cannot differ), with the
    momentum carried from the first to the second end where one run over the whole schedule ends; without
    the carry the second restarts its momentum and ends elsewhere. Deep-copied together, the carry's keys
    follow the model's copy."""
    import copy

    data = digits.subset(train=256).train
    torch.manual_seed(0)
    start = create_model("vgg_small", width=0.25)
    config = TrainConfig(epochs=4, batch_size=256, lr=0.05, progress=False)
    whole = copy.deepcopy(start)
    train(whole, data, config)
    phased, carried = copy.deepcopy(start), {}
    for span in ((0.0, 0.5), (0.5, 1.0)):
        train(phased, data, TrainConfig(epochs=2, batch_size=256, lr=0.05, span=span, progress=False),
              momentum=carried)
    restarted = copy.deepcopy(start)
    for span in ((0.0, 0.5), (0.5, 1.0)):
        train(restarted, data, TrainConfig(epochs=2, batch_size=256, lr=0.05, span=span, progress=False))
    for a, b, c in zip(whole.parameters(), phased.parameters(), restarted.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    assert max((a - c).abs().max().item() for a, c in zip(whole.parameters(), restarted.parameters())) > 1e-3
    assert set(carried) == set(phased.parameters())
    copied, copied_carry = copy.deepcopy((phased, carried))
    assert set(copied_carry) == set(copied.parameters())  # the keys follow the copy
    first = next(copied.parameters())
    torch.testing.assert_close(copied_carry[first], carried[next(phased.parameters())])


@pytest.mark.parametrize("name", ["resnet20", "vgg_small"])
def test_channels_last_training_matches_the_default_format_and_hands_back_contiguous_weights(digits, name):
    """On the CPU, training runs its convolutions in channels-last format (twice as fast there): one SGD
    step moves every parameter as the default format's step does, up to float rounding, the parameter
    objects are kept and come back in the default format, and nested uses (evaluate inside train) leave
    the outer one in place. (One step: a few steps of SGD on a network at initialisation amplify any
    rounding difference chaotically, a 1e-6 perturbation of the weights as much as the format.)"""
    import copy

    from energysplit._device import _in_channels_last, channels_last_on_cpu

    data = digits.subset(train=64).train
    torch.manual_seed(0)
    start = create_model(name, width=0.25)
    runs = {}
    for fast in (False, True):
        model = copy.deepcopy(start)
        params = list(model.parameters())
        train(model, data, TrainConfig(epochs=1, batch_size=64, channels_last=fast, progress=False), val=data)
        assert list(model.parameters()) == params and all(p.is_contiguous() for p in params)
        runs[fast] = model
    for s, a, b in zip(start.parameters(), runs[False].parameters(), runs[True].parameters()):
        assert (b - a).abs().max() <= 1e-3 * (a - s).abs().max() + 1e-7
    model = runs[True]
    conv = next(p for p in model.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] > 1)
    with channels_last_on_cpu(model):
        assert conv.stride() != conv.contiguous().stride()
        with channels_last_on_cpu(model):
            pass
        assert conv.stride() != conv.contiguous().stride()  # the inner use did not convert back
    assert conv.is_contiguous() and not _in_channels_last
