"""The training and evaluation loop every method shares (fine-tuning budgets are compared like for like).

Data-parallel ready: batches come from :func:`make_loader`, which takes a sampler, and the model is
used only through ``forward``/``parameters`` so a ``DistributedDataParallel`` wrapper drops in.
"""
from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts, LinearLR
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler

from .._device import channels_last_on_cpu, model_device, on_compute_device
from ..errors import ConfigError


@dataclass(frozen=True)
class TrainConfig:
    """SGD fine-tuning recipe (reference: SGD lr 0.1, momentum 0.9, wd 1e-4, scaled down for CPUs)."""

    epochs: float = 1.0
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 128
    schedule: str = "cosine"  # "cosine", "step" (x0.1 at 50% and 75%) or "constant"
    # the part of one longer schedule this run covers: a recipe cut into phases (seed fine-tune, growth
    # steps, final fine-tune) follows a single schedule instead of restarting it in every phase
    span: tuple = (0.0, 1.0)
    warmup_steps: int = 0
    label_smoothing: float = 0.0
    seed: int = 0
    progress: bool = True
    channels_last: bool = True  # on the CPU, convolutions in channels-last format (1.5-2x faster, see _device)

    def __post_init__(self):
        if self.epochs < 0:
            raise ConfigError(f"epochs must be >= 0, got {self.epochs}")
        if self.lr <= 0 or self.batch_size <= 0:
            raise ConfigError("lr and batch_size must be positive")
        if self.schedule not in ("cosine", "step", "constant"):
            raise ConfigError(f"unknown schedule {self.schedule!r}; use cosine, step or constant")
        object.__setattr__(self, "span", tuple(float(v) for v in self.span))
        if len(self.span) != 2 or not 0.0 <= self.span[0] <= self.span[1] <= 1.0:
            raise ConfigError(f"span must be (start, end) with 0 <= start <= end <= 1, got {self.span}")


@dataclass
class TrainResult:
    epochs: float
    steps: int
    seconds: float
    train_loss: float
    val_accuracy: float | None = None
    val_loss: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class EvalResult:
    accuracy: float
    loss: float
    samples: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0,
                sampler: Sampler | None = None) -> DataLoader:
    """A single-process loader; pass a ``DistributedSampler`` as ``sampler`` for data-parallel runs."""
    if sampler is None:
        sampler = (RandomSampler(dataset, generator=torch.Generator().manual_seed(seed)) if shuffle
                   else SequentialSampler(dataset))
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=0)


def lr_schedule(optimizer: torch.optim.Optimizer, config: TrainConfig, total: int) -> Callable[[int], None]:
    """``set_lr(step)``: put the learning rate of step ``step`` of ``total`` into ``optimizer``.

    The run covers ``config.span`` of one longer recipe: step k lies at p = span[0] + (span[1] - span[0])
    k / total of it. The first ``warmup_steps`` steps ramp up linearly to the lr (``LinearLR``: (k + 1) /
    warmup of it); then ``cosine`` is one cycle of ``CosineAnnealingWarmRestarts`` with T_0 = 1 (the cycle is
    the whole recipe) stepped at the fractional epoch p, which its documentation allows; ``step`` takes
    0.1 of the lr from p = 0.5 and 0.01 from p = 0.75; ``constant`` keeps it.
    """
    warmup, (start, end) = config.warmup_steps, config.span
    cosine = CosineAnnealingWarmRestarts(optimizer, T_0=1) if config.schedule == "cosine" else None
    ramp = LinearLR(optimizer, 1 / warmup, 1.0, warmup - 1) if warmup else None

    def set_lr(step: int) -> None:
        if step < warmup:
            if step:
                ramp.step()
            return
        progress = start + (end - start) * min(1.0, step / max(1, total))
        if cosine is not None and progress < 1.0:
            cosine.step(progress)
            return
        if cosine is not None:  # the recipe's end (a cycle at 1.0 would restart it): the cosine is at 0
            factor = 0.0
        elif config.schedule == "step":
            factor = 0.01 if progress >= 0.75 else 0.1 if progress >= 0.5 else 1.0
        else:
            factor = 1.0
        for group in optimizer.param_groups:
            group["lr"] = config.lr * factor

    return set_lr


