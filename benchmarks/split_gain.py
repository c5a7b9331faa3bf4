"""Does a growth step's split lower the loss as its splitting indices predict? (issue 16: what a split buys)

    python benchmarks/split_gain.py            # -> benchmarks/results/split-gain/
    python benchmarks/split_gain.py --quick    # smoke check -> runs/split-gain-quick/

For each network (the grow protocol's seeds at 10% of `mobile`: MobileNetV1 x0.137 with its ReLU and with
SiLU, MobileNetV2 x0.028 with its ReLU6), train it from scratch for 2 epochs on all of Fashion-MNIST, then
take one growth step (the default energy-aware selection, +19% of the network's `mobile` energy) at several
eps, with no training after it. For each eps the table gives the loss change the step predicts
(1/2 sum eps^2 lambda over the split neurons, lambda from the 1,024 images that scored the step) and the
change it makes: on those same images (in-sample; BatchNorm in eval mode, as the scores assume) and on the
5,000 validation images, before and after re-estimating the BatchNorm statistics on 50 training batches
(what the training after a step does first). Nothing is chosen from this benchmark. Resumable: finished
rows of results.csv are kept.
"""
import argparse
import copy
import csv
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

REPO = Path(__file__).resolve().parent.parent
NETWORKS = {  # name: (zoo model, width multiplier, activation or None for the zoo's)
    "MobileNetV1 x0.137, ReLU": ("mobilenet_v1", 0.137, None),
    "MobileNetV1 x0.137, SiLU": ("mobilenet_v1", 0.137, "silu"),
    "MobileNetV2 x0.028, ReLU6": ("mobilenet_v2", 0.028, None),
}
EPS = (0.3, 0.1, 0.03, 0.01)
FIELDS = ["network", "eps", "neurons", "predicted", "in_sample", "val", "val_bn", "val_acc", "val_bn_acc",
          "seed_val_loss", "seed_val_acc"]


def split_gain(model, data, eps: float, growth: float = 1.19, seed: int = 0) -> dict:
    """One growth step on a copy of ``model`` at ``eps``, no training after it: predicted and realised loss
    changes (module docstring); ``model`` is left as it is."""
    from energysplit.cost.estimator import resolve_estimator
    from energysplit.splitting.growth import GrowConfig, grow, scoring_batches
    from energysplit.training.bn_stats import recalibrate_on_
    from energysplit.training.loop import TrainConfig, evaluate

    zero = TrainConfig(epochs=0.0, progress=False)
    config = GrowConfig(eps=eps, max_steps=1, finetune=zero, final_finetune=zero, seed=seed)
    batches = scoring_batches(data, config.score_samples, 64, config.seed * 1000 + 1)  # what step 1 scores on
    scored = TensorDataset(*(torch.cat(t) for t in zip(*batches)))
    estimator = resolve_estimator("mobile")
    grown = copy.deepcopy(model)
    before_in, before = evaluate(model, scored).loss, evaluate(model, data.val)
    result = grow(grown, data, estimator, growth * estimator.predict(model, data.input_shape).total, config,
                  log=lambda s: None)
    after = evaluate(result.model, data.val)
    in_sample = evaluate(result.model, scored).loss - before_in
    recalibrate_on_(result.model, data.train, 50)
    after_bn = evaluate(result.model, data.val)
    step = result.steps[0]
    return {"eps": eps, "neurons": step.neurons_split, "predicted": step.predicted_loss_change, "in_sample": in_sample,
            "val": after.loss - before.loss, "val_bn": after_bn.loss - before.loss, "val_acc": after.accuracy,
            "val_bn_acc": after_bn.accuracy, "seed_val_loss": before.loss, "seed_val_acc": before.accuracy}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--quick", action="store_true", help="one network, 2,000 images, 0.5 epochs, two eps")
    args = p.parse_args()
    from energysplit.training.bn_stats import recalibrate_on_
    from energysplit.training.data import load_fashion_mnist
    from energysplit.training.loop import TrainConfig, seed_everything, train
    from energysplit.zoo import create_model

    torch.set_num_threads(1)
    out = args.out or REPO / ("runs/split-gain-quick" if args.quick else "benchmarks/results/split-gain")
    out.mkdir(parents=True, exist_ok=True)
    networks = dict(list(NETWORKS.items())[:1]) if args.quick else NETWORKS
    eps_list, epochs = ((0.1, 0.01), 0.5) if args.quick else (EPS, 2.0)
    data = load_fashion_mnist()
    data = data.subset(train=2000, val=1000) if args.quick else data
    path = out / "results.csv"
    rows = list(csv.DictReader(path.open())) if path.exists() else []
    done = {(r["network"], float(r["eps"])) for r in rows}
    for name, (arch, width, act) in networks.items():
        todo = [e for e in eps_list if (name, e) not in done]
        if not todo:
            continue
        seed_everything(0)
        model = create_model(arch, width=width, act=act)
        train(model, data.train, TrainConfig(epochs=epochs, lr=0.05, batch_size=128, progress=False))
        recalibrate_on_(model, data.train, 50)  # as the benchmark does after every training run
        for eps in todo:
            row = {"network": name, **split_gain(model, data, eps)}
            rows.append({k: row[k] for k in FIELDS})
            print(row, flush=True)
            with path.open("w", newline="") as f:  # rewritten whole after every row: a crash keeps the rest
                writer = csv.DictWriter(f, FIELDS)
                writer.writeheader()
                writer.writerows(rows)
    lines = ["| network | eps | neurons split | predicted | in-sample (1,024 scoring images) | validation | "
             "validation, BN re-estimated | validation accuracy (seed -> BN re-estimated) |", "|---" * 8 + "|"]
    for r in rows:
        lines.append(f"| {r['network']} | {float(r['eps']):g} | {r['neurons']} | {float(r['predicted']):+.2e} | "
                     f"{float(r['in_sample']):+.2e} | {float(r['val']):+.2e} | {float(r['val_bn']):+.2e} | "
                     f"{float(r['seed_val_acc']):.4f} -> {float(r['val_bn_acc']):.4f} |")
    table = "\n".join(lines)
    print(table)
    (out / "table.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
