"""BatchNorm running statistics re-estimated on training batches before a model is evaluated.

Training keeps an exponential moving average of each BatchNorm's batch statistics (momentum 0.1). After a
short run from scratch the weights move faster than that average follows, so the running statistics
describe an older network and eval mode can sit near chance while train mode is fine (MobileNetV2 x0.5
after 1 epoch on 4,000 Fashion-MNIST images: 0.748 in train mode, 0.094 in eval mode). The fix is the one
of SWA (Izmailov et al. 2018, ``torch.optim.swa_utils.update_bn``) and of Rethinking BatchNorm (Wu and
Johnson 2021, "precise BN"): reset the statistics and average them over a fixed number of training
batches with ``momentum=None`` (each BatchNorm's cumulative average of its per-batch mean and unbiased
variance), model in train mode, no gradients. Only training images are used; the validation and test
splits are never read here.
"""
from __future__ import annotations

import itertools
from typing import Callable, Iterable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler

from .._device import model_device, on_compute_device

DEFAULT_BATCHES = 50  # x 128 images = 6,400 (a 4,000-image subset: its 31 full batches; full Fashion-MNIST: 12%)


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The model's BatchNorm layers that keep running statistics."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_bn_(model: nn.Module, loader: Iterable, batches: int = DEFAULT_BATCHES, seed: int = 0) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them on the first ``batches`` batches of
    ``loader`` (``(x, y)`` pairs or bare tensors; training data only), in place; returns the batches used.

    The model runs in train mode without gradients on the compute device; every module's mode, every
    BatchNorm's momentum and the global random state (dropout draws, seeded with ``seed`` inside) are as
    before afterwards. A model without BatchNorm, or ``batches == 0``, is left untouched.
    """
    norms = batchnorms(model)
    if not norms or batches <= 0:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in norms}
    used = 0
    with on_compute_device(model):
        device = model_device(model)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            try:
                for m in norms:
                    m.reset_running_stats()
                    m.momentum = None  # cumulative average: batch k enters with weight 1 / k
                model.train()
                for batch in itertools.islice(loader, batches):
                    x = batch[0] if isinstance(batch, (list, tuple)) else batch
                    model(x.to(device))
                    used += 1
            finally:
                for m, momentum in momenta.items():
                    m.momentum = momentum
                for m, training in modes.items():
                    m.training = training
    return used


def recalibrate_on_(model: nn.Module, train: Dataset, batches: int = DEFAULT_BATCHES, batch_size: int = 128,
                    seed: int = 0) -> int:
    """:func:`recalibrate_bn_` on ``batches`` shuffled full batches of the training set ``train`` (one pass at
    most: fewer when it holds fewer); the same ``seed`` draws the same images, so it is repeatable and the
    same on every rank."""
    if not batchnorms(model) or batches <= 0:
        return 0
    sampler = RandomSampler(train, generator=torch.Generator().manual_seed(seed))
    loader = DataLoader(train, batch_size=batch_size, sampler=sampler, drop_last=len(train) >= batch_size)
    return recalibrate_bn_(model, loader, batches, seed)


def recalibrating(then: Callable | None, train: Dataset, val: Dataset | None, batches: int = DEFAULT_BATCHES,
                  batch_size: int = 128, seed: int = 0) -> Callable:
    """An ``on_train(desc, model, result)`` hook: after every training run, the model's BatchNorm statistics
    are re-estimated on ``train`` and the result's validation accuracy and loss are read again with them
    (:func:`~.loop.train` measured them with the stale ones), then ``then`` (if any) sees the run."""
    from .loop import evaluate

    def on_train(desc: str, model: nn.Module, result) -> None:
        if recalibrate_on_(model, train, batches, batch_size, seed) and val is not None \
                and getattr(result, "val_accuracy", None) is not None:
            ev = evaluate(model, val)
            result.val_accuracy, result.val_loss = ev.accuracy, ev.loss
        if then is not None:
            then(desc, model, result)

    return on_train
