"""Per-layer specs of a model for the cost model, and how adding or removing a channel changes them.

:func:`capture_layers` reads them off the one torch.fx trace (:func:`energysplit.graph.trace.trace_model`,
lenient: an op whose channels cannot be mapped is still listed). Each :class:`LayerSpec` records the op's
configuration (channels, kernel, stride, groups) and shapes (batch 1), its kind from the op table
(:mod:`energysplit.graph.ops`; ``other`` when the cost model has no formula: reported as unsupported,
never a silent zero) and ``owners``: the producers of the inventory groups whose channels its output
carries. :func:`resize_specs` uses the owners to apply "one more channel in group g" to the specs, so
layer-wise estimators compute marginal costs from the same formula as totals.
"""
from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass

import torch
from torch import fx, nn

from . import ops
from .trace import Traced, node_args, shape_of, trace_model


@dataclass(frozen=True)
class LayerSpec:
    """One op of the forward pass. ``op``: conv, linear, bn, norm, attention, contract, act, pool, add,
    pass, concat or other.

    Shapes include the batch dimension. ``cin``/``cout`` are channels (features for linear); ``act``
    names the activation of an ``act`` op; ``repeat`` is how many input columns one channel of the
    input occupies (H*W after a flatten, else 1). ``inputs`` are indices of the specs producing the
    inputs (-1: the model input). ``in_last``/``out_last``: the input's/output's channels are on the last
    dim (transformer tokens) rather than dim 1. An ``attention`` op of ``cin`` channels has ``tokens``
    queries (after any window padding), each attending to ``keys`` keys. A ``contract`` op (einsum,
    matmul of two activations) records its ``macs``.
    """

    name: str
    op: str
    type: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    cin: int = 0
    cout: int = 0
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    groups: int = 1
    bias: bool = False
    act: str | None = None
    repeat: int = 1
    inputs: tuple[int, ...] = ()
    owners: frozenset[str] = frozenset()
    in_owners: frozenset[str] = frozenset()
    in_last: bool = False
    out_last: bool = False
    tokens: int = 0
    keys: int = 0
    macs: int = 0

    @property
    def depthwise(self) -> bool:
        """A depthwise conv: one group per input channel (not a conv with one output channel)."""
        return self.op == "conv" and self.groups > 1 and self.groups == self.cin and self.cout % self.cin == 0

    @property
    def out_numel(self) -> int:
        return math.prod(self.out_shape[1:])

    @property
    def in_numel(self) -> int:
        return math.prod(self.in_shape[1:])

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["owners"], d["in_owners"] = sorted(self.owners), sorted(self.in_owners)
        return d


def capture_layers(model: nn.Module, input_shape) -> list[LayerSpec]:
    """The ops of ``model`` on inputs of shape ``(1, *input_shape)``, in forward order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small shapes only: one thread is fastest, and immune to busy cores
    try:
        traced = trace_model(model, input_shape, strict=False)
    finally:
        torch.set_num_threads(threads)
    return layer_specs(traced)


def layer_specs(traced: Traced) -> list[LayerSpec]:
    """One spec per call of a module or function with a tensor input and a tensor output."""
    specs: list[LayerSpec] = []
    index: dict[fx.Node, int] = {}
    counts: Counter = Counter()
    for node in traced.graph.graph.nodes:
        tensors = [a for a in node_args(node.args) if shape_of(a) is not None]
        out_shape = _first_shape(node)
        if node.op not in ("call_module", "call_function", "call_method") or not tensors or out_shape is None:
            continue
        if node.op == "call_module":
            fields = _module_fields(traced.modules[node.target], shape_of(tensors[0]))
            fields.update(name=node.target, type=type(traced.modules[node.target]).__name__)
        else:
            op, act = ops.cost_kind(node)
            if op == "other" and node in traced.channels.grid:  # a channel shuffle's transpose: data movement
                op = "pass"
            fname = ops.function_name(node)
            fields = dict(name=f"{fname}#{counts[fname]}", type=fname, op=op, act=act)
            if op == "attention":
                fields.update(_window_attention_fields(node))
            if op == "contract":
                fields.update(macs=_contract_macs(node))
            counts[fname] += 1
        in_owners = frozenset().union(*(traced.owners(a) for a in tensors))
        last = traced.channels.last
        spec = LayerSpec(in_shape=_batch1(shape_of(tensors[0])), out_shape=_batch1(out_shape),
                         repeat=traced.repeat(tensors[0]), inputs=tuple(index.get(a, -1) for a in tensors),
                         in_owners=in_owners, in_last=tensors[0] in last, out_last=node in last, **fields)
        producer = spec.op in ("conv", "linear") and not spec.depthwise
        specs.append(dataclasses.replace(spec, owners=frozenset([spec.name]) if producer else in_owners))
        index[node] = len(specs) - 1
    return specs


def _first_shape(node: fx.Node) -> tuple[int, ...] | None:
    """The output shape of a node, or of the first tensor of a tuple it returns (attention)."""
    shape = shape_of(node)
    meta = node.meta.get("tensor_meta")
    if shape is None and isinstance(meta, (tuple, list)) and meta and hasattr(meta[0], "shape"):
        shape = tuple(meta[0].shape)
    return shape


def _window_attention_fields(node: fx.Node) -> dict:
    """Channels, queries and keys of torchvision's ``shifted_window_attention(input [N, H, W, C], qkv_weight,
    proj_weight, relative_position_bias, window_size, ...)``: H and W padded to whole windows."""
    _, h, w, c = shape_of(node.args[0])
    win = [int(v) for v in node.args[4]]
    padded = math.ceil(h / win[0]) * win[0] * math.ceil(w / win[1]) * win[1]
    return dict(cin=c, cout=c, tokens=padded, keys=math.prod(win), bias=True)


def _contract_macs(node: fx.Node) -> int:
    """MACs (batch 1) of an einsum or a matmul of two tensors: the product of every index's size."""
    if node.target is torch.einsum:
        equation, operands = node.args[0], node.args[1:]
        if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
            operands = operands[0]
        sizes = {}
        for term, arg in zip(equation.replace(" ", "").split("->")[0].split(","), operands):
            sizes.update(zip(term, _batch1(shape_of(arg))))
        return math.prod(sizes.values())
    a, b = (_batch1(shape_of(v)) for v in node.args[:2])
    out = _batch1(shape_of(node))
    return math.prod(out) * a[-1]


