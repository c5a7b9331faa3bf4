import pytest
import torch

from energysplit.training.loop import TrainConfig, evaluate, lr_factor, train
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


def test_schedules():
    assert lr_factor("cosine", 0, 100) == 1.0 and abs(lr_factor("cosine", 100, 100)) < 1e-12
    assert lr_factor("step", 60, 100) == 0.1 and lr_factor("step", 80, 100) == 0.01
    assert lr_factor("constant", 50, 100) == 1.0
    assert lr_factor("cosine", 0, 100, warmup=4) == 0.25


def test_phases_with_spans_follow_one_schedule():
    whole = [lr_factor("cosine", s, 100) for s in range(100)]
    phases = [(0.0, 0.3, 30), (0.3, 0.5, 20), (0.5, 1.0, 50)]
    pieced = [lr_factor("cosine", s, n, span=(a, b)) for a, b, n in phases for s in range(n)]
    assert pieced == pytest.approx(whole)
    assert lr_factor("cosine", 0, 10, span=(0.5, 1.0)) == pytest.approx(0.5)  # not a restart at 1.0
    with pytest.raises(ValueError, match="span"):
        TrainConfig(span=(0.6, 0.4))
