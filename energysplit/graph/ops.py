"""How the tracer classifies torch ops: which are activations, which are channel-transparent.

Every op the tracer meets is either listed here (or handled by :mod:`energysplit.graph.trace` by type)
or rejected with :class:`~energysplit.errors.UnsupportedModelError`: never silently ignored.
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

# activation module type -> normalised name (exact types first: ReLU6 subclasses Hardtanh)
ACT_MODULES = {
    nn.ReLU: "relu", nn.ReLU6: "relu6", nn.SiLU: "silu", nn.Hardswish: "hardswish", nn.GELU: "gelu",
    nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.Hardsigmoid: "hardsigmoid", nn.LeakyReLU: "leaky_relu",
    nn.ELU: "elu", nn.Mish: "mish", nn.Softplus: "softplus", nn.Hardtanh: "hardtanh",
}
# modules that neither mix channels nor hold per-channel state
TRANSPARENT_MODULES = (
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample,
    nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d,
)

ACT_FUNCTIONS = {
    F.relu: "relu", torch.relu: "relu", F.relu_: "relu", torch.relu_: "relu", F.relu6: "relu6",
    F.silu: "silu", F.hardswish: "hardswish", F.gelu: "gelu", torch.tanh: "tanh", F.tanh: "tanh",
    torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", F.hardsigmoid: "hardsigmoid",
    F.leaky_relu: "leaky_relu", F.elu: "elu", F.mish: "mish", F.softplus: "softplus",
    F.hardtanh: "hardtanh",
}
ACT_METHODS = {"relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "sigmoid_": "sigmoid",
               "tanh": "tanh", "tanh_": "tanh"}

TRANSPARENT_FUNCTIONS = {
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.interpolate,
}
# transparent functions from optional packages, by qualified name (torchvision wraps these for fx)
TRANSPARENT_NAMES = {"torchvision.ops.stochastic_depth.stochastic_depth"}
TRANSPARENT_METHODS = {"contiguous", "clone", "detach", "float", "double", "half", "to"}

# element-wise binary ops: add-like ops couple channels; mul-like ops may gate them
ADD_OPS = {operator.add, operator.iadd, operator.sub, operator.isub, torch.add, torch.sub}
MUL_OPS = {operator.mul, operator.imul, operator.truediv, operator.itruediv, torch.mul, torch.div}
ADD_METHODS = {"add", "add_", "sub", "sub_"}
MUL_METHODS = {"mul", "mul_", "div", "div_"}

RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze}
RESHAPE_METHODS = {"flatten", "view", "reshape", "squeeze", "unsqueeze"}
REDUCE_FUNCTIONS = {torch.mean, torch.sum, torch.amax}
REDUCE_METHODS = {"mean", "sum", "amax"}
CAT_FUNCTIONS = {torch.cat, torch.concat}
# ops on shapes and sizes (no tensor output)
NON_TENSOR_METHODS = {"size", "dim", "numel"}


def op_name(node) -> str:
    """A readable name of a call_function/call_method target, e.g. ``torch.nn.functional.relu``."""
    target = node.target
    if node.op == "call_method":
        return f"Tensor.{target}"
    module = getattr(target, "__module__", None) or "torch"
    if module == "_operator":
        module = "operator"
    return f"{module}.{getattr(target, '__name__', str(target))}"
