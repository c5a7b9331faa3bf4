"""Splitting scores: the smallest eigenpair of each neuron's splitting matrix (Liu et al. 2019, eq. 3).

A neuron's output path is o = f(h(theta)): h is the producer's output channel, f the group's chain
(BatchNorm as a fixed affine map, activations, depthwise convs). Its splitting matrix is

    S = E_x[ sum over positions of  g . D^2_theta o ],    g = dL/do at the chain's end,

the Hessian at w = 0 of the loss when the neuron is replaced by copies theta +- w with halved outgoing
weights. For a [bn, act] chain this is E[sum_p g_p act''(a_p) c^2 x_p x_p^T] (METHOD.md section 1).
Splitting along the unit eigenvector v of lambda_min changes the loss by (eps^2/2) lambda_min + O(eps^4).

Two solvers share one entry point, :func:`splitting_scores` (their registry and shared pieces:
:mod:`energysplit.splitting.solver`):

- ``exact`` (:mod:`energysplit.splitting.exact`): accumulate S from unfolded patches, ``torch.linalg.eigh``.
- ``fast`` (:mod:`energysplit.splitting.fast`): Rayleigh-quotient descent with the auxiliary-variable trick
  of Wang et al. 2019 (arXiv 1910.03103, section 3): one backward pass gives S v for every neuron.

The model is scored in eval mode (BatchNorm running statistics) and left exactly as it was.
"""
from __future__ import annotations

from typing import Iterable

from torch import nn
from torch.utils.data import Dataset

from . import exact, fast  # noqa: F401  (each registers its solver in SOLVERS)
from .._device import on_compute_device
from ..errors import ConfigError
from ..graph.inventory import Inventory
from .curvature import CurvatureConfig
from .joint import is_joint, joint_scores
from .solver import SOLVERS, GroupScores, LossFn, evaluating


def splitting_scores(model: nn.Module, batches: Iterable | Dataset, inventory: Inventory, method: str = "fast",
                     curvature: CurvatureConfig = CurvatureConfig(), *, config=None, loss_fn: LossFn | None = None,
                     groups: Iterable[str] | None = None) -> dict[str, GroupScores]:
    """Smallest splitting eigenpair of every neuron of every splittable group.

    batches: a re-iterable of ``(x, y)`` batches (list, DataLoader) or a Dataset (batched with the
    solver config's ``batch_size``; the fast solver reshuffles it each pass). method: a name in
    ``SOLVERS`` (``fast`` or ``exact``); config: that solver's config (:class:`energysplit.splitting.fast.FastConfig`
    or :class:`energysplit.splitting.exact.ExactConfig`), defaults if None. loss_fn: mean-reduced loss of
    ``(model(x), y)``, cross-entropy by default. groups: restrict to these group ids. Runs on the compute
    device (:mod:`energysplit._device`); the scores come back on the CPU. Residual streams (groups with
    several producers) are scored jointly by :mod:`energysplit.splitting.joint`, their eigenvectors flat.
    """
    solver = SOLVERS.get(method)
    chosen = [g for g in inventory.splittable() if groups is None or g.id in set(groups)]
    if groups is not None:
        missing = set(groups) - {g.id for g in chosen}
        if missing:
            raise ConfigError(f"not splittable or unknown groups: {', '.join(sorted(missing))}")
    loss_fn = loss_fn or nn.functional.cross_entropy
    if not chosen:
        return {}
    single, streams = [g for g in chosen if not is_joint(g)], [g for g in chosen if is_joint(g)]
    scores = {}
    with on_compute_device(model), evaluating(model):
        if single:
            scores.update(solver(model, batches, single, curvature, config, loss_fn))
        if streams:
            scores.update(joint_scores(model, batches, inventory, streams, method, curvature, config, loss_fn))
    return {gid: GroupScores(s.eigvals.cpu(), s.eigvecs.cpu(), None if s.stderr is None else s.stderr.cpu())
            for gid, s in scores.items()}
