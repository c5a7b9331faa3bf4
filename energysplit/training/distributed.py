"""Data-parallel runs on PyTorch's own engine (``torch.distributed`` + ``DistributedDataParallel``).

Launch any entry point with ``torchrun --nproc_per_node N -m energysplit compress ...``; torchrun sets
``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT`` and :func:`init_distributed` joins
that group. Every helper here is a no-op in a single process, so single-process behaviour is unchanged.

What is shared, and how (docs/distributed.md):

- training: :func:`data_parallel` wraps the model in DDP and shards each epoch with a
  ``DistributedSampler``; the global batch stays ``batch_size`` (``batch_size // world`` per rank);
  BatchNorm buffers are re-broadcast from rank 0 after training (:func:`broadcast_module_`);
- splitting scores: :class:`ShardedProducts` splits every global batch across ranks and all-reduces the
  minibatch S v estimates (weighted by shard size, so the sum is the global-batch mean); the final
  eigenpairs are broadcast from rank 0 so every rank selects the same Plan;
- estimators that measure (``deterministic = False``) run on rank 0 and broadcast
  (:func:`rank_zero_estimator`); files are written by rank 0 only (:func:`is_main`, :func:`barrier`).
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn


def backend_for() -> str:
    """``cpu:gloo,cuda:nccl`` when CUDA and NCCL are present (CUDA tensors go through NCCL, CPU tensors and
    Python objects through gloo), else ``gloo``."""
    if torch.cuda.is_available() and dist.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def launched() -> bool:
    """True when a launcher (torchrun) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(backend: str | None = None, timeout_s: float = 1800.0) -> bool:
    """Join the process group described by torchrun's environment variables; False (nothing done) when
    this is a single process. With CUDA, each process takes the GPU ``LOCAL_RANK``."""
    if is_distributed():
        return True
    if not launched() or not dist.is_available():
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank() % torch.cuda.device_count())
    dist.init_process_group(backend or backend_for(), timeout=timedelta(seconds=timeout_s))
    return True


def destroy_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Rank 0 (or a single process): the one process that writes files and logs."""
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def main_only(log):
    """``log`` on rank 0, silence elsewhere."""
    return log if is_main() else (lambda *args, **kwargs: None)


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s picklable ``obj`` on every rank (keep tensors on the CPU)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum_(tensors: list[Tensor]) -> list[Tensor]:
    """Sum each tensor over ranks (one collective per dtype); returns new tensors, same shapes."""
    if not is_distributed() or not tensors:
        return list(tensors)
    out: list[Tensor | None] = [None] * len(tensors)
    for dtype in {t.dtype for t in tensors}:
        idx = [i for i, t in enumerate(tensors) if t.dtype == dtype]
        flat = torch.cat([tensors[i].reshape(-1) for i in idx])
        dist.all_reduce(flat)
        for i, part in zip(idx, flat.split([tensors[i].numel() for i in idx])):
            out[i] = part.view_as(tensors[i])
    return out


def sum_over_ranks(*values: float) -> tuple[float, ...]:
    """Python numbers summed over ranks (in float64; each keeps its type)."""
    if not is_distributed():
        return values
    (t,) = all_reduce_sum_([torch.tensor(values, dtype=torch.float64)])
    return tuple(type(v)(s) for v, s in zip(values, t.tolist()))


@torch.no_grad()
def broadcast_module_(model: nn.Module, src: int = 0) -> nn.Module:
    """Make every rank's parameters and buffers rank ``src``'s (in place)."""
    if is_distributed():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=src)
    return model


@torch.no_grad()
def fingerprint(model: nn.Module) -> Tensor:
    """Shapes and values of all parameters and buffers as three float64 numbers (equal models, equal
    fingerprints; a different shape or any changed value changes them almost surely)."""
    acc = torch.zeros(3, dtype=torch.float64)
    for i, t in enumerate(list(model.parameters()) + list(model.buffers()), start=1):
        x = t.detach().double().reshape(-1).cpu()
        pos = torch.arange(1, len(x) + 1, dtype=torch.float64)
        acc += torch.stack([x.sum(), (x * torch.sin(pos * 0.7 + i)).sum(), torch.tensor(float(len(x) * i))])
    return acc


def check_in_sync(model: nn.Module, where: str = "") -> None:
    """Raise if the ranks' models differ (a diverged data-parallel run must not go on silently)."""
    if not is_distributed():
        return
    mine = fingerprint(model)
    every = [torch.zeros_like(mine) for _ in range(world_size())]
    dist.all_gather(every, mine)
    if any(not torch.equal(every[0], f) for f in every[1:]):
        from ..errors import EnergySplitError

        raise EnergySplitError(f"the ranks' models differ{' after ' + where if where else ''}; "
                               "report this as a bug (data-parallel runs must stay in lockstep)")