def progress_bar(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


def train(model: nn.Module, data: Dataset, config: TrainConfig = TrainConfig(), val: Dataset | None = None,
          sampler: Sampler | None = None, desc: str = "train",
          penalty: Callable[[nn.Module], torch.Tensor] | None = None, momentum: dict | None = None) -> TrainResult:
    """Train ``model`` in place for ``config.epochs`` (fractions allowed) and return a record.

    ``penalty(model)``, if given, is added to the loss (e.g. network slimming's L1 on BN scales). Runs on
    the compute device (:mod:`energysplit._device`); the model comes back on its own device.
    ``momentum``: SGD momentum buffers by parameter, read at the start and replaced at the end, so that
    runs that cover consecutive spans of one schedule continue one optimizer instead of restarting its
    momentum in each (a phase of 16 steps would spend most of them rebuilding it). Surgery replaces the
    parameters it edits, so only the untouched ones continue; ``copy.deepcopy((model, momentum))`` copies
    both together.
    """
    with on_compute_device(model), channels_last_on_cpu(model, config.channels_last):
        return _train(model, data, config, val, sampler, desc, penalty, momentum)


def _train(model, data, config, val, sampler, desc, penalty, momentum=None) -> TrainResult:
    seed_everything(config.seed)
    start = time.perf_counter()
    device = model_device(model)
    from .distributed import broadcast_module_, data_parallel, is_main

    net, sampler, batch_size = data_parallel(model, data, config.batch_size, config.seed, sampler)  # DDP if launched
    loader = make_loader(data, batch_size, shuffle=True, seed=config.seed, sampler=sampler)
    total = int(round(config.epochs * len(loader)))
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, nesterov=config.momentum > 0)
    if momentum:
        for p in model.parameters():
            if p in momentum and momentum[p].shape == p.shape:
                optimizer.state[p]["momentum_buffer"] = momentum[p].to(p.device).clone()
    set_lr = lr_schedule(optimizer, config, total)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    model.train()
    step, running, epoch = 0, 0.0, 0
    bar = progress_bar(range(total), total, desc, config.progress and is_main())
    batches = iter(())
    for step in bar:
        try:
            x, y = next(batches)
        except StopIteration:
            if hasattr(loader.sampler, "set_epoch"):
                loader.sampler.set_epoch(epoch)
            epoch += 1
            batches = iter(loader)
            x, y = next(batches)
        set_lr(step)
        loss = criterion(net(x.to(device)), y.to(device))
        if penalty is not None:
            loss = loss + penalty(model)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running = loss.item() if step == 0 else 0.98 * running + 0.02 * loss.item()
        if config.progress and is_main() and step % 20 == 0:
            bar.set_postfix(loss=f"{running:.3f}")
    if net is not model:  # DDP syncs gradients, not BatchNorm statistics: take rank 0's
        broadcast_module_(model)
    if momentum is not None:
        momentum.clear()
        momentum.update({p: st["momentum_buffer"] for p, st in optimizer.state.items() if "momentum_buffer" in st})
    result = TrainResult(config.epochs, total, 0.0, running)
    if val is not None:
        ev = evaluate(model, val, progress=False)
        result.val_accuracy, result.val_loss = ev.accuracy, ev.loss
    result.seconds = time.perf_counter() - start
    return result


def evaluate(model: nn.Module, data: Dataset, batch_size: int = 512, progress: bool = False) -> EvalResult:
    """Accuracy and mean cross-entropy in eval mode, in a fixed order (deterministic), on the compute device."""
    with on_compute_device(model), channels_last_on_cpu(model):
        return _evaluate(model, data, batch_size, progress)


@torch.no_grad()
def _evaluate(model, data, batch_size, progress) -> EvalResult:
    start = time.perf_counter()
    device = model_device(model)
    was_training = model.training
    model.eval()
    from .distributed import shard_dataset, sum_over_ranks

    loader = make_loader(shard_dataset(data), batch_size, shuffle=False)  # this rank's share if launched
    correct, loss_sum, count = 0, 0.0, 0
    for x, y in progress_bar(loader, len(loader), "eval", progress):
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        count += len(y)
    model.train(was_training)
    correct, loss_sum, count = sum_over_ranks(correct, loss_sum, count)
    count = max(count, 1)
    return EvalResult(correct / count, loss_sum / count, count, time.perf_counter() - start)
