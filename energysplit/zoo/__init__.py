"""Model zoo for small images (28-32 px), registered by name, timm-style.

Every model takes ``in_channels``, ``num_classes``, ``width`` (a width multiplier) and ``act``.
"""
from __future__ import annotations

from . import mobilenet, resnet, vgg  # noqa: F401  (registration side effects)
from ._factory import (ACTIVATIONS, DEFAULT_MODEL, MODELS, create_model, list_models, make_activation,
                       register_model, scale_width)

__all__ = ["ACTIVATIONS", "DEFAULT_MODEL", "MODELS", "create_model", "list_models", "make_activation",
           "register_model", "scale_width"]
