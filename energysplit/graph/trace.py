"""Trace a model with torch.fx into the neuron inventory (groups of coupled channels).

The one tracer of energysplit: :func:`trace_model` traces once, propagates shapes and walks the graph;
the inventory (:func:`build_inventory`) and the cost model's layer specs
(:func:`energysplit.graph.layers.capture_layers`) both come from its :class:`Traced`.

Each traced tensor carries a channel state (:class:`~energysplit.graph.channels.Segment` s).
Conv/linear layers consume segments and produce new groups; element-wise adds couple groups;
a broadcast multiply by a per-channel gate (squeeze-excitation) makes the gate's producer a follower;
concat along dim 1 appends segments; flatten turns a channel into H*W columns (``Consumer.repeat``).
Anything else that touches a channel state raises :class:`UnsupportedModelError` (a lenient trace,
for costing, records the op as rejected instead and drops its channel state).
"""
from __future__ import annotations

import math
import operator
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from . import ops
from ..errors import EnergySplitError, UnsupportedModelError, first_line
from .channels import Segment, node_args, shape_of
from .inventory import ChainOp, Inventory
from .permute import CHUNK_FUNCTIONS, CHUNK_METHODS, TRANSPOSE_FUNCTIONS, TRANSPOSE_METHODS
from .tokens import SEALING_FUNCTIONS, ChannelsLast


@dataclass
class Traced:
    """One torch.fx trace: the graph module (shapes propagated on a batch of 2), each node's channel
    segments, the inventory, and (lenient traces only) the nodes whose channels could not be mapped."""

    graph: fx.GraphModule
    modules: dict[str, nn.Module]
    inventory: Inventory
    rejected: dict[fx.Node, str]
    state: dict[fx.Node, tuple[Segment, ...]]
    channels: ChannelsLast

    def owners(self, node) -> frozenset[str]:
        """Producers of the groups whose channels the output of ``node`` carries (empty: none)."""
        return self.channels.producers_of(s.key for s in self.state.get(node, ()))

    def repeat(self, node) -> int:
        """Input columns per channel in the output of ``node`` (H*W after a flatten, else 1)."""
        segments = self.state.get(node, ())
        return segments[0].repeat if segments else 1


def build_inventory(model: nn.Module, input_shape) -> Inventory:
    """Trace ``model`` on inputs of ``input_shape`` (without the batch dim, e.g. ``(1, 28, 28)``)."""
    return trace_model(model, input_shape).inventory


def trace_model(model: nn.Module, input_shape, strict: bool = True) -> Traced:
    """Trace ``model`` with torch.fx and map its channels. ``strict=False`` (costing) records an op whose
    channels cannot be mapped in ``Traced.rejected`` instead of raising :class:`UnsupportedModelError`."""
    input_shape = tuple(int(s) for s in input_shape)
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types
        raise UnsupportedModelError(f"torch.fx cannot trace {type(model).__name__}: {first_line(exc)} "
                                    "(data-dependent control flow?)") from exc
    _propagate_shapes(model, gm, input_shape)
    walker = _Walker(model, strict)
    inventory = walker.run(gm, input_shape)
    return Traced(gm, walker.modules, inventory, walker.rejected, walker.state, walker)


def _propagate_shapes(model: nn.Module, gm: fx.GraphModule, input_shape: tuple[int, ...]) -> None:
    """Run torch.fx ShapeProp on a zero batch of 2 in eval mode (BN running stats untouched)."""
    from torch.fx.passes.shape_prop import ShapeProp

    p = next(model.parameters(), None)
    x = torch.zeros(2, *input_shape, device=p.device if p is not None else None,
                    dtype=p.dtype if p is not None and p.is_floating_point() else None)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(x)
    except Exception as exc:
        raise EnergySplitError(f"{type(model).__name__} does not run on input shape {input_shape} "
                               f"(batch dim excluded): {first_line(exc)}") from exc
    finally:
        for m, training in modes.items():
            m.training = training



