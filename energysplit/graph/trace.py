"""Trace a model with torch.fx into the neuron inventory (groups of coupled channels).

Each traced tensor carries a channel state: its channel dim (dim 1) as a list of segments, each a run
of channels of one group (a union-find key) with the channel-wise ops met since the producer (the
chain). Conv/linear layers consume segments and produce new groups; element-wise adds couple groups;
a broadcast multiply by a per-channel gate (squeeze-excitation) makes the gate's producer a follower;
concat along dim 1 appends segments; flatten turns a channel into H*W columns (``Consumer.repeat``).
Anything else that touches a channel state raises :class:`UnsupportedModelError`.
"""
from __future__ import annotations

import math
import operator
from collections import Counter, defaultdict
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import fx, nn

from . import ops
from ..errors import EnergySplitError, UnsupportedModelError
from .inventory import ChainOp, Consumer, Group, Inventory

RESIDUAL = "residual-coupled: joint splitting not supported"


@dataclass(frozen=True)
class _Seg:
    key: int
    width: int
    repeat: int = 1
    chain: tuple[ChainOp, ...] = ()
    exact: bool = True  # False once a non-channel-wise op (product, sum of branches) was met
    pooled: bool = False  # True after a spatial op (pooling): later chain ops would not be per-position


def build_inventory(model: nn.Module, input_shape) -> Inventory:
    """Trace ``model`` on inputs of ``input_shape`` (without the batch dim, e.g. ``(1, 28, 28)``)."""
    input_shape = tuple(int(s) for s in input_shape)
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types
        raise UnsupportedModelError(f"torch.fx cannot trace {type(model).__name__}: {_first_line(exc)} "
                                    "(data-dependent control flow?)") from exc
    _propagate_shapes(model, gm, input_shape)
    return _Builder(model).run(gm, input_shape)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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
                               f"(batch dim excluded): {_first_line(exc)}") from exc
    finally:
        for m, training in modes.items():
            m.training = training


