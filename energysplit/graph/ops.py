"""How the tracer classifies torch ops: the one activation table, channel-transparent ops, cost kinds.

Every op the tracer meets is either listed here (or handled by :mod:`energysplit.graph.trace` by type)
or rejected with :class:`~energysplit.errors.UnsupportedModelError`: never silently ignored.
:data:`ACTIVATIONS` is the single activation table: tracing (chain ops), curvature
(:mod:`energysplit.splitting.curvature` keys its derivative rules by these names) and costing
(:class:`energysplit.graph.layers.LayerSpec` ``act``) all use its canonical names.
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

# canonical activation name -> (module types, functions, Tensor methods)
ACTIVATIONS: dict[str, tuple[tuple[type, ...], tuple, tuple[str, ...]]] = {
    "relu": ((nn.ReLU,), (F.relu, torch.relu, F.relu_, torch.relu_), ("relu", "relu_")),
    "relu6": ((nn.ReLU6,), (F.relu6,), ()),
    "silu": ((nn.SiLU,), (F.silu,), ()),
    "hardswish": ((nn.Hardswish,), (F.hardswish,), ()),
    "gelu": ((nn.GELU,), (F.gelu,), ()),
    "gelu_tanh": ((), (), ()),  # F.gelu(approximate="tanh"); nn.GELU keeps "gelu" and passes itself
    "tanh": ((nn.Tanh,), (torch.tanh, F.tanh), ("tanh", "tanh_")),
    "sigmoid": ((nn.Sigmoid,), (torch.sigmoid, F.sigmoid), ("sigmoid", "sigmoid_")),
    "hardsigmoid": ((nn.Hardsigmoid,), (F.hardsigmoid,), ()),
    "leaky_relu": ((nn.LeakyReLU,), (F.leaky_relu,), ()),
    "elu": ((nn.ELU,), (F.elu,), ()),
    "mish": ((nn.Mish,), (F.mish,), ()),
    "softplus": ((nn.Softplus,), (F.softplus,), ()),
    "hardtanh": ((nn.Hardtanh,), (F.hardtanh,), ()),
}
# derived lookups (exact module types first: ReLU6 subclasses Hardtanh)
ACT_MODULES = {t: name for name, (types, _, _) in ACTIVATIONS.items() for t in types}
ACT_FUNCTIONS = {f: name for name, (_, funcs, _) in ACTIVATIONS.items() for f in funcs}
ACT_METHODS = {m: name for name, (_, _, methods) in ACTIVATIONS.items() for m in methods}
# parameters of functional activations after the input, with their defaults (``inplace`` is harmless)
ACT_DEFAULTS = {"leaky_relu": (("negative_slope", 0.01),), "elu": (("alpha", 1.0),),
                "softplus": (("beta", 1.0), ("threshold", 20.0)), "hardtanh": (("min_val", -1.0), ("max_val", 1.0)),
                "gelu": (("approximate", "none"),)}


def module_activation(m: nn.Module) -> str | None:
    """Canonical activation name of a module (exact type first, then subclasses), or None."""
    if type(m) in ACT_MODULES:
        return ACT_MODULES[type(m)]
    return next((v for t, v in ACT_MODULES.items() if isinstance(m, t)), None)


def node_activation(node) -> tuple[str | None, dict]:
    """(canonical name, non-default parameters) of a call_function/call_method activation node, or
    (None, {}). ``F.gelu(approximate="tanh")`` is ``gelu_tanh``."""
    if node.op == "call_method":
        return ACT_METHODS.get(node.target), {}
    name = ACT_FUNCTIONS.get(node.target) if node.op == "call_function" else None
    if name is None:
        return None, {}
    given = dict(zip([k for k, _ in ACT_DEFAULTS.get(name, ())], node.args[1:]), **node.kwargs)
    params = {k: given[k] for k, default in ACT_DEFAULTS.get(name, ()) if k in given and given[k] != default}
    if name == "gelu" and params == {"approximate": "tanh"}:
        return "gelu_tanh", {}
    return name, params


def activation_module(name: str) -> nn.Module:
    """A module computing the canonical activation ``name`` with default parameters."""
    if name == "gelu_tanh":
        return nn.GELU(approximate="tanh")
    return ACTIVATIONS[name][0][0]()


# modules that neither mix channels nor hold per-channel state
TRANSPARENT_MODULES = (
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample,
    nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d,
)
DROPOUT_FUNCTIONS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout}
TRANSPARENT_FUNCTIONS = DROPOUT_FUNCTIONS | {
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

# how the cost model sees an op (LayerSpec.op); ops in none of these sets are "other" (not costed)
CONV_MODULES = (nn.Conv1d, nn.Conv2d)
BN_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d)
NORM_MODULES = (nn.LayerNorm, nn.GroupNorm)  # normalizations that cannot be folded into a layer
NORM_FUNCTIONS = {F.layer_norm, F.group_norm, F.softmax, torch.softmax}
NORM_METHODS = {"softmax"}
# products of two activations (attention scores): MACs from the operand shapes
CONTRACT_FUNCTIONS = {torch.einsum, torch.matmul, operator.matmul, torch.bmm}
CONTRACT_METHODS = {"matmul", "bmm", "__matmul__"}
# data movement and index arithmetic (free in the cost model): permutes, expands, slices, and torchvision's
# window padding and relative-position-bias gather in Swin
MOVE_FUNCTIONS = {torch.permute, torch.transpose, torch.swapaxes, operator.getitem, torch.chunk, torch.split}
MOVE_METHODS = {"permute", "transpose", "swapaxes", "expand", "expand_as", "__getitem__", "chunk", "split",
                "unbind"}
MOVE_NAMES = {"torchvision.models.swin_transformer._patch_merging_pad",
              "torchvision.models.swin_transformer._get_relative_position_bias",
              "torchvision.models.swin_transformer._get_relative_position_bias_v2"}
# torchvision's window attention (Swin), costed as attention over its windows
ATTENTION_NAMES = {"torchvision.models.swin_transformer.shifted_window_attention"}
POOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
                nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
PASS_MODULES = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.Flatten)
POOL_FUNCTIONS = {F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, torch.mean}
POOL_METHODS = {"mean"}
PASS_FUNCTIONS = RESHAPE_FUNCTIONS | DROPOUT_FUNCTIONS | {torch.clone, torch.detach}
PASS_METHODS = RESHAPE_METHODS | TRANSPARENT_METHODS
# Tensor methods that Python operators call (names as ``__torch_function__`` reports them)
OPERATOR_NAMES = {operator.add: "add", operator.iadd: "add_", operator.sub: "sub", operator.isub: "sub_",
                  operator.mul: "mul", operator.imul: "mul_", operator.truediv: "div", operator.itruediv: "div_",
                  operator.getitem: "__getitem__", operator.matmul: "matmul", operator.neg: "neg"}


def cost_kind(node) -> tuple[str, str | None]:
    """(LayerSpec op, activation name) of a call_function/call_method node."""
    t, method = node.target, node.op == "call_method"
    act, _ = node_activation(node)
    if act is not None:
        return "act", act
    if t in ((ADD_METHODS | MUL_METHODS) if method else (ADD_OPS | MUL_OPS)):
        return "add", None
    if t in (POOL_METHODS if method else POOL_FUNCTIONS):
        return "pool", None
    if t in (PASS_METHODS if method else PASS_FUNCTIONS) or (not method and op_name(node) in TRANSPARENT_NAMES):
        return "pass", None  # stochastic depth too: the identity at inference
    if not method and t in CAT_FUNCTIONS:
        return "concat", None
    if t in (NORM_METHODS if method else NORM_FUNCTIONS):
        return "norm", None
    if t in (CONTRACT_METHODS if method else CONTRACT_FUNCTIONS):
        return "contract", None
    if t in (MOVE_METHODS if method else MOVE_FUNCTIONS) or (not method and op_name(node) in MOVE_NAMES):
        return "pass", None
    if not method and op_name(node) in ATTENTION_NAMES:
        return "attention", None
    return "other", None


def function_name(node) -> str:
    """Short name of a call_function/call_method target, e.g. ``relu``, ``add`` (for ``a + b``), ``view``."""
    if node.op == "call_method":
        return node.target
    return OPERATOR_NAMES.get(node.target) or getattr(node.target, "__name__", str(node.target))


def op_name(node) -> str:
    """A readable name of a call_function/call_method target, e.g. ``torch.nn.functional.relu``."""
    target = node.target
    if node.op == "call_method":
        return f"Tensor.{target}"
    module = getattr(target, "__module__", None) or "torch"
    if module == "_operator":
        module = "operator"
    return f"{module}.{getattr(target, '__name__', str(target))}"
