"""benchmarks/split_gain.py: a growth step's predicted loss change against the one it makes."""
import importlib.util
from pathlib import Path

import pytest
import torch

from energysplit.training.loop import TrainConfig, train
from energysplit.zoo import create_model

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "split_gain.py"
_spec = importlib.util.spec_from_file_location("split_gain", _PATH)
split_gain = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(split_gain)


def test_in_sample_change_follows_the_prediction_at_small_eps_and_the_model_is_left_alone(digits):
    """On the images that scored the step, a smooth network's loss changes by the predicted
    1/2 sum eps^2 lambda when eps is small (second order: a quarter of it at half the eps)."""
    torch.manual_seed(0)
    model = create_model("vgg_small", width=0.25, act="silu")
    train(model, digits.train, TrainConfig(epochs=1.0, lr=0.05, batch_size=64, progress=False))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    small, half = split_gain.split_gain(model, digits, 0.02), split_gain.split_gain(model, digits, 0.01)
    assert small["neurons"] > 0 and small["predicted"] < 0
    assert small["in_sample"] == pytest.approx(small["predicted"], rel=0.15)
    assert half["in_sample"] == pytest.approx(small["in_sample"] / 4, rel=0.1)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
