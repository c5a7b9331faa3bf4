"""Fast splitting scores: stochastic Rayleigh-quotient descent (Wang et al. 2019, arXiv 1910.03103, sec. 3).

Every splittable producer gets y (exactly 0) and v (current unit directions), both shaped like its
weight; one backward pass gives dL/dy = minibatch estimate of S v for every neuron of every layer
(:mod:`energysplit.splitting.jets`). v follows the Rayleigh gradient 2 (S v - (v^T S v) v) with
``torch.optim.RMSprop`` + momentum (lr: ``CosineAnnealingLR``; eps relative to each layer's scale) and is
renormalised per neuron after each step. v = renormalised mean of the last pass's iterates v_t.
lambda: the reference takes the mean Rayleigh quotient over the last pass (``eigval_estimate="mean"``);
the default ``"cross"`` takes v_bar^T w_bar / |v_bar|^2 with v_bar, w_bar the
last pass's means of v_t and of the products S_b v_t, i.e. the Rayleigh quotient of the averaged
direction, without the upward bias that the noise of each iterate adds to the mean quotient.

Defaults, chosen against the exact solver (benchmarks/bench_splitting.py; minibatch S of 64 images is
3-4x noisier than its mean on a briefly trained MobileNet): lr 0.02 with a cosine decay to 0 over all
passes, momentum 0.9, alpha 0.9, batch 64, 4 passes. For one pass over many images, add a warm-up of a
quarter pass (``warmup=0.25``; 0 by default, the reference run): the first batches at constant lr, not
averaged, so that the averaged pass starts from directions that already point roughly the right way.
On 4,096 Fashion-MNIST images (64 batches) one pass plus the
warm-up gives a rank correlation with exact lambda_min of ~0.92 on MobileNetV1 x0.25 and MobileNetV2
x0.5 (0.90 / 0.89 without it) and 82-87% of the same LP selection. What did not help (same test):
averaging only the later part of the pass or weighting later iterates more (0.51-0.88: the average
over the whole pass is what removes the minibatch noise), smaller batches, a Rayleigh-Ritz step over
block averages, or a second pass over the same images (0.84-0.85: directions improve but the estimate
becomes correlated with the re-used batches' noise). With few images, more passes still help: on 1,024
images (measured before the warm-up existed) 0.69-0.72 after 1 pass, 0.96-0.98 after 4.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import CosineAnnealingLR

from ..errors import ConfigError
from ..graph.inventory import Group
from .chains import ChainTaps
from .curvature import CurvatureConfig
from .jets import AdjointJet, TermJet
from .solver import SOLVERS, GroupScores, iterate_batches, num_batches

JETS = {"adjoint": AdjointJet, "term": TermJet}
EPS = 1e-30  # RMSprop's eps floor (a chain without curvature has S v = 0); the rest is relative, see _relative_eps


@dataclass(frozen=True)
class FastConfig:
    """Rayleigh-descent settings (module doc for the defaults; reference: RMSprop lr 1e-3, momentum 0.9,
    alpha 0.9, batch 64, 2-10 passes). ``batch_size`` applies when a Dataset is given; ``seed`` fixes the
    initial directions and the shuffling; ``schedule``: ``cosine`` (to 0 over all passes) or ``constant``;
    ``engine``: how S v is computed (:mod:`energysplit.splitting.jets`, ``adjoint`` or the literal ``term``);
    ``warmup``: extra steps before the passes, as a fraction of a pass (first batches, constant lr, not
    averaged; ignored when the number of batches is unknown), 0 for the plain reference run."""

    passes: int = 4
    progress: bool = False  # a tqdm bar over the scoring steps
    lr: float = 0.02
    momentum: float = 0.9
    alpha: float = 0.9
    batch_size: int = 64
    seed: int = 0
    schedule: str = "cosine"
    engine: str = "adjoint"
    eigval_estimate: str = "cross"
    warmup: float = 0.0  # extra steps first, as a fraction of a pass: constant lr, not averaged

    def __post_init__(self):
        if self.engine not in JETS:
            raise ConfigError(f"FastConfig.engine must be one of {', '.join(JETS)}, got {self.engine!r}")
        if self.eigval_estimate not in ("cross", "mean"):
            raise ConfigError(f"FastConfig.eigval_estimate must be 'cross' or 'mean', got {self.eigval_estimate!r}")
        if self.schedule not in ("cosine", "constant"):
            raise ConfigError(f"FastConfig.schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if not 0 <= self.warmup <= 1:
            raise ConfigError(f"FastConfig.warmup must be in [0, 1] (a fraction of a pass), got {self.warmup}")
        if self.passes < 1:
            raise ConfigError(f"FastConfig.passes must be >= 1, got {self.passes}")
        if self.lr <= 0 or self.batch_size < 1:
            raise ConfigError("FastConfig.lr and batch_size must be positive")
        if not (0 <= self.momentum < 1 and 0 < self.alpha < 1):
            raise ConfigError("FastConfig needs 0 <= momentum < 1 and 0 < alpha < 1")


def unit_rows(t: Tensor) -> Tensor:
    flat = t.reshape(len(t), -1)
    return (flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-30)).view_as(t)


@SOLVERS.register("fast")
def fast_scores(model, batches, groups: list[Group], curvature: CurvatureConfig, config, loss_fn) -> dict:
    config = config or FastConfig()
    if not isinstance(config, FastConfig):
        raise TypeError(f"the fast solver takes a FastConfig, got {type(config).__name__}")
    trackers = _trackers(model, groups, curvature, config)
    with ChainTaps(model, trackers) as taps:
        ys = [t.y for t in trackers]
        return rayleigh_descent(trackers, lambda x, target: _products(taps, ys, x, target, loss_fn), batches, config)


def rayleigh_descent(trackers: list, products, batches, config: FastConfig) -> dict:
    """The Rayleigh descent (module doc) of every tracker's unit directions ``v`` (rows: neurons; the RMSprop
    parameters), given ``products(x, target)``: the minibatch S v of each tracker (None: S = 0). Returns
    ``{tracker.group.id: GroupScores}``; under torch.distributed each rank computes its shard of every batch."""
    optimizer = torch.optim.RMSprop([{"params": [t.v]} for t in trackers], lr=config.lr, alpha=config.alpha,
                                    eps=EPS, momentum=config.momentum)  # one group each: its own eps
    sums = {t.group.id: _zero_sums(t.v) for t in trackers}
    steps_per_pass = num_batches(batches, config.batch_size)
    warm = math.ceil(config.warmup * steps_per_pass) if steps_per_pass else 0  # unknown length: no warm-up
    schedule = _cosine(optimizer, config, steps_per_pass) if steps_per_pass else None
    reducer = _data_parallel()  # None in a single process
    bar = _progress(config, config.passes * steps_per_pass + warm if steps_per_pass else None)
    vs = [t.v for t in trackers]

    def step(x, target, last):
        grads = products(x, target) if reducer is None else reducer.products(products, vs, x, target)
        for tracker, sv in zip(trackers, grads):
            _rayleigh_grad(tracker, sv, sums[tracker.group.id] if last else None)
        _relative_eps(optimizer, config.alpha)
        optimizer.step()
        with torch.no_grad():
            for tracker in trackers:
                tracker.v.copy_(unit_rows(tracker.v))
        if bar is not None:
            bar.update(1)

    # warm-up: the first batches of the first pass at constant lr, so that the averaged pass starts
    # from directions that already point roughly the right way (not averaged: they are the worst)
    for i, (x, target) in enumerate(iterate_batches(batches, config.batch_size, shuffle=True,
                                                    seed=config.seed) if warm else ()):
        if i >= warm:
            break
        step(x, target, False)
    for epoch in range(config.passes):
        for i, (x, target) in enumerate(iterate_batches(batches, config.batch_size, shuffle=True,
                                                        seed=config.seed + epoch)):
            step(x, target, epoch == config.passes - 1)
            if schedule is not None:
                schedule.step()
        if steps_per_pass is None:  # now known: the cosine takes over where the first pass ends
            steps_per_pass = i + 1
            schedule = _cosine(optimizer, config, steps_per_pass, done=steps_per_pass)
    if bar is not None:
        bar.close()
    out = {t.group.id: _estimate(sums[t.group.id], config, t.v.dtype) for t in trackers}
    return out if reducer is None else reducer.agree(out)


def _relative_eps(optimizer: torch.optim.RMSprop, alpha: float) -> None:
    """Set each group's eps to 1e-12 of its own RMS scale (+ EPS) for the coming step: the S v of different
    layers lie orders of magnitude apart, and entries 1e-12 below their group's largest are rounding noise
    that a fixed eps would blow up to full-size steps. The scale is the max of the square_avg that RMSprop
    is about to compute, alpha square_avg + (1 - alpha) grad^2 (one host sync for all groups)."""
    peaks = []
    for group in optimizer.param_groups:
        (v,) = group["params"]
        previous = optimizer.state[v].get("square_avg")
        coming = v.grad.square().mul_(1 - alpha)
        peaks.append((coming if previous is None else coming.add_(previous, alpha=alpha)).max())
    for group, peak in zip(optimizer.param_groups, torch.stack(peaks).sqrt().tolist()):
        group["eps"] = 1e-12 * peak + EPS


def _trackers(model, groups: list[Group], curvature: CurvatureConfig, config: FastConfig) -> list[TermJet]:
    """One jet per group, with y = 0 and seeded random unit directions v (the RMSprop parameters)."""
    gen = torch.Generator().manual_seed(config.seed)
    trackers = []
    for g in groups:
        tracker = JETS[config.engine](g, model, curvature, None, None)
        w = tracker.producer.weight
        tracker.v = unit_rows(torch.randn(w.shape, generator=gen, dtype=torch.float64)).to(w.device, w.dtype)
        tracker.y = torch.zeros_like(w, requires_grad=True)
        trackers.append(tracker)
    return trackers


def _cosine(optimizer, config: FastConfig, steps_per_pass: int, done: int = 0) -> CosineAnnealingLR | None:
    """The lr's cosine decay to 0 over all passes, ``done`` steps in; None for a constant lr."""
    if config.schedule == "constant":
        return None
    schedule = CosineAnnealingLR(optimizer, T_max=config.passes * steps_per_pass)
    with warnings.catch_warnings():  # fast-forward over steps already taken (at constant lr)
        warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler.step\(\)` before", UserWarning)
        for _ in range(done):
            schedule.step()
    return schedule


def _progress(config: FastConfig, total: int | None):
    """A tqdm bar over the scoring steps on the main process, if asked for; else None."""
    from ..training.distributed import is_main
    from ..training.loop import progress_bar

    return progress_bar(range(total or 0), total, "splitting scores", True) if config.progress and is_main() else None


def _data_parallel():
    """Under torch.distributed: each rank scores its shard of every batch and the S v estimates are
    all-reduced (:class:`energysplit.training.distributed.ShardedProducts`)."""
    from ..training.distributed import scoring_reducer

    return scoring_reducer()


def _products(taps: ChainTaps, ys: list[Tensor], x: Tensor, target: Tensor, loss_fn) -> list[Tensor | None]:
    """One forward and one backward pass: dL/dy = S_batch v per group (None: no curvature, S = 0)."""
    device = taps.trackers[0].producer.weight.device if taps.trackers else x.device
    loss = loss_fn(taps.forward(x.to(device)), target.to(device))
    return list(torch.autograd.grad(loss, ys, allow_unused=True))


def splitting_products(model: nn.Module, batch: tuple[Tensor, Tensor], groups: list[Group],
                       directions: dict[str, Tensor], curvature: CurvatureConfig = CurvatureConfig(),
                       engine: str = "adjoint", loss_fn=None) -> dict[str, Tensor]:
    """S v on one batch for each group's ``directions`` (shaped like the weight), from one backward pass.
    The model must already be in eval mode."""
    trackers = []
    for g in groups:
        t = JETS[engine](g, model, curvature, None, None)
        t.v = directions[g.id].to(t.producer.weight)
        t.y = torch.zeros_like(t.producer.weight, requires_grad=True)
        trackers.append(t)
    with ChainTaps(model, trackers) as taps:
        grads = _products(taps, [t.y for t in trackers], *batch, loss_fn or nn.functional.cross_entropy)
    return {t.group.id: torch.zeros_like(t.v) if sv is None else sv for t, sv in zip(trackers, grads)}


def _zero_sums(v: Tensor) -> dict:
    """Running sums over the averaged pass: v^T S v per neuron and its square, v, S v (float64), step count."""
    zeros = torch.zeros_like(v, dtype=torch.float64)
    return {"r": zeros.flatten(1).sum(1), "r2": zeros.flatten(1).sum(1), "v": zeros, "sv": zeros.clone(), "n": 0}


def _rayleigh_grad(tracker: TermJet, sv: Tensor | None, sums: dict | None) -> None:
    """Set ``v.grad`` to the Rayleigh gradient 2 (S v - (v^T S v) v) of every neuron of the group; on the
    averaged pass, add v, v^T S v and S v to ``sums``."""
    v = tracker.v
    if sv is None:  # the chain has no curvature at all under this rule: S = 0
        sv = torch.zeros_like(v)
    r = (v * sv).reshape(len(v), -1).sum(1)
    v.grad = 2 * (sv - r.view((-1,) + (1,) * (v.dim() - 1)) * v)
    if sums is not None:
        for key, value in (("r", r), ("r2", r.double().square()), ("v", v), ("sv", sv)):
            sums[key] += value.double()
        sums["n"] += 1


def _estimate(sums: dict, config: FastConfig, dtype: torch.dtype) -> GroupScores:
    """lambda and v from the averaged pass (module doc: ``cross`` or ``mean`` estimate), and lambda's standard
    error: the spread of the pass's minibatch quotients v_t^T S_b v_t over sqrt(batches)."""
    n = max(sums["n"], 1)
    stderr = ((sums["r2"] / n - (sums["r"] / n).square()).clamp_min(0) / n).sqrt()
    if config.eigval_estimate == "cross":
        vbar, svbar = sums["v"] / n, sums["sv"] / n
        lam = (vbar * svbar).flatten(1).sum(1) / vbar.flatten(1).pow(2).sum(1).clamp_min(1e-300)
    else:
        lam = sums["r"] / n
    return GroupScores(lam.to(dtype), unit_rows(sums["v"]).to(dtype), stderr.to(dtype))
