"""What scoring residual streams jointly costs, next to a training step (issue 17, item 4).

For torchvision's ResNet-18 (3 x 32 x 32) and the zoo's MobileNetV2 x0.5 (1 x 28 x 28), batch 64, random
data: the median time of one joint product (every residual stream's S u for all its channels: one
forward with tangents and two backwards per round of streams, :class:`energysplit.splitting.joint.AllSplit`),
of one fast product of the single-producer groups (:func:`energysplit.splitting.fast.splitting_products`),
and of one SGD training step, side by side in one process. Prints the ratios and writes
``benchmarks/results/joint_<host>-torch<version>-t<threads>.json`` with the command and settings.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_joint.py
"""
from __future__ import annotations

import statistics
import time

import torch
import torchvision as tv
from torch import nn

from run_record import write_record  # benchmarks/run_record.py


def median_seconds(fn, repeats: int = 5) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(name: str, model: nn.Module, shape: tuple) -> dict:
    from energysplit import build_inventory
    from energysplit.splitting.curvature import CurvatureConfig
    from energysplit.splitting.fast import splitting_products
    from energysplit.splitting.joint import AllSplit, stream_rounds, is_joint

    torch.manual_seed(0)
    model.eval()
    inv = build_inventory(model, shape)
    x, y = torch.randn(64, *shape), torch.randint(0, 10, (64,))
    loss = nn.functional.cross_entropy
    streams = [g for g in inv.splittable() if is_joint(g)]
    splits = [AllSplit(model, inv, r, CurvatureConfig(), loss) for r in stream_rounds(streams)]
    directions = [{g.id: torch.randn(g.width, s.dims[g.id]) for g in s.groups} for s in splits]
    single = [g for g in inv.splittable() if not is_joint(g)]
    single_dirs = {g.id: torch.randn(model.get_submodule(g.producers[0]).weight.shape) for g in single}
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def train_step():
        model.train()
        opt.zero_grad()
        loss(model(x), y).backward()
        opt.step()
        model.eval()

    joint = median_seconds(lambda: [s.products(x, y, u) for s, u in zip(splits, directions)])
    fast = median_seconds(lambda: splitting_products(model, (x, y), single, single_dirs))
    step = median_seconds(train_step)
    row = {"model": name, "streams": len(streams), "rounds": len(splits), "single_groups": len(single),
           "joint_s": round(joint, 4), "fast_single_s": round(fast, 4), "train_step_s": round(step, 4),
           "joint_per_train_step": round(joint / step, 2), "fast_per_train_step": round(fast / step, 2)}
    print(row)
    return row


def main() -> None:
    from energysplit import create_model

    rows = [measure("resnet18 (torchvision)", tv.models.resnet18(weights=None, num_classes=10), (3, 32, 32)),
            measure("mobilenet_v2 x0.5 (zoo)", create_model("mobilenet_v2", width=0.5), (1, 28, 28))]
    write_record("joint", rows, batch=64)


if __name__ == "__main__":
    main()
