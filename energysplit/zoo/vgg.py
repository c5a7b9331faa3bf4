"""A small VGG-style network (Simonyan & Zisserman 2015): conv-BN-act stacks, max-pool, linear head."""
from __future__ import annotations

import torch
from torch import nn

from ._factory import make_activation, register_model, scale_width

VGG_SMALL = [64, 64, "M", 128, 128, "M", 256, 256, "M"]


class VGG(nn.Module):
    def __init__(self, config, in_channels: int = 1, num_classes: int = 10, width: float = 1.0,
                 act: str = "relu", hidden: int = 256):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
                continue
            cout = scale_width(item, width)
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), make_activation(act)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        hidden = scale_width(hidden, width)
        self.classifier = nn.Sequential(nn.Linear(cin, hidden), make_activation(act), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@register_model
def vgg_small(in_channels: int = 1, num_classes: int = 10, width: float = 1.0, act: str = "relu") -> nn.Module:
    """Six 3x3 conv layers (64-64-128-128-256-256 at width 1) and a 256-unit hidden layer."""
    return VGG(VGG_SMALL, in_channels, num_classes, width, act)