def _batch1(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The trace's shape (batch of 2) for a batch of 1."""
    return (1, *shape[1:]) if shape else shape


def _module_fields(mod: nn.Module, in_shape: tuple[int, ...]) -> dict:
    """op and configuration of a module call (``other``: the cost model has no formula for it)."""
    act = ops.module_activation(mod)
    if isinstance(mod, ops.CONV_MODULES):
        return dict(op="conv", cin=mod.in_channels, cout=mod.out_channels, kernel=tuple(mod.kernel_size),
                    stride=tuple(mod.stride), padding=tuple(mod.padding) if not isinstance(mod.padding, str)
                    else (), groups=mod.groups, bias=mod.bias is not None)
    if isinstance(mod, nn.Linear):
        return dict(op="linear", cin=mod.in_features, cout=mod.out_features, bias=mod.bias is not None)
    if isinstance(mod, nn.MultiheadAttention) and mod.batch_first and mod._qkv_same_embed_dim:
        tokens = math.prod(in_shape[1:-1])
        return dict(op="attention", cin=mod.embed_dim, cout=mod.embed_dim, tokens=tokens, keys=tokens,
                    bias=mod.in_proj_bias is not None)
    if isinstance(mod, ops.NORM_MODULES):
        return dict(op="norm")
    if isinstance(mod, ops.BN_MODULES):
        return dict(op="bn", cin=mod.num_features, cout=mod.num_features)
    if act is not None:
        return dict(op="act", act=act)
    if isinstance(mod, ops.POOL_MODULES):
        if hasattr(mod, "kernel_size"):
            pair = torch.nn.modules.utils._ntuple(len(in_shape) - 2)
            return dict(op="pool", kernel=pair(mod.kernel_size), stride=pair(mod.stride or mod.kernel_size),
                        padding=pair(mod.padding))
        return dict(op="pool")
    if isinstance(mod, ops.PASS_MODULES):
        return dict(op="pass")
    return dict(op="other")


def _grow(shape: tuple[int, ...], delta: int, last: bool = False) -> tuple[int, ...]:
    """``shape`` with ``delta`` more channels on dim 1 (or on the last dim)."""
    if len(shape) < 2:
        return shape
    dim = len(shape) - 1 if last else 1
    return (*shape[:dim], shape[dim] + delta, *shape[dim + 1:])


def resize_specs(specs: list[LayerSpec], producers, delta: int) -> dict[int, LayerSpec]:
    """Specs changed by adding ``delta`` channels (negative: removing) to the group that ``producers``
    define; returns {index: new spec}. Producers gain output channels; ops carrying the channels (BN,
    activations, depthwise convs, pools, adds) grow; consumers gain ``delta * repeat`` input columns."""
    producers = frozenset(producers)
    changed: dict[int, LayerSpec] = {}
    for i, s in enumerate(specs):
        kw: dict = {}
        producer = s.name in producers and s.op in ("conv", "linear")
        if producer:
            kw.update(cout=s.cout + delta, out_shape=_grow(s.out_shape, delta, s.out_last))
        if not producer and s.owners & producers:  # carries the channels: in and out grow together
            mult = s.cout // s.cin if s.depthwise else 1
            grow_in = delta * s.repeat
            flatten = s.op == "pass" and len(s.out_shape) == 2 and len(s.in_shape) > 2
            grow_out = grow_in * (math.prod(s.in_shape[2:]) if flatten else mult)
            kw.update(in_shape=_grow(s.in_shape, grow_in, s.in_last),
                      out_shape=_grow(s.out_shape, grow_out, s.out_last))
            if s.op in ("bn", "conv"):
                kw.update(cin=s.cin + delta, cout=s.cout + delta * mult)
            if s.depthwise:
                kw.update(groups=s.groups + delta)
        elif s.in_owners & producers:  # a consumer reading the channels (it may also be a producer)
            kw.update(in_shape=_grow(s.in_shape, delta * s.repeat, s.in_last))
            if s.op in ("conv", "linear"):
                kw.update(cin=s.cin + delta * s.repeat)
        if kw:
            changed[i] = dataclasses.replace(s, **kw)
    return changed
