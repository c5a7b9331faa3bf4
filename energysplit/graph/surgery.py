"""Apply a Plan to a model in place: split neurons (widen) or remove them (narrow).

Split (Liu et al. 2019, arXiv 1910.02366; Wang et al. 2019, arXiv 1910.03103; METHOD.md section 2):
the channel is duplicated in every producer as theta + eps*v (kept slot) and theta - eps*v (new slot,
appended), bias copied; BatchNorm statistics, depthwise filters and squeeze-excitation gate rows are
duplicated unscaled (on a concat of several groups, each segment as its group says); every consumer's
input column (a block of H*W columns after a flatten) is duplicated and both copies halved (or scaled by
``Split.share`` and 1 - share, the offspring then theta + 2 eps (1 - share) v and theta - 2 eps share v), so
eps = 0 leaves the function unchanged. Remove deletes the
channel's rows, follower entries and consumer columns. The perturbation is added in the producer's
original input coordinates before its own input columns are expanded, so when its input channel is
split in the same plan the entries of v are copied into both copies and halved, or scaled by its shares
(v^T x preserved).
A residual stream's channel (a group with several producers) is split jointly: ``direction`` is then one flat
unit vector over every producer's ``weight[channel]``, in ``group.producers`` order (:func:`joint_slices`).
Modules get new Parameter objects and updated size attributes: build a fresh optimizer afterwards.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import EnergySplitError, UnsupportedModelError
from .inventory import Consumer, Inventory
from .plan import Plan, Split


@dataclass
class _Edit:
    """One group's edit: new channel j is old channel ``index[j]``, read by consumers times ``scale[j]``."""

    index: list[int]
    scale: list[float]
    perturb: list[tuple[int, float, torch.Tensor]]  # (new position, signed eps, direction) for producers


def group_edits(inventory: Inventory, plan: Plan) -> dict[str, _Edit]:
    """Per group: kept channels then split copies, block by block (one block unless a grouped conv cuts
    the group into several; a split copy stays in its own block)."""
    edits = {}
    for gid in plan.groups():
        g = inventory[gid]
        ops = [op for op in plan if op.group == gid]
        splits = [op for op in ops if isinstance(op, Split)]
        removed = {c for op in ops if not isinstance(op, Split) for c in op.channels}
        edit, pos = _Edit([], [], []), {}
        for lo in range(0, g.width, g.block_width):
            for c in range(lo, lo + g.block_width):
                if c not in removed:
                    pos[c] = len(edit.index)
                    edit.index.append(c)
                    edit.scale.append(1.0)
            for s in (s for s in splits if lo <= s.channel < lo + g.block_width):
                old, new = pos[s.channel], len(edit.index)
                edit.index.append(s.channel)
                edit.scale.append(1.0 - s.share)
                edit.scale[old] = s.share
                if s.direction is not None and s.eps > 0:  # shares s, 1 - s: weighted mean of offspring = theta
                    kept, split = 2 * s.eps * (1 - s.share), -2 * s.eps * s.share
                    edit.perturb += [(old, kept, s.direction), (new, split, s.direction)]
        edits[gid] = edit
    return edits


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.conv._ConvNd) and m.groups == m.in_channels == m.out_channels > 1


def joint_slices(model: nn.Module, producers) -> dict[str, slice]:
    """Where each producer's ``weight[channel]`` sits in a residual stream's flat joint direction."""
    out, start = {}, 0
    for name in producers:
        size = model.get_submodule(name).weight[0].numel()
        out[name], start = slice(start, start + size), start + size
    return out


def direction_shape(model: nn.Module, producers) -> tuple[int, ...]:
    """The shape of a split direction: the producer's ``weight[channel]``, or flat over several producers."""
    if len(producers) == 1:
        return tuple(model.get_submodule(producers[0]).weight.shape[1:])
    return (max(s.stop for s in joint_slices(model, producers).values()),)


def _check(model: nn.Module, inventory: Inventory, plan: Plan, edits: dict[str, _Edit]) -> None:
    for op in plan:
        g = inventory[op.group]
        if isinstance(op, Split) and op.direction is not None and op.eps > 0:
            expected = direction_shape(model, g.producers)
            if tuple(op.direction.shape) != expected:
                raise EnergySplitError(f"Split({g.id}, {op.channel}): direction has shape {tuple(op.direction.shape)}, "
                                       f"the producers' weight[channel] need {expected}")
    for gid, edit in edits.items():
        dw = [f for f in inventory[gid].followers if _is_depthwise(model.get_submodule(f))]
        if len(edit.index) == 1 and dw:
            raise EnergySplitError(f"plan leaves group {gid} with one channel, which would turn depthwise "
                                   f"conv {dw[0]} into an ordinary conv; keep at least 2 channels")


def _check_grouped(model: nn.Module, rows, cols) -> None:
    """A grouped conv left with one input and one output channel per group would turn depthwise."""
    for name in dict.fromkeys([*rows, *cols]):
        m = model.get_submodule(name)
        if isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and not _is_depthwise(m):
            out = len(rows[name][0].index) if name in rows else m.out_channels
            cin = m.in_channels + sum(len(edit.index) - width for _, edit, width in cols.get(name, []))
            if out == cin == m.groups:
                raise EnergySplitError(f"plan leaves grouped conv {name} with one input and one output channel "
                                       "per group, which would make it depthwise; keep at least 2 on one side")


