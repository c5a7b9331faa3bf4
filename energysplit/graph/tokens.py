"""Channels-last tensors and frozen streams: transformer MLPs (ViT, ConvNeXt) in the channel map.

A transformer keeps its features on the **last** dim ([N, tokens, C], or [N, H, W, C] after a
``permute``), and a ``Linear`` there acts on every token alike, exactly like a 1x1 conv. A permute or
transpose that moves the channel dim of a tensor to the last position (or back to dim 1) is tracked: the
node is recorded in ``last`` and its segments are kept. An MLP's hidden neurons (Linear -> GELU -> Linear
between two such tensors) are then a group like any other: splittable and prunable.

What cannot be edited exactly is **sealed**: its channels are frozen with a named reason and the op's
output is a sealed block owned by no group. Sealing is always exact (a frozen channel is never edited)
and happens at

- a normalization across the channels (LayerNorm, GroupNorm): removing or copying a channel changes the
  mean and variance of every other one;
- attention (``MultiheadAttention``): heads mix the channels;
- a combination with a constant per-channel tensor (a layer scale) or a concatenation, along a
  non-channel dim, with an untracked tensor (a class token);
- any op on a channels-last tensor other than the element-wise and token-wise ones below.

An op whose traced inputs are all sealed has a sealed output whatever it does (attention internals,
position embeddings, window partitions): it touches no channel that any group could edit. A layer that
reads a sealed tensor (a Linear after a LayerNorm) still produces a fresh group of its own.
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from . import ops
from .channels import Segment, aligned, node_args, shape_of
from .inventory import ChainOp
from .permute import Permutations

# modules that normalize across the channels or mix them by attention: they seal their input
SEALING_MODULES = {nn.LayerNorm: "LayerNorm normalizes across the channels",
                   nn.GroupNorm: "GroupNorm normalizes across the channels",
                   nn.MultiheadAttention: "MultiheadAttention mixes the channels across heads"}
SEALING_FUNCTIONS = {F.layer_norm: "layer_norm normalizes across the channels",
                     F.group_norm: "group_norm normalizes across the channels",
                     F.scaled_dot_product_attention: "attention mixes the channels",
                     torch.einsum: "einsum contracts the channels", torch.matmul: "matmul contracts the channels",
                     operator.matmul: "matmul contracts the channels", torch.bmm: "bmm contracts the channels"}
# modules that may read a channels-last tensor and keep it so (element-wise or per token)
TOKENWISE_MODULES = (nn.Identity, nn.Dropout)


class ChannelsLast(Permutations):
    """The coupling rules of :class:`Permutations` plus channels-last tensors and sealed streams."""

    def __init__(self):
        super().__init__()
        self.last: set[fx.Node] = set()  # nodes whose channels are on the last dim
        self.sealed: set[int] = set()  # keys of sealed blocks (no producer, frozen)

    def channel_dim(self, node: fx.Node) -> int:
        """The dim of ``node`` that holds its channels (1, or the last dim)."""
        return len(shape_of(node)) - 1 if node in self.last else 1

    def is_sealed(self, x) -> bool:
        return bool(x) and all(s.key in self.sealed for s in x)

    def all_sealed(self, node: fx.Node) -> bool:
        """Every traced input of ``node`` carries sealed channels only (and there is one)."""
        states = [self.state[a] for a in node_args((node.args, node.kwargs)) if a in self.state]
        return bool(states) and all(self.is_sealed(s) for s in states)

    def seal(self, node: fx.Node, reason: str | None = None) -> None:
        """Freeze the channels every traced input of ``node`` carries (unless ``reason`` is None: they
        are sealed already) and give ``node`` a sealed block."""
        if reason:
            for a in node_args((node.args, node.kwargs)):
                for s in self.state.get(a, ()):
                    self.marks[s.key].append((False, False, reason))
        shape = shape_of(node)
        width = shape[-1] if shape else 1
        key = self.new_key(None, width)
        self.sealed.add(key)
        self.marks[key].append((False, False, reason or "sealed"))
        self.state[node] = (Segment(key, width, exact=False),)

    def permute(self, node: fx.Node, x, name: str) -> None:
        """A permute (or a transpose of two dims) that keeps the batch dim first and puts the channel
        dim at dim 1 or last; anything else seals."""
        src = node.args[0]
        n = len(shape_of(src))
        if node.target in ("permute",) or getattr(node.target, "__name__", "") == "permute":
            dims = node.args[1:] if len(node.args) > 2 else (node.args[1] if len(node.args) > 1
                                                             else node.kwargs["dims"])
            order = [int(d) % n for d in dims]
        else:
            d0, d1 = (node.args[1:3] or (node.kwargs.get("dim0"), node.kwargs.get("dim1")))
            order = list(range(n))
            order[int(d0) % n], order[int(d1) % n] = order[int(d1) % n], order[int(d0) % n]
        where = order.index(self.channel_dim(src))
        if order[0] != 0 or where not in (1, n - 1):
            return self.seal(node, f"{name} moves the channel dim to dim {where} (only dim 1 or last is mapped)")
        self.state[node] = x
        if where == n - 1 and n > 2:
            self.last.add(node)

    def last_module(self, node: fx.Node, name: str, m: nn.Module, x) -> bool:
        """Handle a module call on a channels-last or sealed input, or on a sealing module; False when
        the ordinary channel-first rules apply."""
        src = node.args[0]
        sealing = next((why for t, why in SEALING_MODULES.items() if isinstance(m, t)), None)
        if sealing:
            self.seal(node, None if self.is_sealed(x) else f"{sealing} ('{name}')")
            return True
        if isinstance(m, nn.Linear) and len(shape_of(src) or ()) > 2:
            if not (src in self.last or self.is_sealed(x)):
                raise self.fail(f"Linear module '{name}'", "reads the last dim of a tensor whose channels are on dim 1")
            self.consume(name, x)
            self.state[node] = (Segment(self.new_key(name, m.out_features), m.out_features),)
            self.last.add(node)
            return True
        if src not in self.last:
            return False
        if isinstance(m, TOKENWISE_MODULES):
            self.state[node] = x
        elif isinstance(m, nn.Linear):
            return False
        else:
            act = ops.module_activation(m)
            if act is None:
                self.seal(node, f"{type(m).__name__} module '{name}' on a channels-last tensor")
                return True
            self.state[node] = self.extend(x, ChainOp("act", name, act))
        self.last.add(node)
        return True

    def keep_last(self, node: fx.Node) -> None:
        """Record ``node`` as channels-last when its (first) traced input is and it kept that dim."""
        src = next((a for a in node_args(node.args) if a in self.state), None)
        so = shape_of(node)
        if src in self.last and so is not None and node in self.state and so[-1] == shape_of(src)[-1]:
            self.last.add(node)

    def out_channel_dim(self, node: fx.Node) -> int:
        """The channel dim of the output of an op on its traced inputs: last if any input is channels-last."""
        last = any(a in self.last for a in node_args(node.args) if a in self.state)
        return len(shape_of(node)) - 1 if last else 1

    def binary(self, node: fx.Node, name: str, mul: bool, cdim: int = 1) -> None:
        """Seal a sum or product with a sealed stream or a constant per-channel tensor; else couple."""
        out, cdim = shape_of(node), self.out_channel_dim(node)
        operands = [v for v in (node.args[0], node.args[1] if len(node.args) > 1 else node.kwargs.get("other"))]
        states = [self.state.get(v) if isinstance(v, fx.Node) else None for v in operands]
        if any(self.is_sealed(st) for st in states):
            live = any(st and not self.is_sealed(st) for st in states)
            return self.seal(node, f"combined by {name} with a frozen stream" if live else None)
        constant = [v for v, st in zip(operands, states) if st is None and shape_of(v) is not None]
        if any(aligned(shape_of(v), len(out), cdim) != 1 for v in constant):
            return self.seal(node, f"{name} combines them with a constant per-channel tensor (e.g. a layer scale)")
        super().binary(node, name, mul, cdim)
        self.keep_last(node)

    def cat(self, node: fx.Node, name: str, cdim: int = 1) -> None:
        """Seal a concatenation along a non-channel dim with an untracked or a sealed tensor."""
        parts = [p for p in node.args[0]]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        cdim = self.out_channel_dim(node)
        states = [self.state.get(p) if isinstance(p, fx.Node) else None for p in parts]
        if dim % len(shape_of(node)) != cdim and any(st is None or self.is_sealed(st) for st in states):
            live = any(st and not self.is_sealed(st) for st in states)
            return self.seal(node, f"{name} concatenates them, along dim {dim}, with an untracked or frozen "
                                   "tensor (e.g. a class token)" if live else None)
        super().cat(node, name, cdim)
        self.keep_last(node)

    def last_function(self, node: fx.Node, x, name: str) -> bool:
        """A function or method on a channels-last tensor: element-wise and token-wise ops keep the
        channels (True: handled here); anything else but a binary, a concat or a permute seals."""
        t, method = node.target, node.op == "call_method"
        si, so = shape_of(node.args[0]), shape_of(node)
        if so is None and ((method and t in ops.NON_TENSOR_METHODS) or t is getattr):
            return True  # x.shape, x.size(): no channels
        if t in (ops.ADD_METHODS | ops.MUL_METHODS if method else ops.ADD_OPS | ops.MUL_OPS) \
                or (not method and t in ops.CAT_FUNCTIONS):
            return False
        act, params = ops.node_activation(node)
        transparent = t in ops.TRANSPARENT_METHODS if method else (t in ops.DROPOUT_FUNCTIONS
                                                                    or name in ops.TRANSPARENT_NAMES)
        reshape = t in (ops.RESHAPE_METHODS if method else ops.RESHAPE_FUNCTIONS)
        if act is not None and not params:
            self.state[node] = self.extend(x, ChainOp("act", name, act))
        elif (transparent and so == si) or (reshape and so is not None and so[0] == si[0] and so[-1] == si[-1]
                                            and len(so) > 2):
            self.state[node] = x
        else:
            self.seal(node, f"{name} on a channels-last tensor (only element-wise and per-token ops are mapped)")
            return True
        self.last.add(node)
        return True
