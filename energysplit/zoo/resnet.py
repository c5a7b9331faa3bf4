"""Residual networks with basic blocks (He et al. 2016): ResNet-20 (CIFAR-style, 16-32-64) and
ResNet-18 (64-128-256-512) with a 3x3 stride-1 stem for small images."""
from __future__ import annotations

import torch
from torch import nn

from ._factory import make_activation, register_model, scale_width


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, act: str):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = make_activation(act)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.act2 = make_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, stages, depths, in_channels: int = 1, num_classes: int = 10, width: float = 1.0,
                 act: str = "relu"):
        super().__init__()
        stages = [scale_width(c, width) for c in stages]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stages[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(stages[0]), make_activation(act))
        blocks, cin = [], stages[0]
        for i, (cout, depth) in enumerate(zip(stages, depths)):
            for j in range(depth):
                blocks.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1, act))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


@register_model
def resnet20(in_channels: int = 1, num_classes: int = 10, width: float = 1.0, act: str = "relu") -> nn.Module:
    return ResNet([16, 32, 64], [3, 3, 3], in_channels, num_classes, width, act)


@register_model
def resnet18(in_channels: int = 1, num_classes: int = 10, width: float = 1.0, act: str = "relu") -> nn.Module:
    return ResNet([64, 128, 256, 512], [2, 2, 2, 2], in_channels, num_classes, width, act)
