"""Variance-aware splitting scores: shrink each lambda_min towards what its layer predicts (issue 17, item 5).

A step's lambdas come from about a thousand images, and two disjoint sets of them select neurons that
overlap by only ~0.8 (benchmarks/selection_stability.py): the neurons near the selection's cut trade
places with the sampling noise. The fast solver gives each lambda a standard error se_i (the spread of
its minibatch Rayleigh quotients, :mod:`energysplit.splitting.fast`); this module replaces every lambda by
its empirical-Bayes posterior mean under a normal prior fitted per group:

    prior_i = a + b c_i^2            (least squares over the group; c_i = gamma_i / sqrt(var_i + eps) of
                                      the BatchNorm on the neuron's chain, which scales its splitting matrix by c_i^2)
    tau^2   = Var_i(lambda_i - prior_i) - mean_i(se_i^2)   (the spread the noise does not explain, >= 0)
    lambda_i <- prior_i + tau^2 / (tau^2 + w se_i^2) (lambda_i - prior_i)

With w = 1 this is the posterior mean (the estimate with the least expected squared error); w > 1 trusts
the data less. Noisy lambdas move towards their layer's trend, well-measured ones stay. Groups without
standard errors (the exact solver, residual streams) or with fewer than four neurons are left as scored.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..graph.inventory import Inventory
from .chains import bn_scale
from .solver import GroupScores

MIN_NEURONS = 4  # below this a group's prior (two coefficients) and its spread are not estimable


def shrunk_scores(model: nn.Module, inventory: Inventory, scores: dict[str, GroupScores],
                  weight: float = 1.0) -> dict[str, GroupScores]:
    """``scores`` with every lambda replaced by its shrunk estimate (module doc); eigenvectors and standard
    errors unchanged. ``weight``: w, how much less than its standard error says the data are trusted."""
    if weight <= 0:
        raise ValueError(f"shrinkage weight must be > 0, got {weight}")
    out = {}
    for gid, s in scores.items():
        if s.stderr is None or len(s.eigvals) < MIN_NEURONS:
            out[gid] = s
            continue
        lam = shrink(s.eigvals.double(), s.stderr.double(), chain_scale_squared(model, inventory, gid), weight)
        out[gid] = GroupScores(lam.to(s.eigvals.dtype), s.eigvecs, s.stderr)
    return out


def shrink(lam: Tensor, stderr: Tensor, feature: Tensor, weight: float = 1.0) -> Tensor:
    """Posterior means of ``lam`` (standard errors ``stderr``) under the prior a + b ``feature`` (module doc);
    the prior is the group mean when ``feature`` is constant."""
    columns = [torch.ones_like(lam)] + ([feature.to(lam)] if float(feature.std()) > 0 else [])
    design = torch.stack(columns, 1)
    prior = design @ torch.linalg.lstsq(design, lam.unsqueeze(1)).solution.squeeze(1)
    tau2 = ((lam - prior).var() - stderr.square().mean()).clamp_min(0.0)
    return prior + tau2 / (tau2 + weight * stderr.square()).clamp_min(1e-300) * (lam - prior)


def chain_scale_squared(model: nn.Module, inventory: Inventory, gid: str) -> Tensor:
    """c^2 per neuron: the squared product of the BatchNorm scales on the group's chain (:func:`.chains.bn_scale`),
    the factor they put on its splitting matrix; ones for a chain without BatchNorm."""
    scale = torch.ones(inventory[gid].width, dtype=torch.float64)
    for op in inventory[gid].chain:
        if op.kind == "bn":
            scale = scale * bn_scale(model.get_submodule(op.target)).detach().double().cpu()
    return scale.square()
