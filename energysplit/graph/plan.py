"""A Plan: the serialisable list of edits (splits and removals) that one surgery step applies.

Selection (splitting or any pruning baseline) produces a Plan; :func:`energysplit.graph.surgery.apply_plan_`
applies it. Channel indices refer to the group widths *before* the plan; split copies are appended at
the end of the channel dimension in plan order.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import EnergySplitError

PLAN_FORMAT = 1


@dataclass(frozen=True, eq=False)
class Split:
    """Split channel ``channel`` of ``group`` into theta + eps*v (kept slot) and theta - eps*v (new slot).

    ``direction`` (v) is unit-norm and shaped like the producer's ``weight[channel]``; None duplicates
    the channel exactly (Liu et al. 2019, arXiv 1910.02366, section 2).

    ``share`` (s): the kept slot's part of the channel's outgoing weights, the new slot's is 1 - s (both
    1/2 by default). With s != 1/2 the offspring are theta + 2 eps (1 - s) v and theta - 2 eps s v, so the
    weighted mean stays theta (no first-order loss change) and the second-order change is 4 s (1 - s)
    times the equal split's (Liu et al.'s splitting with offspring weights w_i). Unequal shares give the
    offspring's incoming weights unequal gradients, so training pulls them apart instead of leaving
    near-copies.
    """

    group: str
    channel: int
    direction: torch.Tensor | None = None
    eps: float = 0.0
    share: float = 0.5

    def __post_init__(self):
        if not isinstance(self.channel, int) or isinstance(self.channel, bool) or self.channel < 0:
            raise ValueError(f"Split({self.group!r}): channel must be a non-negative int, got {self.channel!r}")
        if not (isinstance(self.eps, (int, float)) and math.isfinite(self.eps) and self.eps >= 0):
            raise ValueError(f"Split({self.group!r}, {self.channel}): eps must be finite and >= 0, got {self.eps!r}")
        if not (isinstance(self.share, (int, float)) and 0 < self.share < 1):
            raise ValueError(f"Split({self.group!r}, {self.channel}): share must be in (0, 1), got {self.share!r}")
        if self.direction is not None:
            if not isinstance(self.direction, torch.Tensor) or not self.direction.is_floating_point():
                raise ValueError(f"Split({self.group!r}, {self.channel}): direction must be a float tensor or None")
            norm = float(self.direction.detach().double().norm())
            if abs(norm - 1.0) > 1e-4:
                raise ValueError(f"Split({self.group!r}, {self.channel}): direction must be unit-norm, "
                                 f"got norm {norm:.6g}")

    def to_dict(self) -> dict:
        direction = None if self.direction is None else self.direction.detach().cpu().clone()
        return {"op": "split", "group": self.group, "channel": self.channel, "direction": direction,
                "eps": float(self.eps), "share": float(self.share)}


@dataclass(frozen=True)
class Remove:
    """Delete ``channels`` of ``group`` everywhere they appear (producers, followers, consumers)."""

    group: str
    channels: tuple[int, ...]

    def __post_init__(self):
        channels = tuple(int(c) for c in self.channels)
        if not channels or min(channels) < 0 or len(set(channels)) != len(channels):
            raise ValueError(f"Remove({self.group!r}): channels must be distinct non-negative ints, got {channels}")
        object.__setattr__(self, "channels", channels)

    def to_dict(self) -> dict:
        return {"op": "remove", "group": self.group, "channels": list(self.channels)}


@dataclass
class Plan:
    ops: list = field(default_factory=list)

    def __post_init__(self):
        self.ops = list(self.ops)
        for op in self.ops:
            if not isinstance(op, (Split, Remove)):
                raise ValueError(f"a Plan holds Split and Remove ops, got {type(op).__name__}")

    def __len__(self) -> int:
        return len(self.ops)

    def __iter__(self):
        return iter(self.ops)

    def groups(self) -> list[str]:
        return list(dict.fromkeys(op.group for op in self.ops))

    def widths(self, inventory) -> dict[str, int]:
        """Group widths after the plan (all groups of ``inventory``)."""
        widths = inventory.widths()
        for op in self.ops:
            widths[op.group] += 1 if isinstance(op, Split) else -len(op.channels)
        return widths

    def validate(self, inventory) -> None:
        """Raise EnergySplitError if an op names an unknown or frozen group or a bad channel."""
        removed: dict[str, set[int]] = {}
        split: dict[str, set[int]] = {}
        for op in self.ops:
            if op.group not in inventory.groups:
                raise EnergySplitError(f"plan names unknown neuron group {op.group!r}")
            g = inventory[op.group]
            if not g.prunable:
                raise EnergySplitError(f"group {g.id} cannot change width: {g.reason}")
            if isinstance(op, Split):
                if op.direction is not None and op.eps > 0 and not g.splittable:
                    raise EnergySplitError(f"group {g.id} only allows pure duplication (direction None): {g.reason}")
                channels = (op.channel,)
            else:
                channels = op.channels
            bad = [c for c in channels if c >= g.width]
            if bad:
                raise EnergySplitError(f"group {g.id} has {g.width} channels; plan names channel {bad[0]}")
            gone, done = removed.setdefault(g.id, set()), split.setdefault(g.id, set())
            if isinstance(op, Split):
                if op.channel in done or op.channel in gone:
                    raise EnergySplitError(f"group {g.id}: channel {op.channel} is split twice or split and removed")
                done.add(op.channel)
            else:
                if gone & set(channels) or done & set(channels):
                    raise EnergySplitError(f"group {g.id}: a channel is removed twice or split and removed")
                gone.update(channels)
            if len(gone) >= g.width:
                raise EnergySplitError(f"plan removes every channel of group {g.id}")
        for gid in removed:
            _check_blocks(inventory[gid], removed[gid], split[gid])

    # -- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": PLAN_FORMAT, "ops": [op.to_dict() for op in self.ops]}

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT or "ops" not in data:
            raise EnergySplitError(f"not an energysplit plan (format {PLAN_FORMAT})")
        ops = []
        for item in data["ops"]:
            if item.get("op") == "split":
                ops.append(Split(item["group"], int(item["channel"]), item.get("direction"), float(item["eps"]),
                                 float(item.get("share", 0.5))))
            elif item.get("op") == "remove":
                ops.append(Remove(item["group"], tuple(item["channels"])))
            else:
                raise EnergySplitError(f"unknown plan op {item.get('op')!r}")
        return cls(ops)

    def save(self, path: str | Path) -> Path:
        from .._io import atomic_save

        return atomic_save(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        try:
            data = torch.load(path, weights_only=True, map_location="cpu")
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise EnergySplitError(f"{path}: not a readable energysplit plan ({type(exc).__name__})") from exc
        return cls.from_dict(data)


def _check_blocks(g, removed: set[int], split: set[int]) -> None:
    """A grouped conv's blocks must change alike: the same number of channels removed and split in every
    block."""
    if g.blocks == 1:
        return
    for verb, chans in (("remove", removed), ("split", split)):
        per = Counter(c // g.block_width for c in chans)
        if len({per[b] for b in range(g.blocks)}) > 1:
            raise EnergySplitError(f"group {g.id} is cut into {g.blocks} blocks of {g.block_width} channels by a "
                                   f"grouped conv: a plan must {verb} the same number of channels in every "
                                   f"block, got {[per[b] for b in range(g.blocks)]}")