def _shape(node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _aligned(shape: tuple[int, ...], ndim: int, dim: int) -> int:
    """Size of ``shape`` along output dim ``dim`` after right-aligned broadcasting to ``ndim`` dims."""
    i = dim - (ndim - len(shape))
    return shape[i] if i >= 0 else 1


def _common_prefix(chains):
    prefix = list(chains[0]) if chains else []
    for chain in chains[1:]:
        n = 0
        while n < min(len(prefix), len(chain)) and prefix[n] == chain[n]:
            n += 1
        del prefix[n:]
    return tuple(prefix)


class _Builder:
    def __init__(self, model: nn.Module):
        self.modules = dict(model.named_modules())
        self.parent: list[int] = []
        self.producer: list[str | None] = []
        self.width: list[int] = []
        self.inputs: set[int] = set()
        self.gates: set[int] = set()
        self.followers = defaultdict(list)
        self.consumers = defaultdict(list)
        self.ends = defaultdict(list)  # key -> [(chain, exact)] where the channels are read
        self.marks = defaultdict(list)  # key -> [(splittable, prunable, reason)]
        self.calls: Counter = Counter()
        self.state: dict[fx.Node, tuple[_Seg, ...]] = {}
        self.node: fx.Node | None = None

    # -- union-find over groups -------------------------------------------------------------
    def new_key(self, producer: str | None, width: int) -> int:
        self.parent.append(len(self.parent))
        self.producer.append(producer)
        self.width.append(width)
        return len(self.parent) - 1

    def find(self, k: int) -> int:
        while self.parent[k] != k:
            self.parent[k] = self.parent[self.parent[k]]
            k = self.parent[k]
        return k

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[max(a, b)] = min(a, b)

    # -- errors -------------------------------------------------------------------------------
    def fail(self, op: str, why: str) -> UnsupportedModelError:
        node = self.node
        stack = node.meta.get("nn_module_stack") if node is not None else None
        where = ""
        if stack:
            last = list(stack.values())[-1]
            where = f" in module '{last[0] if isinstance(last, tuple) else last}'"
        return UnsupportedModelError(f"unsupported op {op} at node '{node.name}'{where}: {why}")

    # -- the walk -----------------------------------------------------------------------------
    def run(self, gm: fx.GraphModule, input_shape: tuple[int, ...]) -> Inventory:
        for node in gm.graph.nodes:
            self.node = node
            if node.op == "placeholder":
                shape = _shape(node)
                if shape is not None and len(shape) >= 2:
                    key = self.new_key(None, shape[1])
                    self.inputs.add(key)
                    self.state[node] = (_Seg(key, shape[1]),)
            elif node.op == "call_module":
                self.call_module(node)
            elif node.op in ("call_function", "call_method"):
                self.call_function(node)
            elif node.op == "output":
                for arg in _nodes(node.args):
                    for s in self.state.get(arg, ()):
                        self.marks[s.key].append((False, False, "model output"))
                        self.ends[s.key].append((s.chain, s.exact))
        return self.finish(input_shape)

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
        if x is None:
            raise self.fail(kind, "its input is not a traced activation tensor")
        if isinstance(m, nn.modules.conv._ConvNd) and not m.transposed:
            self.conv(node, name, m, x)
        elif isinstance(m, nn.Linear):
            if len(_shape(node.args[0]) or ()) != 2:
                raise self.fail(kind, "applied to a tensor that is not 2-D (batch, features)")
            self.consume(name, x)
            self.state[node] = (_Seg(self.new_key(name, m.out_features), m.out_features),)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            self.follow(node, name, x, ChainOp("bn", name), kind)
        elif type(m) in ops.ACT_MODULES or isinstance(m, tuple(ops.ACT_MODULES)):
            act = ops.ACT_MODULES.get(type(m)) or next(v for t, v in ops.ACT_MODULES.items() if isinstance(m, t))
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
        cin, cout, g = m.in_channels, m.out_channels, m.groups
        if g == 1:
            self.consume(name, x)
        elif g == cin == cout and cin > 1:  # depthwise: a channel-wise follower
            return self.follow(node, name, x, ChainOp("dw", name), f"depthwise conv '{name}'")
        reason = f"grouped conv {name} (groups={g}) ties channels to its groups"
        if g != 1:
            self.consume(name, x, freeze=reason)
        key = self.new_key(name, cout)
        if g != 1:
            self.marks[key].append((False, False, reason))
        self.state[node] = (_Seg(key, cout),)

    def consume(self, name: str, x, freeze: str | None = None) -> None:
        offset = 0
        for s in x:
            self.consumers[s.key].append(Consumer(name, offset, s.repeat))
            self.ends[s.key].append((s.chain, s.exact))
            if freeze:
                self.marks[s.key].append((False, False, freeze))
            offset += s.width * s.repeat

    def follow(self, node, name: str, x, op: ChainOp, kind: str) -> None:
        if len(x) != 1 or x[0].repeat != 1:
            raise self.fail(kind, "per-channel layer on a concat of several groups or a flattened tensor")
        self.followers[x[0].key].append(name)
        self.state[node] = self.extend(x, op)

    @staticmethod
    def extend(x, op: ChainOp | None):
        """Append a channel-wise op to the chains (None: a non-channel-wise op ends exactness)."""
        return tuple(replace(s, exact=False) if op is None or s.pooled or not s.exact
                     else replace(s, chain=s.chain + (op,)) for s in x)

    @staticmethod
    def spatial(node: fx.Node, x):
        """A channel-transparent op; if it changes the spatial grid (pooling) mark the segments pooled."""
        same = _shape(node)[2:] == _shape(node.args[0] if node.args else node.kwargs["input"])[2:]
        return x if same else tuple(replace(s, pooled=True) for s in x)

    def call_function(self, node: fx.Node) -> None:
        t, method = node.target, node.op == "call_method"
        name = ops.op_name(node)
        x = self.arg_state(node)
        tracked = [a for a in _nodes((node.args, node.kwargs)) if a in self.state]
        if not tracked:
            return  # shape arithmetic, constants: no channel state
        if _shape(node) is None:
            if (method and t in ops.NON_TENSOR_METHODS) or t is getattr:
                return
            raise self.fail(name, "returns several tensors or a non-tensor (e.g. a split of the channels)")
        acts = ops.ACT_METHODS if method else ops.ACT_FUNCTIONS
        if x is not None and t in acts:
            self.state[node] = self.extend(x, ChainOp("act", name, acts[t]))
        elif x is not None and (t in ops.TRANSPARENT_METHODS if method else
                                (t in ops.TRANSPARENT_FUNCTIONS or name in ops.TRANSPARENT_NAMES)):
            self.state[node] = self.spatial(node, x)
        elif t in (ops.ADD_METHODS if method else ops.ADD_OPS):
            self.binary(node, name, mul=False)
        elif t in (ops.MUL_METHODS if method else ops.MUL_OPS):
            self.binary(node, name, mul=True)
        elif x is not None and (t in ops.RESHAPE_METHODS if method else t in ops.RESHAPE_FUNCTIONS):
            self.reshape(node, x, name)
        elif x is not None and (t in ops.REDUCE_METHODS if method else t in ops.REDUCE_FUNCTIONS):
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            ndim = len(_shape(node.args[0]))
            dims = [dims] if isinstance(dims, int) else dims
            if dims is None or any(d % ndim in (0, 1) for d in dims):
                raise self.fail(name, "reduces over the batch or channel dim")
            self.state[node] = self.spatial(node, x)
        elif not method and t in ops.CAT_FUNCTIONS:
            self.cat(node, name)
        elif not method and t is F.pad and x is not None:
            pad = node.args[1] if len(node.args) > 1 else node.kwargs["pad"]
            if len(pad) > 2 * (len(_shape(node)) - 2):
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

    def binary(self, node: fx.Node, name: str, mul: bool) -> None:
        out = _shape(node)
        a, b = node.args[0], node.args[1] if len(node.args) > 1 else node.kwargs.get("other")
        sa, sb = self.state.get(a) if isinstance(a, fx.Node) else None, self.state.get(b) if isinstance(b, fx.Node) else None
        ca = _aligned(_shape(a), len(out), 1) if _shape(a) is not None else 1
        cb = _aligned(_shape(b), len(out), 1) if _shape(b) is not None else 1
        if sa is None or sb is None:  # a python scalar, or an untracked constant tensor
            if (ca if sa is None else cb) != 1:
                raise self.fail(name, "combines a channel group with a constant per-channel tensor")
            self.state[node] = self.extend(sa or sb, None)
            return
        if ca != cb:  # one side broadcast across channels: its single channel is tied to all of them
            narrow = sa if ca == 1 else sb
            for s in narrow:
                self.marks[s.key].append((False, False, f"broadcast across channels by {name}"))
            self.state[node] = self.extend(sb if ca == 1 else sa, None)
            return
        if [(s.width, s.repeat) for s in sa] != [(s.width, s.repeat) for s in sb]:
            raise self.fail(name, "combines tensors whose channel groups do not line up")
        spatial = [math.prod(_aligned(_shape(v), len(out), d) for d in range(2, len(out))) for v in (a, b)]
        gate = mul and 1 in spatial and spatial[0] != spatial[1]
        main, other = (sb, sa) if gate and spatial[0] == 1 else (sa, sb)
        for s, o in zip(main, other):
            if gate and self.find(s.key) != self.find(o.key):
                self.gates.add(o.key)  # squeeze-excitation gate: its producer follows the main group
            self.union(s.key, o.key)
        same = all(s.chain == o.chain for s, o in zip(main, other))
        self.state[node] = tuple(replace(s, exact=False) if mul or not same else s for s in main)

    def reshape(self, node: fx.Node, x, name: str) -> None:
        si, so = _shape(node.args[0]), _shape(node)
        if so[:2] == si[:2] and math.prod(so[2:]) == math.prod(si[2:]):
            self.state[node] = x  # channel dim kept
        elif len(so) == 2 and so[0] == si[0] and so[1] == math.prod(si[1:]):
            r = math.prod(si[2:])
            self.state[node] = tuple(replace(s, repeat=s.repeat * r) for s in x)
        else:
            raise self.fail(name, f"reshapes {list(si)} to {list(so)}, moving the channel dim")

    def cat(self, node: fx.Node, name: str) -> None:
        parts = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        states = [self.state.get(p) if isinstance(p, fx.Node) else None for p in parts]
        if any(s is None for s in states):
            raise self.fail(name, "concatenates a channel group with an untracked tensor")
        if dim % len(_shape(node)) == 1:
            self.state[node] = tuple(s for st in states for s in st)
            return
        first = states[0]
        for st in states[1:]:
            if [(s.width, s.repeat) for s in st] != [(s.width, s.repeat) for s in first]:
                raise self.fail(name, "concatenates (along a non-channel dim) tensors whose groups do not line up")
            for s, o in zip(first, st):
                self.union(s.key, o.key)
        self.state[node] = self.extend(first, None)

    # -- result -------------------------------------------------------------------------------
    def finish(self, input_shape: tuple[int, ...]) -> Inventory:
        members: dict[int, list[int]] = defaultdict(list)
        for k in range(len(self.parent)):
            members[self.find(k)].append(k)
        groups = []
        for keys in members.values():
            producers = [self.producer[k] for k in keys if k not in self.gates and self.producer[k]]
            if not producers:
                continue
            marks = [m for k in keys for m in self.marks[k]]
            if any(k in self.inputs for k in keys):
                marks.append((False, False, "coupled to the network input"))
            followers = [f for k in keys for f in self.followers[k]] + [self.producer[k] for k in keys if k in self.gates]
            consumers = [c for k in keys for c in self.consumers[k]]
            chain, note = (), ""
            if len(producers) > 1:
                marks.append((False, True, RESIDUAL))
            else:
                ends = [e for k in keys if k not in self.gates for e in self.ends[k]]
                chain = _common_prefix([c for c, _ in ends])
                if any(c != chain or not exact for c, exact in ends):
                    note = "note: the channel path branches after its chain; chain is the common prefix"
            reasons = list(dict.fromkeys(r for _, _, r in marks))
            splittable, prunable = all(m[0] for m in marks), all(m[1] for m in marks)
            first = min(k for k in keys if k not in self.gates and self.producer[k])
            groups.append((first, Group(
                id=f"{self.producer[first]}:out", width=self.width[first], producers=tuple(producers),
                chain=chain, followers=tuple(dict.fromkeys(followers)), consumers=tuple(dict.fromkeys(consumers)),
                splittable=splittable, prunable=prunable,
                reason="; ".join(reasons) if reasons else (note if splittable else ""))))
        groups.sort(key=lambda item: item[0])
        return Inventory(groups={g.id: g for _, g in groups}, input_shape=input_shape)


def _nodes(args) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg(args, found.append)
    return found
