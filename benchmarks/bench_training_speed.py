"""Training speed on the CPU in the default memory format and in channels-last, side by side.

For the zoo networks the benchmarks train (1 x 28 x 28 inputs, Fashion-MNIST's shape, random data, 10
classes): MobileNetV2 x0.5, MobileNetV2 at the width multiplier of 25% of its ``mobile`` energy (0.167 of
x1.0, the ``uniform-scratch`` network of the grow benchmark), MobileNetV1 x0.5 and ResNet-20 x0.5. Each
repeat times :func:`energysplit.training.loop.train` for ``--steps`` SGD steps of 128 images with
``channels_last`` off, then on (interleaved, so both see the same machine load), and an evaluation pass
over the same images in each format. Prints the median seconds, the ratio, and full Fashion-MNIST epochs
(55,000 training images) per hour; writes ``benchmarks/results/training_speed_<cpu>-torch<version>-t<threads>.json``
with the command, host and commit.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_training_speed.py
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch.utils.data import TensorDataset

from run_record import write_record  # benchmarks/run_record.py

FASHION_TRAIN = 55_000  # training images of a full Fashion-MNIST epoch (5,000 are held out for validation)
NETWORKS = (("mobilenet_v2", 0.5), ("mobilenet_v2", 0.167), ("mobilenet_v1", 0.5), ("resnet20", 0.5))


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(name: str, width: float, steps: int, repeats: int) -> dict:
    from energysplit import create_model
    from energysplit._device import channels_last_on_cpu
    from energysplit.training.loop import TrainConfig, _evaluate, train

    torch.manual_seed(0)
    start = create_model(name, width=width)
    data = TensorDataset(torch.randn(steps * 128, 1, 28, 28), torch.randint(0, 10, (steps * 128,)))
    seconds = {False: [], True: []}
    eval_seconds = {False: [], True: []}
    for _ in range(repeats + 1):  # the first round warms up and is dropped
        for fast in (False, True):
            model = copy.deepcopy(start)
            seconds[fast].append(timed(lambda: train(model, data, TrainConfig(
                epochs=1, channels_last=fast, progress=False))))
            with channels_last_on_cpu(model, fast):
                eval_seconds[fast].append(timed(lambda: _evaluate(model, data, 512, False)))
    med = {k: statistics.median(v[1:]) for k, v in seconds.items()}
    med_eval = {k: statistics.median(v[1:]) for k, v in eval_seconds.items()}
    per_epoch = FASHION_TRAIN / (steps * 128)
    row = {"model": f"{name} x{width}", "steps": steps, "repeats": repeats,
           "train_s_default": round(med[False], 3), "train_s_channels_last": round(med[True], 3),
           "train_speedup": round(med[False] / med[True], 2),
           "eval_s_default": round(med_eval[False], 3), "eval_s_channels_last": round(med_eval[True], 3),
           "eval_speedup": round(med_eval[False] / med_eval[True], 2),
           "fashion_epochs_per_hour_default": round(3600 / (med[False] * per_epoch), 2),
           "fashion_epochs_per_hour_channels_last": round(3600 / (med[True] * per_epoch), 2)}
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="SGD steps of 128 images per timing (default 20)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per format (default 3)")
    args = parser.parse_args()
    rows = [measure(name, width, args.steps, args.repeats) for name, width in NETWORKS]
    write_record("training_speed", rows, batch=128)


if __name__ == "__main__":
    main()
