"""Channel state of a trace: segments of channels, the coupling rules, and the groups they become.

Each traced tensor carries its channel dim (dim 1) as a list of :class:`Segment`: a run of channels of
one key (a union-find key, one per producer output or model input) with the channel-wise ops met since
the producer (the chain). :class:`ChannelGraph` holds the segments of every node the walk in
:mod:`energysplit.graph.trace` has visited, the rules by which consumers, per-channel followers,
element-wise binaries, reshapes and concats treat them (union-find over keys, marks), and turns the
union-find classes into the inventory's :class:`~energysplit.graph.inventory.Group` s.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, replace

from torch import fx

from ..errors import UnsupportedModelError
from .inventory import ChainOp, Consumer, Group

RESIDUAL = "residual stream: split jointly"  # :mod:`energysplit.splitting.joint`


@dataclass(frozen=True)
class Segment:
    key: int
    width: int
    repeat: int = 1
    chain: tuple[ChainOp, ...] = ()
    exact: bool = True  # False once a non-channel-wise op (product, sum of branches) was met
    pooled: bool = False  # True after a spatial op (pooling): later chain ops would not be per-position


def common_prefix(chains):
    prefix = list(chains[0]) if chains else []
    for chain in chains[1:]:
        n = 0
        while n < min(len(prefix), len(chain)) and prefix[n] == chain[n]:
            n += 1
        del prefix[n:]
    return tuple(prefix)


def shape_of(node) -> tuple[int, ...] | None:
    """The output shape of a node (batch of 2 included), None when it is not a single tensor."""
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def aligned(shape: tuple[int, ...], ndim: int, dim: int) -> int:
    """Size of ``shape`` along output dim ``dim`` after right-aligned broadcasting to ``ndim`` dims."""
    i = dim - (ndim - len(shape))
    return shape[i] if i >= 0 else 1


def node_args(args) -> list[fx.Node]:
    """The fx nodes in (nested) ``args``, in order."""
    found: list[fx.Node] = []
    fx.node.map_arg(args, found.append)
    return found


class ChannelGraph:
    """Union-find over channel keys, what is known about each key, and each visited node's segments."""

    def __init__(self):
        self.state: dict[fx.Node, tuple[Segment, ...]] = {}
        self.node: fx.Node | None = None  # the node being visited (for error messages)
        self.parent: list[int] = []
        self.producer: list[str | None] = []
        self.width: list[int] = []
        self.inputs: set[int] = set()
        self.gates: set[int] = set()
        self.followers = defaultdict(list)
        self.partial = defaultdict(list)  # key -> [Consumer]: per-channel layers on a concat holding it
        self.consumers = defaultdict(list)
        self.ends = defaultdict(list)  # key -> [(chain, exact)] where the channels are read
        self.marks = defaultdict(list)  # key -> [(splittable, prunable, reason)]
        self.blocks: dict[int, int] = {}  # key -> the groups of a grouped conv producing or reading it

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

    def members(self) -> dict[int, list[int]]:
        """Union-find classes: root -> keys, in key order."""
        out: dict[int, list[int]] = defaultdict(list)
        for k in range(len(self.parent)):
            out[self.find(k)].append(k)
        return out

    def producers_of(self, keys) -> frozenset[str]:
        """Producers of the groups holding ``keys`` (a squeeze-excitation gate's producer is a follower)."""
        roots = {self.find(k) for k in keys}
        return frozenset(self.producer[k] for k in range(len(self.parent))
                         if self.producer[k] and k not in self.gates and self.find(k) in roots)

    def groups(self) -> list[Group]:
        """One :class:`Group` per class with a producer, ordered by its first producer's key."""
        groups = []
        for keys in self.members().values():
            producers = [self.producer[k] for k in keys if k not in self.gates and self.producer[k]]
            if producers:
                groups.append((min(k for k in keys if k not in self.gates and self.producer[k]),
                               self._group(keys, producers)))
        groups.sort(key=lambda item: item[0])
        return [g for _, g in groups]

    def _group(self, keys: list[int], producers: list[str]) -> Group:
        marks = [m for k in keys for m in self.marks[k]]
        if any(k in self.inputs for k in keys):
            marks.append((False, False, "coupled to the network input"))
        followers = [f for k in keys for f in self.followers[k]] + [self.producer[k] for k in keys if k in self.gates]
        consumers = [c for k in keys for c in self.consumers[k]]
        partial = [c for k in keys for c in self.partial[k]]
        first = min(k for k in keys if k not in self.gates and self.producer[k])
        chain, note = (), ""
        if len(producers) > 1:
            note = f"{RESIDUAL} ({len(producers)} producers)"
        else:
            ends = [e for k in keys if k not in self.gates for e in self.ends[k]]
            chain = common_prefix([c for c, _ in ends])
            if any(c != chain or not exact for c, exact in ends):
                note = "note: the channel path branches after its chain; chain is the common prefix"
        blocks = math.lcm(*(self.blocks.get(k, 1) for k in keys))
        if blocks > 1 and self.width[first] // blocks < 2:
            marks.append((False, False, f"grouped conv blocks of one channel ({blocks} blocks)"))
        reasons = list(dict.fromkeys(r for _, _, r in marks))
        splittable, prunable = all(m[0] for m in marks), all(m[1] for m in marks)
        return Group(id=f"{self.producer[first]}:out", width=self.width[first], producers=tuple(producers),
                     chain=chain, followers=tuple(dict.fromkeys(followers)),
                     consumers=tuple(dict.fromkeys(consumers)), partial_followers=tuple(dict.fromkeys(partial)),
                     splittable=splittable, prunable=prunable,
                     reason="; ".join(reasons) if reasons else (note if splittable else ""), blocks=blocks)

    def fail(self, op: str, why: str) -> UnsupportedModelError:
        node = self.node
        stack = node.meta.get("nn_module_stack") if node is not None else None
        where = ""
        if stack:
            last = list(stack.values())[-1]
            where = f" in module '{last[0] if isinstance(last, tuple) else last}'"
        return UnsupportedModelError(f"unsupported op {op} at node '{node.name}'{where}: {why}")

    def consume(self, name: str, x, freeze: str | None = None) -> None:
        offset = 0
        for s in x:
            self.consumers[s.key].append(Consumer(name, offset, s.repeat))
            self.ends[s.key].append((s.chain, s.exact))
            if freeze:
                self.marks[s.key].append((False, False, freeze))
            offset += s.width * s.repeat

    def follow(self, node, name: str, x, op: ChainOp, kind: str) -> None:
        """A per-channel layer (BatchNorm, depthwise conv). On a concat of several groups each segment
        follows its own group at its offset (a partial follower); the chain stops there."""
        if len(x) == 1 and x[0].repeat == 1:
            self.followers[x[0].key].append(name)
            self.state[node] = self.extend(x, op)
            return
        offset = 0
        for s in x:  # repeat > 1: a shuffle's interleaved parts or a flatten's columns, one entry each
            self.partial[s.key].append(Consumer(name, offset, s.repeat))
            offset += s.width * s.repeat
        self.state[node] = self.extend(x, None)

    @staticmethod
    def extend(x, op: ChainOp | None):
        """Append a channel-wise op to the chains (None: a non-channel-wise op ends exactness)."""
        return tuple(replace(s, exact=False) if op is None or s.pooled or not s.exact
                     else replace(s, chain=s.chain + (op,)) for s in x)

    @staticmethod
    def spatial(node: fx.Node, x):
        """A channel-transparent op; if it changes the spatial grid (pooling) mark the segments pooled."""
        same = shape_of(node)[2:] == shape_of(node.args[0] if node.args else node.kwargs["input"])[2:]
        return x if same else tuple(replace(s, pooled=True) for s in x)

    def reduce(self, node: fx.Node, name: str, x) -> None:
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        ndim = len(shape_of(node.args[0]))
        dims = [dims] if isinstance(dims, int) else dims
        if dims is None or any(d % ndim in (0, 1) for d in dims):
            raise self.fail(name, "reduces over the batch or channel dim")
        self.state[node] = self.spatial(node, x)

    def binary(self, node: fx.Node, name: str, mul: bool, cdim: int = 1) -> None:
        """An element-wise binary op; ``cdim``: the channel dim of the output (1, or last)."""
        out = shape_of(node)
        a, b = node.args[0], node.args[1] if len(node.args) > 1 else node.kwargs.get("other")
        sa, sb = (self.state.get(v) if isinstance(v, fx.Node) else None for v in (a, b))
        ca = aligned(shape_of(a), len(out), cdim) if shape_of(a) is not None else 1
        cb = aligned(shape_of(b), len(out), cdim) if shape_of(b) is not None else 1
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
        spatial = [math.prod(aligned(shape_of(v), len(out), d) for d in range(1, len(out)) if d != cdim)
                   for v in (a, b)]
        gate = mul and 1 in spatial and spatial[0] != spatial[1]
        main, other = (sb, sa) if gate and spatial[0] == 1 else (sa, sb)
        for s, o in zip(main, other):
            if gate and self.find(s.key) != self.find(o.key):
                self.gates.add(o.key)  # squeeze-excitation gate: its producer follows the main group
            self.union(s.key, o.key)
        same = all(s.chain == o.chain for s, o in zip(main, other))
        self.state[node] = tuple(replace(s, exact=False) if mul or not same else s for s in main)

    def reshape(self, node: fx.Node, x, name: str) -> None:
        si, so = shape_of(node.args[0]), shape_of(node)
        if so[:2] == si[:2] and math.prod(so[2:]) == math.prod(si[2:]):
            self.state[node] = x  # channel dim kept
        elif len(so) == 2 and so[0] == si[0] and so[1] == math.prod(si[1:]):
            r = math.prod(si[2:])
            self.state[node] = tuple(replace(s, repeat=s.repeat * r) for s in x)
        else:
            raise self.fail(name, f"reshapes {list(si)} to {list(so)}, moving the channel dim")

    def cat(self, node: fx.Node, name: str, cdim: int = 1) -> None:
        parts = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        states = [self.state.get(p) if isinstance(p, fx.Node) else None for p in parts]
        if any(s is None for s in states):
            raise self.fail(name, "concatenates a channel group with an untracked tensor")
        if dim % len(shape_of(node)) == cdim:
            self.state[node] = tuple(s for st in states for s in st)
            return
        first = states[0]
        for st in states[1:]:
            if [(s.width, s.repeat) for s in st] != [(s.width, s.repeat) for s in first]:
                raise self.fail(name, "concatenates (along a non-channel dim) tensors whose groups do not line up")
            for s, o in zip(first, st):
                self.union(s.key, o.key)
        self.state[node] = self.extend(first, None)

