import pytest
import torch

from energysplit.errors import ConfigError
from energysplit.zoo import MODELS, create_model, list_models, scale_width


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("in_channels,size", [(1, 28), (3, 32)])
def test_forward_backward(name, in_channels, size):
    torch.manual_seed(0)
    model = create_model(name, in_channels=in_channels, num_classes=7, width=0.25)
    x = torch.randn(2, in_channels, size, size)
    out = model(x)
    assert out.shape == (2, 7)
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_width_multiplier_shrinks_models():
    for name in list_models():
        small = sum(p.numel() for p in create_model(name, width=0.5).parameters())
        big = sum(p.numel() for p in create_model(name, width=1.0).parameters())
        assert small < big, name


def test_activation_choice_and_stem():
    model = create_model("mobilenet_v2", act="silu", in_channels=3)
    kinds = {type(m).__name__ for m in model.modules()}
    assert "SiLU" in kinds and "ReLU6" not in kinds
    assert model.features[0][0].in_channels == 3 and model.features[0][0].stride == (1, 1)
    with pytest.raises(ConfigError, match="unknown activation"):
        create_model("vgg_small", act="nope")


def test_scale_width_rounds_to_multiples_of_8():
    assert scale_width(32, 1.0) == 32
    assert scale_width(32, 0.5) == 16
    assert scale_width(100, 0.3) == 32  # 30 rounds to 32
    assert scale_width(16, 0.1) == 8  # never below the minimum


def test_registry_lists_required_models():
    assert {"mobilenet_v1", "mobilenet_v2", "vgg_small", "resnet20", "resnet18"} <= set(MODELS.names())
