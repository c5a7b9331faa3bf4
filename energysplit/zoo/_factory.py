"""The model registry and the helpers every zoo model uses (timm's ``_factory``/``_registry`` in spirit)."""
from __future__ import annotations

from torch import nn

from .._registry import Registry
from ..errors import ConfigError

MODELS = Registry("model")
ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "silu": nn.SiLU, "swish": nn.SiLU,
               "hardswish": nn.Hardswish, "gelu": nn.GELU, "tanh": nn.Tanh}
DEFAULT_MODEL = "mobilenet_v2"


def register_model(fn):
    """Decorator: register a model factory under its function name."""
    return MODELS.register(fn.__name__, fn)


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; choose from {', '.join(sorted(ACTIVATIONS))}")
    return ACTIVATIONS[name]()


def scale_width(channels: int, width: float, divisor: int = 8, minimum: int = 8) -> int:
    """Channels times the width multiplier, rounded to a multiple of ``divisor`` (MobileNet rule)."""
    value = max(minimum, int(channels * width + divisor / 2) // divisor * divisor)
    if value < 0.9 * channels * width:
        value += divisor
    return value


def create_model(name: str, *, in_channels: int = 1, num_classes: int = 10, width: float | None = None,
                 act: str | None = None, **kwargs) -> nn.Module:
    """Build a registered model; arguments left as None take the model's defaults."""
    return MODELS.create(name, in_channels=in_channels, num_classes=num_classes, width=width, act=act, **kwargs)


def list_models(pattern: str = "*") -> list[str]:
    return MODELS.names(pattern)
