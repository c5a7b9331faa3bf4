"""Channel permutations and cuts: channel shuffle (view -> transpose -> view) and chunk/split of dim 1.

A channel shuffle with G groups (ShuffleNet; Zhang et al. 2018) views the C channels as a (G, C/G) grid,
transposes it and flattens it back: output channel a*G + g is channel a of part g. When the G parts are
G whole groups of equal width, channel a of every part is coupled (one group, several producers, like a
residual add) and the output holds that group with ``repeat = G``: group channel a occupies columns
a*G ... a*G + G-1, so consumers and per-channel followers edit those columns together and stay exact.
``chunk`` cuts dim 1 into equal pieces computed at run time: pieces that are whole groups are coupled
piece by piece (so they keep equal widths). Anything else (a cut through a group, ``split`` with fixed
sizes, a shuffle of unequal parts) freezes the channels it touches with a named reason and passes on an
opaque channel block, so the rest of the model is still mapped.
"""
from __future__ import annotations

import torch
from torch import fx

from .channels import ChannelGraph, Segment, shape_of

CHUNK_METHODS = {"chunk", "split", "tensor_split"}
CHUNK_FUNCTIONS = {torch.chunk, torch.split, torch.tensor_split}
TRANSPOSE_FUNCTIONS = {torch.transpose, torch.swapaxes, torch.swapdims}
TRANSPOSE_METHODS = {"transpose", "swapaxes", "swapdims"}


def _shapes(node: fx.Node) -> list[tuple[int, ...]] | None:
    """Shapes of the tensors a node returns as a tuple (chunk, split), from the shape propagation."""
    meta = node.meta.get("tensor_meta")
    if isinstance(meta, (tuple, list)) and all(hasattr(m, "shape") for m in meta):
        return [tuple(m.shape) for m in meta]
    return None


def cut(x, sizes: list[int]) -> list[tuple[Segment, ...]] | None:
    """Cut segments into pieces of ``sizes`` columns; None when a cut falls inside a segment."""
    pieces, current, filled, it = [], [], 0, iter(x)
    for size in sizes:
        while filled < size:
            s = next(it, None)
            if s is None or filled + s.width * s.repeat > size:
                return None
            current.append(s)
            filled += s.width * s.repeat
        pieces.append(tuple(current))
        current, filled = [], 0
    return pieces


class Permutations(ChannelGraph):
    """The coupling rules of :class:`ChannelGraph` plus channel shuffles and chunks."""

    def __init__(self):
        super().__init__()
        self.grid: dict[fx.Node, tuple[int, bool]] = {}  # node -> (G, transposed): dim 1 viewed as (G, C/G)
        self.pieces: dict[fx.Node, list[tuple[Segment, ...]]] = {}  # chunk node -> its pieces' segments

    def opaque(self, x, width: int, reason: str) -> tuple[Segment, ...]:
        """Freeze the channels of ``x`` and return a block of ``width`` channels owned by no group."""
        for s in x:
            self.marks[s.key].append((False, False, reason))
        key = self.new_key(None, width)
        self.marks[key].append((False, False, reason))
        return (Segment(key, width, exact=False),)

    def reshape(self, node: fx.Node, x, name: str) -> None:
        si, so = shape_of(node.args[0]), shape_of(node)
        if len(so) == len(si) + 1 and so[0] == si[0] and so[1] * so[2] == si[1] and so[3:] == si[2:]:
            self.grid[node] = (so[1], False)  # [N, C, ...] -> [N, G, C/G, ...]
            self.state[node] = x
        elif node.args[0] in self.grid and len(so) == len(si) - 1 and so[1] == si[1] * si[2] and so[2:] == si[3:]:
            groups, transposed = self.grid[node.args[0]]
            self.state[node] = self.interleave(x, groups, name) if transposed else x
        elif node.args[0] in self.grid:
            raise self.fail(name, f"reshapes a channel grid {list(si)} to {list(so)}")
        else:
            super().reshape(node, x, name)

    def transpose(self, node: fx.Node, x, name: str) -> None:
        dims = sorted(int(d) % 5 for d in (node.args[1:3] or (node.kwargs.get("dim0"), node.kwargs.get("dim1"))))
        if node.args[0] not in self.grid or len(shape_of(node)) < 3 or dims != [1, 2]:
            raise self.fail(name, "transposes the channel dim (only a channel shuffle's grid transpose is mapped)")
        groups, transposed = self.grid[node.args[0]]
        self.grid[node] = (groups, not transposed)
        self.state[node] = x

    def carry(self, node: fx.Node) -> None:
        """A channel-transparent op (``contiguous``) on a shuffle's grid keeps the grid."""
        if node.args and node.args[0] in self.grid:
            self.grid[node] = self.grid[node.args[0]]

    def interleave(self, x, groups: int, name: str) -> tuple[Segment, ...]:
        total = sum(s.width * s.repeat for s in x)
        parts = cut(x, [total // groups] * groups)
        first = parts[0][0] if parts and len(parts[0]) == 1 else None
        if first is None or first.repeat != 1 or any(len(p) != 1 or p[0].width != first.width or p[0].repeat != 1
                                                     for p in parts):
            return self.opaque(x, total, f"channel shuffle by {name} interleaves parts that are not "
                                         f"{groups} whole groups of equal width")
        for p in parts[1:]:
            self.union(first.key, p[0].key)
        return (Segment(first.key, first.width, groups, first.chain, exact=False),)

    def chunk(self, node: fx.Node, x, name: str) -> None:
        shapes = _shapes(node)
        if shapes is None:
            raise self.fail(name, "returns several tensors of unknown shapes")
        dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
        if int(dim) % len(shapes[0]) != 1:
            self.pieces[node] = [self.extend(x, None)] * len(shapes)
            return
        sizes = [s[1] for s in shapes]
        pieces = cut(x, sizes)
        dynamic = node.target in ("chunk", torch.chunk) and len(set(sizes)) == 1
        same = pieces is not None and all([(s.width, s.repeat) for s in p] == [(s.width, s.repeat) for s in pieces[0]]
                                          for p in pieces)
        if not (dynamic and same):
            why = "cuts through a group" if pieces is None else "has fixed sizes or unequal pieces"
            self.pieces[node] = [self.opaque(x, n, f"{name} on the channel dim {why}") for n in sizes]
            return
        for p in pieces[1:]:
            for s, o in zip(pieces[0], p):
                self.union(s.key, o.key)
        self.pieces[node] = pieces
