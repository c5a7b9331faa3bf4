"""Splitting scores: the smallest eigenpair of each neuron's splitting matrix (Liu et al. 2019, eq. 3).

A neuron's output path is o = f(h(theta)): h is the producer's output channel, f the group's chain
(BatchNorm as a fixed affine map, activations, depthwise convs). Its splitting matrix is

    S = E_x[ sum over positions of  g . D^2_theta o ],    g = dL/do at the chain's end,

the Hessian at w = 0 of the loss when the neuron is replaced by copies theta +- w with halved outgoing
weights. For a [bn, act] chain this is E[sum_p g_p act''(a_p) c^2 x_p x_p^T] (METHOD.md section 1).
Splitting along the unit eigenvector v of lambda_min changes the loss by (eps^2/2) lambda_min + O(eps^4).

Two solvers share one entry point, :func:`splitting_scores`:

- ``exact`` (:mod:`energysplit.splitting.exact`): accumulate S from unfolded patches, ``torch.linalg.eigh``.
- ``fast`` (:mod:`energysplit.splitting.fast`): Rayleigh-quotient descent with the auxiliary-variable trick
  of Wang et al. 2019 (arXiv 1910.03103, section 3): one backward pass gives S v for every neuron.

The model is scored in eval mode (BatchNorm running statistics) and left exactly as it was.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .curvature import CurvatureConfig, derivatives, is_identity
from .._device import on_compute_device
from ..graph.inventory import Group, Inventory
from .._registry import Registry
from .chains import Step, Tracker, resolve

SOLVERS = Registry("splitting solver")
LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class GroupScores:
    """Per channel: ``eigvals[k]`` = lambda_min(S_k); ``eigvecs[k]`` its unit eigenvector, shaped like
    ``producer.weight[k]``."""

    eigvals: Tensor
    eigvecs: Tensor

    def __len__(self) -> int:
        return len(self.eigvals)


def splitting_scores(model: nn.Module, batches: Iterable | Dataset, inventory: Inventory, method: str = "fast",
                     curvature: CurvatureConfig = CurvatureConfig(), *, config=None, loss_fn: LossFn | None = None,
                     groups: Iterable[str] | None = None) -> dict[str, GroupScores]:
    """Smallest splitting eigenpair of every neuron of every splittable group.

    batches: a re-iterable of ``(x, y)`` batches (list, DataLoader) or a Dataset (batched with the
    solver config's ``batch_size``; the fast solver reshuffles it each pass). method: a name in
    ``SOLVERS`` (``fast`` or ``exact``); config: that solver's config (:class:`energysplit.splitting.fast.FastConfig`
    or :class:`energysplit.splitting.exact.ExactConfig`), defaults if None. loss_fn: mean-reduced loss of
    ``(model(x), y)``, cross-entropy by default. groups: restrict to these group ids. Runs on the compute
    device (:mod:`energysplit._device`); the scores come back on the CPU.
    """
    solver = SOLVERS.get(method)
    chosen = [g for g in inventory.splittable() if groups is None or g.id in set(groups)]
    if groups is not None:
        missing = set(groups) - {g.id for g in chosen}
        if missing:
            raise KeyError(f"not splittable or unknown groups: {', '.join(sorted(missing))}")
    loss_fn = loss_fn or nn.functional.cross_entropy
    if not chosen:
        return {}
    with on_compute_device(model), evaluating(model):
        scores = solver(model, batches, chosen, curvature, config, loss_fn)
    return {gid: GroupScores(s.eigvals.cpu(), s.eigvecs.cpu()) for gid, s in scores.items()}


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
        raise ValueError("batches is a one-shot iterator; pass a list of (x, y) batches, a DataLoader "
                         "or a Dataset so that it can be read more than once")
    yield from batches


def num_batches(batches: Iterable | Dataset, batch_size: int) -> int | None:
    """Number of batches per pass, if known without reading the data."""
    try:
        n = len(batches)
    except TypeError:
        return None
    return -(-n // batch_size) if isinstance(batches, Dataset) and not isinstance(batches, (list, tuple)) else n


def model_device(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype


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


from . import exact, fast  # noqa: E402,F401  (register the two solvers)
