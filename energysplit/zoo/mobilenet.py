"""MobileNetV1 (Howard et al. 2017; the splitting paper's main network) and torchvision's MobileNetV2,
both with a stride-1 stem and four stride-2 stages suited to 28-32 px inputs."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models import MobileNetV2

from ._factory import make_activation, register_model, scale_width

# (output channels, stride) of the depthwise-separable blocks at width 1.0 (Howard et al. Table 1)
MOBILENET_V1_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
                       (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]
# torchvision's (expansion t, channels c, repeats n, stride s) with a stride-1 stem for small images:
# 28 px -> stem 28, stages 28, 14, 7, 4, 4, 2, 2 (four stride-2 stages, as on ImageNet after the stem).
MOBILENET_V2_SETTING = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2],
                        [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]


def conv_bn_act(cin: int, cout: int, kernel: int, stride: int, act: str, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        make_activation(act),
    )


class MobileNetV1(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: float = 1.0, act: str = "relu"):
        super().__init__()
        stem = scale_width(32, width)
        layers = [conv_bn_act(in_channels, stem, 3, 1, act)]
        cin = stem
        for cout, stride in MOBILENET_V1_BLOCKS:
            cout = scale_width(cout, width)
            layers.append(nn.Sequential(conv_bn_act(cin, cin, 3, stride, act, groups=cin),
                                        conv_bn_act(cin, cout, 1, 1, act)))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@register_model
def mobilenet_v1(in_channels: int = 1, num_classes: int = 10, width: float = 1.0, act: str = "relu") -> nn.Module:
    return MobileNetV1(in_channels, num_classes, width, act)


def swap_activations_(model: nn.Module, old: type, act: str) -> nn.Module:
    """Replace every ``old`` activation module by ``act`` in place."""
    for name, child in model.named_children():
        if isinstance(child, old):
            setattr(model, name, make_activation(act))
        else:
            swap_activations_(child, old, act)
    return model


@register_model
def mobilenet_v2(in_channels: int = 1, num_classes: int = 10, width: float = 1.0, act: str = "relu6",
                 dropout: float = 0.0) -> nn.Module:
    """torchvision's MobileNetV2 with a stride-1 stem for ``in_channels`` and the small-image strides."""
    model = MobileNetV2(num_classes=num_classes, width_mult=width,
                        inverted_residual_setting=MOBILENET_V2_SETTING, dropout=dropout)
    stem = model.features[0][0]
    model.features[0][0] = nn.Conv2d(in_channels, stem.out_channels, 3, 1, 1, bias=False)
    if act != "relu6":
        swap_activations_(model, nn.ReLU6, act)
    return model
