"""Channel importance criteria of the pruning baselines, per neuron group (higher = keep).

- ``l1``: L1 norm of each filter, summed over the group's producers (Li et al., ICLR 2017, eq. 1).
- ``slimming``: |gamma| of the BatchNorms right after the producers (Liu et al., ICCV 2017), after
  training with an L1 penalty on those gammas (:func:`slimming_penalty`).
- ``taylor``: first-order Taylor estimate of the loss change when a channel is removed,
  (sum over the channel's parameters of g * w)^2, averaged over minibatches (Molchanov et al., CVPR 2019,
  eq. 3-4, with the BN scale and shift as the channel's gate parameters when present).
- ``random``: seeded uniform scores.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from .._device import on_compute_device
from ..errors import ConfigError
from ..graph.inventory import Group, Inventory


def _producer_weight(model: nn.Module, name: str) -> torch.Tensor:
    return model.get_submodule(name).weight


def direct_batchnorms(model: nn.Module, group: Group) -> list[nn.Module]:
    """The BatchNorms among the group's followers (per-channel scales of this group)."""
    bns = []
    for name in group.followers:
        module = model.get_submodule(name)
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
            bns.append(module)
    return bns


def l1_importance(model: nn.Module, inventory: Inventory) -> dict[str, torch.Tensor]:
    scores = {}
    for group in inventory.prunable():
        total = torch.zeros(group.width)
        for name in group.producers:
            weight = _producer_weight(model, name).detach()
            total += weight.abs().reshape(weight.shape[0], -1).sum(1).cpu()
        scores[group.id] = total
    return scores


def slimming_importance(model: nn.Module, inventory: Inventory) -> dict[str, torch.Tensor]:
    """|gamma| summed over the group's BatchNorms; groups without BN fall back to L1 of the filters."""
    fallback = None
    scores = {}
    for group in inventory.prunable():
        bns = direct_batchnorms(model, group)
        if bns:
            scores[group.id] = sum(bn.weight.detach().abs().cpu() for bn in bns)
        else:
            fallback = fallback or l1_importance(model, inventory)
            scores[group.id] = fallback[group.id]
    return scores


def slimming_penalty(model: nn.Module, inventory: Inventory, strength: float = 1e-4):
    """L1 sparsity on the prunable groups' BN scales, to add to the loss (Liu et al. 2017, eq. 1)."""
    gammas = [bn.weight for g in inventory.prunable() for bn in direct_batchnorms(model, g)]

    def penalty(_: nn.Module) -> torch.Tensor:
        return strength * sum(g.abs().sum() for g in gammas)

    return penalty


def taylor_importance(model: nn.Module, inventory: Inventory,
                      batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    with on_compute_device(model):
        return _taylor_importance(model, inventory, batches)


def _taylor_importance(model, inventory, batches) -> dict[str, torch.Tensor]:
    groups = inventory.prunable()
    device = next(model.parameters()).device
    scores = {g.id: torch.zeros(g.width) for g in groups}
    was_training = model.training
    model.eval()
    count = 0
    for x, y in batches:
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x.to(device)), y.to(device)).backward()
        for group in groups:
            contrib = torch.zeros(group.width, device=device)
            params = [_producer_weight(model, n) for n in group.producers]
            for bn in direct_batchnorms(model, group):
                params += [bn.weight, bn.bias]
            for p in params:
                if p.grad is not None:
                    contrib += (p.grad * p).detach().reshape(p.shape[0], -1).sum(1)
            scores[group.id] += contrib.square().cpu()
        count += 1
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return {k: v / max(count, 1) for k, v in scores.items()}


def random_importance(model: nn.Module, inventory: Inventory, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {g.id: torch.rand(g.width, generator=gen) for g in inventory.prunable()}


def normalise_per_group(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Divide each group's scores by their mean so that groups compete on a common scale
    (the "mean" group normalisation used by Torch-Pruning's global ranking)."""
    return {k: v / v.mean().clamp_min(1e-12) for k, v in scores.items()}


def channel_importance(criterion: str, model: nn.Module, inventory: Inventory, batches=None,
                       seed: int = 0) -> dict[str, torch.Tensor]:
    """Per-channel importance of every prunable group by a named criterion (``CRITERIA``; ``taylor``
    needs ``batches`` of training data, ``random`` uses ``seed``)."""
    if criterion == "taylor":
        if batches is None:
            raise ConfigError("Taylor importance needs batches of training data")
        return taylor_importance(model, inventory, batches)
    if criterion == "random":
        return random_importance(model, inventory, seed)
    if criterion not in CRITERIA:
        raise ConfigError(f"unknown importance criterion {criterion!r}; choose from {', '.join(CRITERIA)}")
    return CRITERIA[criterion](model, inventory)


CRITERIA = {"l1": l1_importance, "slimming": slimming_importance, "taylor": taylor_importance,
            "random": random_importance}