def shard_range(n: int) -> range:
    """This rank's contiguous share of ``n`` items (sizes differ by at most one; may be empty)."""
    w, r = world_size(), rank()
    return range(r * n // w, (r + 1) * n // w)


def shard_dataset(data):
    """This rank's strided share of ``data`` for evaluation (every item exactly once over all ranks)."""
    if not is_distributed():
        return data
    from torch.utils.data import Subset

    return Subset(data, range(rank(), len(data), world_size()))


def data_parallel(model: nn.Module, data, batch_size: int, seed: int, sampler=None):
    """``(net, sampler, per_rank_batch)`` for training: DDP over ``model`` and a seeded
    ``DistributedSampler``, each rank taking ``batch_size // world`` of the global batch. In a single
    process: ``(model, sampler, batch_size)`` unchanged."""
    if not is_distributed():
        return model, sampler, batch_size
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DistributedSampler

    if sampler is None:
        sampler = DistributedSampler(data, shuffle=True, seed=seed)
    dev = next(model.parameters()).device
    net = DistributedDataParallel(model, device_ids=[dev] if dev.type == "cuda" else None)
    return net, sampler, max(1, batch_size // world_size())


class ShardedProducts:
    """Data-parallel minibatch S v (Wang et al. 2019, sec. 3: dL/dy = S v on a batch).

    Rank r computes the mean-loss gradient on its contiguous shard of the global batch, weights it by
    ``n_r / n``, and the ranks all-reduce (sum): the result is the global batch's S v on every rank,
    so the Rayleigh iterates, their quotients (lambda) and the eigenvectors evolve identically.
    """

    def products(self, products, ys: list[Tensor], x: Tensor, target: Tensor) -> list[Tensor]:
        part = shard_range(len(x))
        if len(part):
            grads = products(x[part.start:part.stop], target[part.start:part.stop])
            weight = len(part) / len(x)
            grads = [torch.zeros_like(y) if g is None else g * weight for g, y in zip(grads, ys)]
        else:  # more ranks than samples in this batch: contribute nothing
            grads = [torch.zeros_like(y) for y in ys]
        return all_reduce_sum_([g.detach() for g in grads])

    def agree(self, scores: dict) -> dict:
        """Rank 0's eigenpairs on every rank (bit-identical, so every rank selects the same Plan)."""
        for gid in sorted(scores):
            for t in (scores[gid].eigvals, scores[gid].eigvecs, scores[gid].stderr):
                if t is not None:
                    dist.broadcast(t.data, src=0)
        return scores


def scoring_reducer() -> ShardedProducts | None:
    """The data-parallel S v reducer when running distributed, else None (single-process scoring)."""
    return ShardedProducts() if is_distributed() else None


class RankZeroEstimator:
    """An estimator whose measurements run on rank 0 only and are broadcast (costs agree across ranks)."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _on_rank_zero(self, method, *args):
        result = error = None
        if is_main():
            try:
                result = (getattr(self.inner, method) if isinstance(method, str) else method)(*args)
            except Exception as exc:  # every rank raises it, none waits forever
                error = exc
        result, error = broadcast_object((result, error))
        if error is not None:
            raise error
        return result

    def estimate(self, model, input_shape):
        return self._on_rank_zero("estimate", model, input_shape)

    def predict(self, model, input_shape):
        return self._on_rank_zero("predict", model, input_shape)

    def marginal_costs(self, model, inventory, input_shape, multiple: int = 1):
        from ..cost.estimator import marginal_costs_of

        return self._on_rank_zero(lambda *a: marginal_costs_of(self.inner, *a), model, inventory, input_shape,
                                  multiple)

    def __repr__(self) -> str:
        return f"RankZeroEstimator({self.inner!r})"


def rank_zero_estimator(estimator):
    """``estimator`` itself when single-process or deterministic, else a :class:`RankZeroEstimator`."""
    if not is_distributed() or getattr(estimator, "deterministic", True) or isinstance(estimator, RankZeroEstimator):
        return estimator
    return RankZeroEstimator(estimator)
