"""Channel multiples: pruning and splitting change a group's width in aligned blocks.

Inference runtimes choose their fast kernels by channel count. ONNX Runtime on this machine's CPU runs
MobileNetV2 x0.5 at 0.25 ms with its zoo widths (multiples of 8) and at 1.14 ms, 4.5x slower, with one
channel fewer in every group; removing 4 or 8 channels per group keeps it at 0.28-0.30 ms
(``tests/test_alignment.py`` checks the block arithmetic; the timings come from ``energysplit_estimators.ort_latency``).
So with ``multiple = m`` a group's first block re-aligns its width to a multiple of m and every later
block is m channels. ``m = 1`` is channel by channel. Widths that start unaligned stay as they are
until the group changes.
"""
from __future__ import annotations

from ..errors import ConfigError


def first_block(width: int, multiple: int, grow: bool) -> int:
    """Channels to add (``grow``) or remove to reach the next aligned width from ``width``."""
    rest = width % multiple
    if grow:
        return multiple - rest if rest else multiple
    return rest if rest else multiple


def blocks(items: list, width: int, multiple: int, grow: bool) -> list[list]:
    """Cut ``items`` (ordered: first = first to split or remove) into aligned blocks; an incomplete tail
    is dropped. With ``multiple = 1`` every item is its own block."""
    if multiple < 1:
        raise ConfigError(f"channel multiple must be >= 1, got {multiple}")
    out, start, size = [], 0, first_block(width, multiple, grow)
    while start + size <= len(items):
        out.append(items[start:start + size])
        start, size = start + size, multiple
    return out


def aligned_width(keep: int, width: int, multiple: int) -> int:
    """The width nearest to ``keep`` that is a multiple of ``multiple`` (at least one multiple, at most
    ``width``); groups of one multiple or fewer channels, like blocks, do not change."""
    if multiple <= 1 or keep >= width:
        return min(keep, width)
    if width <= multiple:
        return width
    return min(width, max(multiple, multiple * round(keep / multiple)))


def block_units(order: list[int], width: int, blocks: int) -> list[list[int]]:
    """Cut a ranked channel order (first = first to split or remove) of a group that a grouped conv cuts
    into ``blocks`` equal blocks (``Group.blocks``) into units of one channel per block: unit k holds the
    k-th ranked channel of every block, so any number of whole units changes every block alike."""
    size = width // blocks
    per = [[c for c in order if c // size == b] for b in range(blocks)]
    return [[p[k] for p in per] for k in range(min(len(p) for p in per))]