class _Walker(ChannelsLast):
    """Walks the fx graph in order, keeping each node's channel segments."""

    def __init__(self, model: nn.Module, strict: bool = True):
        super().__init__()
        self.modules = dict(model.named_modules())
        self.strict = strict
        self.rejected: dict[fx.Node, str] = {}
        self.calls: Counter = Counter()


    def run(self, gm: fx.GraphModule, input_shape: tuple[int, ...]) -> Inventory:
        for node in gm.graph.nodes:
            self.node = node
            try:
                self.visit(node)
            except UnsupportedModelError as exc:
                if self.strict:
                    raise
                self.state.pop(node, None)
                self.rejected[node] = first_line(exc, limit=400)
        return Inventory(groups={g.id: g for g in self.groups()}, input_shape=input_shape)

    def visit(self, node: fx.Node) -> None:
        if node.op == "placeholder":
            shape = shape_of(node)
            if shape is not None and len(shape) >= 2:
                key = self.new_key(None, shape[1])
                self.inputs.add(key)
                self.state[node] = (Segment(key, shape[1]),)
        elif node.op == "call_module":
            self.call_module(node)
        elif node.op in ("call_function", "call_method"):
            self.call_function(node)
        elif node.op == "output":
            for arg in node_args(node.args):
                for s in self.state.get(arg, ()):
                    self.marks[s.key].append((False, False, "model output"))
                    self.ends[s.key].append((s.chain, s.exact))

    def arg_state(self, node: fx.Node, i: int = 0):
        arg = node.args[i] if len(node.args) > i else node.kwargs.get("input") if i == 0 else None
        return self.state.get(arg) if isinstance(arg, fx.Node) else None

    def call_module(self, node: fx.Node) -> None:
        name, m = node.target, self.modules[node.target]
        x = self.arg_state(node)
        kind = f"{type(m).__name__} module '{name}'"
        if any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False)):
            self.calls[name] += 1
            if self.calls[name] > 1:
                raise self.fail(kind, "called more than once (shared weights are not supported)")
        if x is None and not any(a in self.state for a in node_args((node.args, node.kwargs))):
            return  # computed from constants only (Swin v2's position-bias MLP): a constant, no channels
        if x is None:
            raise self.fail(kind, "its input is not a traced activation tensor")
        act = ops.module_activation(m)
        producer = isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))
        if self.last_module(node, name, m, x):
            return
        if self.is_sealed(x) and not producer:
            return self.seal(node)
        if isinstance(m, nn.modules.conv._ConvNd) and not m.transposed:
            self.conv(node, name, m, x)
        elif isinstance(m, nn.Linear):
            if len(shape_of(node.args[0]) or ()) != 2:
                raise self.fail(kind, "applied to a tensor that is not 2-D (batch, features)")
            self.consume(name, x)
            self.state[node] = (Segment(self.new_key(name, m.out_features), m.out_features),)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            self.follow(node, name, x, ChainOp("bn", name), kind)
        elif act is not None:
            self.state[node] = self.extend(x, ChainOp("act", name, act))
        elif isinstance(m, ops.TRANSPARENT_MODULES):
            self.state[node] = self.spatial(node, x)
        elif isinstance(m, nn.Flatten):
            self.reshape(node, x, kind)
        elif any(True for _ in m.parameters()):
            raise self.fail(kind, "unknown module type holding parameters")
        else:
            raise self.fail(kind, "unknown module type; cannot tell how it treats channels")

    def conv(self, node, name: str, m, x) -> None:
        """An ordinary conv consumes its input; a depthwise one follows it; a grouped one (groups = G)
        cuts its input and output channels into G blocks that every edit changes alike."""
        cin, cout, g = m.in_channels, m.out_channels, m.groups
        if g == cin == cout and cin > 1:  # depthwise: a channel-wise follower
            return self.follow(node, name, x, ChainOp("dw", name), f"depthwise conv '{name}'")
        whole = g == 1 or (len(x) == 1 and x[0].repeat == 1)
        self.consume(name, x, freeze=None if whole else f"grouped conv {name} (groups={g}) reads a concat")
        if g > 1 and whole:
            self.blocks[x[0].key] = math.lcm(self.blocks.get(x[0].key, 1), g)
        key = self.new_key(name, cout)
        if g > 1:
            self.blocks[key] = g
        self.state[node] = (Segment(key, cout),)

    def activation(self, node: fx.Node, name: str, x) -> None:
        act, params = ops.node_activation(node)
        if params:
            raise self.fail(name, f"functional {act} with {params}: its splitting rule would use the defaults "
                                  f"(use the module form, e.g. {type(ops.activation_module(act)).__name__})")
        self.state[node] = self.extend(x, ChainOp("act", name, act))

    def call_function(self, node: fx.Node) -> None:
        t, method = node.target, node.op == "call_method"
        name = ops.op_name(node)
        x = self.arg_state(node)
        if t is operator.getitem and node.args[0] in self.pieces:
            self.state[node] = self.pieces[node.args[0]][node.args[1]]
            return
        if not any(a in self.state for a in node_args((node.args, node.kwargs))):
            return  # shape arithmetic, constants: no channel state
        if x is not None and (t in CHUNK_METHODS if method else t in CHUNK_FUNCTIONS):
            return self.chunk(node, x, name)
        if self.all_sealed(node):
            if shape_of(node) is None and ((method and t in ops.NON_TENSOR_METHODS) or t is getattr):
                return
            return self.seal(node)
        if x is not None and (t in TRANSPOSE_METHODS if method else t in TRANSPOSE_FUNCTIONS):
            return self.transpose(node, x, name) if node.args[0] in self.grid else self.permute(node, x, name)
        if x is not None and (t == "permute" if method else t is torch.permute):
            return self.permute(node, x, name)
        if not method and t in SEALING_FUNCTIONS:
            return self.seal(node, f"{SEALING_FUNCTIONS[t]} ({name})")
        if x is not None and node.args[0] in self.last and self.last_function(node, x, name):
            return
        if node.args and node.args[0] in self.grid and not (method and t in ops.TRANSPARENT_METHODS) \
                and t not in (ops.RESHAPE_METHODS if method else ops.RESHAPE_FUNCTIONS):
            raise self.fail(name, "uses a channel grid (a tensor viewed as [N, G, C/G, ...]) other than in a shuffle")
        if shape_of(node) is None:
            if (method and t in ops.NON_TENSOR_METHODS) or t is getattr:
                return
            raise self.fail(name, "returns several tensors or a non-tensor (e.g. a split of the channels)")
        if x is not None and t in (ops.ACT_METHODS if method else ops.ACT_FUNCTIONS):
            self.activation(node, name, x)
        elif x is not None and (t in ops.TRANSPARENT_METHODS if method else
                                (t in ops.TRANSPARENT_FUNCTIONS or name in ops.TRANSPARENT_NAMES)):
            self.state[node] = self.spatial(node, x)
            self.carry(node)
        elif t in (ops.ADD_METHODS if method else ops.ADD_OPS):
            self.binary(node, name, mul=False)
        elif t in (ops.MUL_METHODS if method else ops.MUL_OPS):
            self.binary(node, name, mul=True)
        elif x is not None and (t in ops.RESHAPE_METHODS if method else t in ops.RESHAPE_FUNCTIONS):
            self.reshape(node, x, name)
        elif x is not None and (t in ops.REDUCE_METHODS if method else t in ops.REDUCE_FUNCTIONS):
            self.reduce(node, name, x)
        elif not method and t in ops.CAT_FUNCTIONS:
            self.cat(node, name)
        elif not method and t is F.pad and x is not None:
            pad = node.args[1] if len(node.args) > 1 else node.kwargs["pad"]
            if len(pad) > 2 * (len(shape_of(node)) - 2):
                raise self.fail(name, "pads the channel dim")
            self.state[node] = self.spatial(node, x)
        elif t is operator.getitem and x is not None:
            idx = node.args[1]
            full = slice(None)
            if not (isinstance(idx, tuple) and len(idx) >= 2 and idx[0] == full and idx[1] == full):
                raise self.fail(name, "indexes the batch or channel dim")
            self.state[node] = self.spatial(node, x)
        else:
            raise self.fail(name, "mixes or reorders channels in a way energysplit cannot map")



