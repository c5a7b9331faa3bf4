"""Every registered method, end to end on a tiny model: it meets the budget and returns a working model."""
import copy

import pytest
import torch

from energysplit import METHODS, MethodContext, TrainConfig, create_model, create_target
from energysplit.graph.trace import build_inventory


@pytest.fixture(scope="module")
def tiny(digits):
    torch.manual_seed(0)
    return create_model("vgg_small", width=0.25), digits.subset(train=256, val=64)


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_meets_the_budget_and_returns_a_working_model(tiny, method):
    model, data = tiny
    energy = create_target("mobile")
    base = energy.predict(model, data.input_shape).total
    budget = 0.5 * base
    records = {}
    ctx = MethodContext(data, energy, budget, TrainConfig(epochs=0.25, batch_size=64, progress=False),
                        arch={"name": "vgg_small", "kwargs": {"width": 0.25}}, score_batches=2, records=records,
                        log=lambda s: None)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    out = METHODS.get(method)(copy.deepcopy(model), ctx)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the input is left alone
    final = energy.predict(out, data.input_shape).total
    assert 0.3 * budget < final <= budget, f"{method}: {final:.4g} for a budget of {budget:.4g}"
    x = torch.randn(3, *data.input_shape)
    logits = out.eval()(x)
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()
    assert build_inventory(out, data.input_shape).widths()  # the result traces again
    if method == "splitting":
        assert records["growth_steps"], "splitting grew the seed in at least one step"
