"""The neuron inventory: groups of coupled channels with stable string ids.

This is the join key of the whole pipeline. Tracing (:mod:`energysplit.graph.trace`) builds it once;
estimators cost groups, splitting scores groups, baselines rank groups and surgery edits groups by id.
No later stage re-derives coupling.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class ChainOp:
    """A channel-wise op between a group's producer and its consumers, in forward order.

    kind: ``"bn"`` (BatchNorm), ``"act"`` (element-wise activation) or ``"dw"`` (depthwise conv,
    duplicated unscaled on a split). target: the module's qualified name, or for a functional
    activation the function's name (e.g. ``"torch.nn.functional.relu"``). act: for ``"act"`` ops the
    normalised activation name (``relu``, ``relu6``, ``silu``, ``hardswish``, ``gelu``, ``tanh``,
    ``sigmoid``, ``identity``...).
    """

    kind: str
    target: str
    act: str | None = None


@dataclass(frozen=True)
class Consumer:
    """A conv/linear layer reading the group's channels as input columns.

    Channel ``c`` of the group occupies input columns ``offset + c*repeat ... offset + (c+1)*repeat - 1``
    (``offset`` from a concat, ``repeat`` = H*W after a flatten, else 1). For a grouped (non-depthwise)
    consumer the columns are those of its weight's input dimension.
    """

    module: str
    offset: int = 0
    repeat: int = 1


@dataclass(frozen=True)
class Group:
    """One group of coupled channels ("neurons").

    producers: conv/linear modules whose output channels *are* these channels (several when a residual
    add couples them). chain: channel-wise ops from the (single) producer to the consumers, used by the
    splitting matrices. followers: every module with per-channel state that must be resized with the
    group (BatchNorms, depthwise convs). consumers: layers whose input columns read the group.
    partial_followers: per-channel layers on a concatenation of several groups (DenseNet's BatchNorms),
    holding this group's channels from ``offset`` on; each segment is resized with its own group.
    blocks: a grouped conv (groups = G) producing or reading the channels cuts them into G equal
    contiguous blocks; a plan must split or remove the same number of channels in every block
    (:meth:`energysplit.graph.plan.Plan.validate`), and surgery puts split copies at the end of their block.
    """

    id: str
    width: int
    producers: tuple[str, ...]
    chain: tuple[ChainOp, ...] = ()
    followers: tuple[str, ...] = ()
    consumers: tuple[Consumer, ...] = ()
    partial_followers: tuple[Consumer, ...] = ()
    splittable: bool = True
    prunable: bool = True
    reason: str = ""  # why not splittable / prunable
    blocks: int = 1  # equal contiguous blocks (a grouped conv's groups): edits change each block alike

    @property
    def block_width(self) -> int:
        """Channels per block: a grouped conv that produces or reads the group sees one block per group."""
        return self.width // self.blocks

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Inventory:
    groups: dict[str, Group] = field(default_factory=dict)
    input_shape: tuple[int, ...] = ()

    def __iter__(self):
        return iter(self.groups.values())

    def __getitem__(self, group_id: str) -> Group:
        try:
            return self.groups[group_id]
        except KeyError:
            raise KeyError(f"no neuron group {group_id!r}; known: {', '.join(self.groups)}") from None

    def __len__(self) -> int:
        return len(self.groups)

    def splittable(self) -> list[Group]:
        return [g for g in self.groups.values() if g.splittable]

    def prunable(self) -> list[Group]:
        return [g for g in self.groups.values() if g.prunable]

    def widths(self) -> dict[str, int]:
        return {g.id: g.width for g in self.groups.values()}

    def rows(self) -> list[dict]:
        """One flat row per group, for tables (``energysplit inspect``)."""
        return [{"group": g.id, "width": g.width, "producers": ",".join(g.producers),
                 "consumers": ",".join(c.module for c in g.consumers), "splittable": g.splittable,
                 "prunable": g.prunable, "reason": g.reason} for g in self.groups.values()]
