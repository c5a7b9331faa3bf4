"""What the splitting solvers share: their registry, their result type and the pieces of a solver run.

A solver is a function ``(model, batches, groups, curvature, config, loss_fn) -> {group id: GroupScores}``
registered in :data:`SOLVERS`; :mod:`energysplit.splitting.exact` and :mod:`energysplit.splitting.fast`
register themselves here, and :func:`energysplit.splitting.scores.splitting_scores` (the public entry,
which imports both) looks them up. This module imports neither, so the solvers and the entry point
import one way only.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .._registry import Registry
from ..errors import ConfigError
from ..graph.inventory import Group
from .chains import Step, Tracker, resolve
from .curvature import CurvatureConfig, derivatives, is_identity

SOLVERS = Registry("splitting solver")
LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class GroupScores:
    """Per channel: ``eigvals[k]`` = lambda_min(S_k); ``eigvecs[k]`` its unit eigenvector, shaped like
    ``producer.weight[k]``; ``stderr[k]`` the standard error of ``eigvals[k]`` over the scoring batches
    (the fast solver's; None where a solver gives none)."""

    eigvals: Tensor
    eigvecs: Tensor
    stderr: Tensor | None = None

    def __len__(self) -> int:
        return len(self.eigvals)


@contextmanager
def evaluating(model: nn.Module):
    """Eval mode for the duration (BatchNorm as a fixed affine map); each module's own mode restored."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes.items():
            m.training = mode


def iterate_batches(batches: Iterable | Dataset, batch_size: int, shuffle: bool = False, seed: int = 0):
    """Yield ``(x, y)`` batches from a Dataset (seeded loader) or a re-iterable of batches."""
    if isinstance(batches, Dataset) and not isinstance(batches, (list, tuple)):
        generator = torch.Generator().manual_seed(seed)
        yield from DataLoader(batches, batch_size=batch_size, shuffle=shuffle, generator=generator)
        return
    if iter(batches) is batches:
        raise ConfigError("batches is a one-shot iterator; pass a list of (x, y) batches, a DataLoader "
                          "or a Dataset so that it can be read more than once")
    yield from batches


def num_batches(batches: Iterable | Dataset, batch_size: int) -> int | None:
    """Number of batches per pass, if known without reading the data."""
    try:
        n = len(batches)
    except TypeError:
        return None
    return -(-n // batch_size) if isinstance(batches, Dataset) and not isinstance(batches, (list, tuple)) else n


def derivative_pair(step: Step, a: Tensor, curvature: CurvatureConfig) -> tuple[Tensor, Tensor | None]:
    """act' and act'' at ``a`` (act'' None when identically zero: identity, or ``relu="zero"``)."""
    with torch.no_grad():
        d1, d2 = derivatives(step.act, a.detach(), curvature, step.module)
    if is_identity(step.act) or (curvature.relu == "zero" and not torch.any(d2)):
        d2 = None
    return d1, d2


class ChainTracker(Tracker):
    """A :class:`Tracker` that knows the curvature rule and whether the neuron is linear.

    A chain with no non-identity activation is a linear neuron: a virtual identity activation with
    act'' = ``curvature.linear_value`` sits at the chain's end (reference proxy; 0 gives the true S).
    """

    def __init__(self, group: Group, model: nn.Module, curvature: CurvatureConfig):
        producer, steps = resolve(model, group)
        super().__init__(group, producer, steps)
        self.curvature = curvature
        linear = all(s.kind != "act" or is_identity(s.act) for s in steps)
        self.end_curvature = curvature.linear_value if linear else 0.0

    def per_channel(self, vec: Tensor, like: Tensor) -> Tensor:
        return vec.detach().to(like.dtype).view(self.channel_shape(like))