def apply_plan_(model: nn.Module, inventory: Inventory, plan: Plan) -> Inventory:
    """Apply ``plan`` to ``model`` in place; return the re-traced Inventory (same group ids, new widths)."""
    from .trace import build_inventory

    plan.validate(inventory)
    edits = group_edits(inventory, plan)
    _check(model, inventory, plan, edits)
    rows: dict[str, tuple[_Edit, slice | bool]] = {}  # producers: their part of the direction (True: all)
    cols: dict[str, list[tuple[Consumer, _Edit, int]]] = defaultdict(list)
    parts: dict[str, list[tuple[Consumer, _Edit, int]]] = defaultdict(list)
    for gid, edit in edits.items():
        g = inventory[gid]
        parts_of = joint_slices(model, g.producers) if len(g.producers) > 1 else {g.producers[0]: True}
        rows.update({p: (edit, parts_of[p]) for p in g.producers})
        rows.update({f: (edit, False) for f in g.followers})
        for c in g.consumers:
            cols[c.module].append((c, edit, g.width))
        for c in g.partial_followers:
            parts[c.module].append((c, edit, g.width))
    for name, entries in parts.items():  # a per-channel layer on a concat: its channels re-ordered, unscaled
        index, _ = _columns(_channels(model.get_submodule(name)), entries)
        rows[name] = (_Edit(index, [1.0] * len(index), []), False)
    _check_grouped(model, rows, cols)
    with torch.no_grad():
        for name in dict.fromkeys([*rows, *cols]):
            _edit_module(model.get_submodule(name), name, rows.get(name), cols.get(name, []))
    updated = build_inventory(model, inventory.input_shape)
    expected = plan.widths(inventory)
    if updated.widths() != expected:  # surgery must never change coupling: a bug if it does
        raise RuntimeError(f"surgery changed the inventory: expected widths {expected}, got {updated.widths()}")
    return updated


def _columns(in_dim: int, cols) -> tuple[list[int], list[float]]:
    """New input-column order and scale of a consumer reading the edited groups' channels."""
    index: list[int] = []
    scale: list[float] = []
    pos = 0
    for c, edit, width in sorted(cols, key=lambda item: item[0].offset):
        if c.offset < pos:
            raise RuntimeError(f"overlapping channel groups in the input of {c.module}")
        index += range(pos, c.offset)
        scale += [1.0] * (c.offset - pos)
        for old, s in zip(edit.index, edit.scale):
            start = c.offset + old * c.repeat
            index += range(start, start + c.repeat)
            scale += [s] * c.repeat
        pos = c.offset + width * c.repeat
    index += range(pos, in_dim)
    scale += [1.0] * (in_dim - pos)
    return index, scale


def _read_columns(weight: torch.Tensor, groups: int, cols) -> torch.Tensor:
    """The weight with its input columns re-ordered and scaled; a grouped conv's rows of group j read
    only the columns of input block j (the plan keeps every block the same width)."""
    per_in, per_out = weight.shape[1], weight.shape[0] // groups
    index, scale = _columns(per_in * groups, cols)
    per_new = len(index) // groups
    shape = (1, -1) + (1,) * (weight.dim() - 2)
    parts = []
    for j in range(groups):
        cols_j = [c - j * per_in for c in index[j * per_new:(j + 1) * per_new]]
        if len(index) % groups or not all(0 <= c < per_in for c in cols_j):
            raise RuntimeError(f"an edit moves input columns across the groups of a grouped conv: {index}")
        scale_j = torch.tensor(scale[j * per_new:(j + 1) * per_new]).to(weight).view(shape)
        parts.append(_take(weight[j * per_out:(j + 1) * per_out], cols_j, 1) * scale_j)
    return torch.cat(parts)


def _channels(m: nn.Module) -> int:
    return m.num_features if isinstance(m, nn.modules.batchnorm._BatchNorm) else m.out_channels


def _take(t: torch.Tensor, index: list[int], dim: int = 0) -> torch.Tensor:
    return t.index_select(dim, torch.as_tensor(index, device=t.device))


def _param(new: torch.Tensor, old: nn.Parameter) -> nn.Parameter:
    return nn.Parameter(new.contiguous().clone(), requires_grad=old.requires_grad)


def _edit_module(m: nn.Module, name: str, row, cols) -> None:
    if isinstance(m, nn.modules.batchnorm._BatchNorm):  # duplicated unscaled
        for attr in ("weight", "bias", "running_mean", "running_var"):
            old = getattr(m, attr)
            if old is not None:
                new = _take(old.detach(), row[0].index)
                setattr(m, attr, _param(new, old) if isinstance(old, nn.Parameter) else new.clone())
        m.num_features = len(row[0].index)
        return
    conv = isinstance(m, nn.modules.conv._ConvNd) and not m.transposed
    if not (conv or isinstance(m, nn.Linear)):
        raise UnsupportedModelError(f"surgery cannot resize {type(m).__name__} module '{name}'")
    depthwise = _is_depthwise(m)
    weight, bias = m.weight.detach(), None if m.bias is None else m.bias.detach()
    if row is not None:
        edit, producer = row
        weight = _take(weight, edit.index)
        if producer is not False:  # +-eps*v in the original input coordinates, before the columns expand
            for j, eps, v in edit.perturb:
                weight[j] += eps * (v if producer is True else v[producer].view_as(weight[j])).to(weight)
        bias = None if bias is None else _take(bias, edit.index)
    if cols:
        weight = _read_columns(weight, 1 if depthwise or isinstance(m, nn.Linear) else m.groups, cols)
    m.weight = _param(weight, m.weight)
    if bias is not None:
        m.bias = _param(bias, m.bias)
    if isinstance(m, nn.Linear):
        m.out_features, m.in_features = weight.shape
    elif depthwise:
        m.in_channels = m.out_channels = m.groups = weight.shape[0]
    else:
        m.out_channels, m.in_channels = weight.shape[0], weight.shape[1] * m.groups
